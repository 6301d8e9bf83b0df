"""Ray start-up and the actors' resources: how many sampler actors, with which GPUs, CPUs and threads.

GPU clusters often autoscale from zero, so GPU actors are not planned from the GPUs present at
start: the job asks for every GPU the cluster has *or its autoscaler can add* (or ``--gpus N``),
the autoscaler is told so up front, and the scheduler takes each actor as it becomes ready.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

import ray

from novarch_batch.pipeline.autoscaler import max_gpus
from novarch_batch.pipeline.interrupts import Terminated, sigterm_received, stop_like_ctrl_c_on_sigterm
from novarch_batch.workers.spec import GPU_ENCODE_PROCESSES, RunConfig, SpecError


class ClusterRefusal(SpecError):
    """The cluster cannot give what the job asks (a GPU where none is or can be added): refused, like
    bad input, before anything is written."""


@dataclass(frozen=True)
class ActorResources:
    """How many sampler actors, and what each one asks Ray for."""

    actors: int
    num_gpus: float
    num_cpus: float
    threads: int  # torch intra-op threads per actor; 0 = torch's default
    device: str
    encode_processes: int = 0  # PNG encoder processes per actor; 0 = encode on the actor's own threads
    gpus: int = 0  # GPUs asked for (actors / actors_per_gpu)
    gpus_now: int = 0  # GPUs in the cluster when the job started
    gpus_addable: int = 0  # GPUs the autoscaler could add on top

    def describe(self) -> str:
        if self.num_gpus:
            share = "one GPU each" if self.num_gpus == 1 else f"{round(1 / self.num_gpus)} per GPU"
            return f"{self.actors} GPU actor(s), {share}"
        return f"{self.actors} CPU actor(s) x {self.threads} thread(s) (no GPU in the cluster)"

    def unplaced(self) -> str:
        """Why actors may wait, and the fix: for the placement-deadline error."""
        request = f"{{GPU: {self.num_gpus:g}, CPU: {self.num_cpus:g}}}" if self.num_gpus else f"{{CPU: {self.num_cpus:g}}}"
        if self.num_gpus:
            return (f"each asks for {request}; the cluster had {self.gpus_now} GPU(s) and its autoscaler could add "
                    f"{self.gpus_addable}: add a GPU node type (ray_cluster.yaml, or the RayCluster's workerGroupSpecs), "
                    f"check the cloud's GPU quota, raise --placement-timeout, or run with --device cpu")
        return f"each asks for {request}; no node has a free CPU: add CPU nodes or lower --actors"


def _init_ray(**kwargs) -> None:
    """ray.init with our SIGTERM handler kept: Ray's own (sys.exit(15)) would replace it, and raised
    where Python ignores exceptions (a logging lock's release) it was swallowed and the job ran on. Ours
    marks the signal first, so a swallowed one still stops the driver once ray.init returns.

    Nor does the driver's core worker install its C++ failure-signal handler (absl's): from its start
    to the end of ray.init it took SIGTERM, printed a crash dump ("*** SIGTERM received ...") and now
    and then aborted the process at exit. The flag is read when ray.init builds the driver's core
    worker, so actors (started by the raylet) keep their crash traces."""
    set_handler = getattr(ray._private.utils, "set_sigterm_handler", None)
    if set_handler is not None:
        ray._private.utils.set_sigterm_handler = lambda handler: None
    constants = ray._private.ray_constants
    had_handler_flag = getattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    if had_handler_flag is not None:
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        ray.init(**kwargs)
    except SystemExit as exit_:  # Ray's handler, where the hook above is gone
        if exit_.code != signal.SIGTERM:
            raise
        raise Terminated() from None
    finally:
        if set_handler is not None:
            ray._private.utils.set_sigterm_handler = set_handler
        if had_handler_flag is not None:
            constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = had_handler_flag
        stop_like_ctrl_c_on_sigterm()
    if sigterm_received():
        raise Terminated()


def connect(address: str | None) -> bool:
    """Join --ray-address (or the cluster of a Jobs API driver), else start a private local Ray.

    ``address="local"`` always starts a new instance for this job: a `ray start` cluster on the
    same machine, or a stale /tmp/ray/ray_current_cluster left by a killed one, is never joined by
    accident (plain ``ray.init()`` reads that file and then refuses ``num_cpus``).
    Returns True when this process started the Ray instance (it then has no autoscaler).
    """
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    address = address or os.environ.get("RAY_ADDRESS")  # set for a driver run by the Jobs API
    if address:
        _init_ray(address=address, **kwargs)
        return False
    # Ray turns token authentication on for a new local instance and says so on every start; for a
    # private instance of one job that notice is noise on the user's terminal (the protection stays).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    _init_ray(address="local", num_cpus=os.cpu_count(), **kwargs)
    return True


def default_cpu_actors(cpus: int) -> int:
    """One single-thread actor per core: a small CNN at 32x32 gains little from intra-op threads, and
    two 1-thread processes sample 16% faster than one 2-thread process on 2 cores (BENCHMARKS.md)."""
    return max(1, cpus)


def request_gpus(gpus: int) -> None:
    """Tell the autoscaler to bring up `gpus` GPUs now (all nodes in parallel, from zero), or to stop
    holding them (0) so idle nodes can go."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * gpus)


def actor_resources(run: RunConfig, local: bool = False) -> ActorResources:
    """`local`: Ray was started by this process, so no autoscaler can add anything."""
    resources = ray.cluster_resources()
    gpus_now, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if run.device != "cpu":
        autoscaler = None if local else max_gpus()
        ceiling = max(gpus_now, autoscaler or 0)
        if run.gpus and not ceiling and (local or autoscaler == 0):
            where = "this machine has no GPU" if local else "the cluster has no GPU and no node type of its autoscaler offers one"
            raise ClusterRefusal(f"--gpus {run.gpus}, but {where}; add a GPU node type (ray_cluster.yaml, or the RayCluster's "
                               f"workerGroupSpecs) or drop --gpus to run on CPUs")
        gpus = run.gpus or ceiling
        if gpus:
            k = run.actors_per_gpu
            encode = run.encode_processes or max(1, GPU_ENCODE_PROCESSES // k)
            return ActorResources(gpus * k, 1 / k, 1 / k, 0, "cuda", encode, gpus=gpus, gpus_now=gpus_now, gpus_addable=ceiling - gpus_now)
        if run.device == "cuda":
            raise ClusterRefusal("--device cuda, but the Ray cluster has no GPU and no autoscaler that can add one; "
                               "use --device auto or cpu, or a cluster with GPU nodes")
    actors = run.actors or default_cpu_actors(cpus)
    threads = max(1, cpus // actors)
    # Fractional CPUs when the user asks for more actors than cores: Ray would otherwise wait forever.
    return ActorResources(actors, 0, min(float(threads), cpus / actors), threads, "cpu", run.encode_processes)
