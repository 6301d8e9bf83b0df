"""GPU actors on Ray's real autoscaler (fake multi-node provider): a cluster whose GPU nodes start
from zero, grow the job's pool as they join, and are replaced when one is lost.

The fake nodes register `GPU: 1`; NOVARCH_FORCE_DEVICE=cpu makes the actors compute on the CPU.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from novarch_batch.pipeline.verify import verify
from tests.fake_cluster import fake_cluster
from tests.procs import wait_for
from tests.ray_head import job_counters

CLI = str(Path(sys.executable).with_name("novarch-batch"))
# The clusters' token, passed as KubeRay passes one: without it `ray start --head` in token mode needs a
# ~/.ray/auth_token, which only an earlier local Ray leaves (a fresh machine has none).
TOKEN = secrets.token_hex(32)


def cluster_env(force_cpu: bool = False) -> dict[str, str]:
    """The head's (and so its nodes') environment, or with `force_cpu` a driver's that forwards
    NOVARCH_FORCE_DEVICE to the actors it starts."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NOVARCH_FORCE_DEVICE")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)  # the head, its nodes and the drivers share it
    if force_cpu:
        env["NOVARCH_FORCE_DEVICE"] = "cpu"
    return env


@pytest.fixture(scope="module")
def gpu_cluster():
    """GPU worker nodes {CPU: 1, GPU: 1}, from 0 to 3."""
    with fake_cluster({"CPU": 1, "GPU": 1}, max_workers=3, env=cluster_env()) as cluster:
        yield cluster


def submit(cluster, out: Path, *flags: str, env: dict | None = None, wait: bool = True):
    cmd = [CLI, "submit", "--ray-address", cluster.gcs_address, "--out", str(out), "--json", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cluster_env(force_cpu=True))
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=400)
    return proc.returncode, stdout, stderr


def summary(stdout: str) -> dict:
    """--json: stdout is the summary alone, even when Ray reports a node's death (it goes to stderr)."""
    return json.loads(stdout)


def ids(job: Path) -> list[int]:
    return sorted(ds.dataset(str(job / "shards"), format="parquet").to_table(columns=["id"]).column("id").to_pylist())


def test_gpus_2_from_zero_uses_two_new_nodes(gpu_cluster, tmp_path):
    assert gpu_cluster.worker_node_ids() == []  # no GPU node before the job
    code, stdout, stderr = submit(gpu_cluster, tmp_path, "--count", "96", "--steps", "8", "--shard-size", "8", "--batch-size", "8",
                                  "--gpus", "2")
    assert code == 0, stderr
    report = summary(stdout)
    assert report["complete"] and report["images_sampled"] == 96
    assert report["actors"] == "2 GPU actor(s), one GPU each"
    assert "note: GPU actors with --format files" in stderr  # the folder's default: per-image files
    nodes = {name.split(":")[1] for name in report["shards_by_actor"]}
    assert len(nodes) == 2 and all(n > 0 for n in report["shards_by_actor"].values())  # both nodes sampled shards
    assert len(report["actor_ready_seconds"]) == 2
    print(f"scale-up from zero: actors ready at {report['actor_ready_seconds']} s, job {report['seconds']} s")
    assert verify(str(tmp_path / report["job_id"]), full=True).ok


def test_a_lost_node_costs_no_attempt_and_the_pool_regrows(gpu_cluster, tmp_path):
    proc = submit(gpu_cluster, tmp_path, "--count", "720", "--steps", "8", "--shard-size", "8", "--batch-size", "8",
                  "--gpus", "2", "--job-id", "node-loss", wait=False)
    shards = tmp_path / "node-loss" / "shards"
    wait_for(lambda: shards.exists() and len(list(shards.glob("*.parquet"))) >= 4, 180, "four committed shards")
    victim = gpu_cluster.worker_node_ids()[0]
    for pid in gpu_cluster.node_pids(victim):
        os.kill(pid, signal.SIGKILL)  # the node's raylet and its actors: their shards in flight are lost
    killed_at = time.monotonic()
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr
    report = summary(stdout)
    assert report["preemptions"] >= 1 and report["retries"] == 0  # lost with its node: no shard attempt used
    assert len(report["actor_ready_seconds"]) >= 3  # a replacement actor joined on a new node
    assert len({name.split(":")[1] for name in report["shards_by_actor"]}) >= 3
    print(f"node loss: job finished {time.monotonic() - killed_at:.1f} s after the kill; "
          f"actors ready at {report['actor_ready_seconds']} s; recovery {report['recovery_seconds']} s")
    assert ids(tmp_path / "node-loss") == list(range(720))  # none lost, none twice
    assert verify(str(tmp_path / "node-loss"), full=True).ok
    # What the cluster's Prometheus sees: the preemption counted, no shard retry (a zero is never sent).
    expected = {"ray_novarch_images_total": 720.0, "ray_novarch_shards_committed_total": 90.0,
                "ray_novarch_preemptions_total": float(report["preemptions"])}
    wait_for(lambda: job_counters(gpu_cluster.metrics_port, "node-loss") == expected, 30, f"the head's metrics to read {expected}")


def test_actors_that_cannot_start_fail_the_job_with_their_own_error(gpu_cluster, tmp_path):
    """Without NOVARCH_FORCE_DEVICE the actors really try CUDA on these GPU-less fake nodes."""
    env = cluster_env(force_cpu=False)
    started = time.monotonic()
    code, _, stderr = submit(gpu_cluster, tmp_path, "--count", "16", "--steps", "1", "--gpus", "1", env=env)
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("novarch-batch: error: sampler actors failed to start 3 times; the last said: ")
    assert "CUDA" in last or "cuda" in last, last
    assert time.monotonic() - started < 240


def test_gpus_on_a_cluster_without_a_gpu_node_type_fails_at_once(tmp_path):
    with fake_cluster({"CPU": 1}, max_workers=1, env=cluster_env()) as cpu_cluster:
        started = time.monotonic()
        code, _, stderr = submit(cpu_cluster, tmp_path, "--count", "8", "--steps", "1", "--gpus", "1")
    assert code == 2  # refused like bad input: the cluster can never give it
    assert "--gpus 1, but the cluster has no GPU and no node type of its autoscaler offers one" in stderr
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []  # not even job.json
    assert time.monotonic() - started < 60
