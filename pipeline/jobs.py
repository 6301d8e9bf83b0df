"""Submit and manage novarch-batch jobs on a Ray cluster through the Ray Jobs API.

The job's driver runs on the cluster as ``python -m pipeline.cli submit ...`` with the project's
packages (and the shipped model) carried by the runtime_env. Token authentication stays on: the
token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token and is never printed.
"""
from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.spec import JobSpec

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60  # how long a freshly started head may take to accept jobs


class ClusterError(RuntimeError):
    """The cluster could not be reached or refused the request; the message names the fix."""


def _enable_token_auth() -> None:
    """Ray reads RAY_AUTH_MODE when it is imported: turn token mode on when a token is at hand."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str):
    _enable_token_auth()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ClusterError(f"--cluster {address}: authentication failed; set RAY_AUTH_TOKEN (or copy the head's ~/.ray/auth_token here)") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"--cluster {address}: cannot reach the Ray Jobs API ({type(e).__name__}); check the address, e.g. http://HEAD:8265") from None


def project_modules() -> list[str]:
    """The two import packages, uploaded with the job so the cluster runs this very code and model."""
    import pipeline
    import workers

    return [str(Path(pipeline.__file__).parent), str(Path(workers.__file__).parent)]


def absolute_out(out: str) -> str:
    """A local --out as an absolute path (the job's driver runs in another working folder)."""
    if urlparse(out).scheme in ("", "file"):
        return str(Path(urlparse(out).path if out.startswith("file://") else out).expanduser().absolute())
    return out


def submit_flags(spec: JobSpec) -> list[str]:
    """The flags that rebuild this exact spec on the cluster; --job-id pins the job identity."""
    s, r = spec.sampling, spec.run
    flags = ["--count", spec.count, "--out", absolute_out(spec.output.out), "--class", s.class_name, "--sampler", s.sampler, "--steps", s.steps,
             "--guidance", s.guidance, "--eta", s.eta, "--seed", s.seed, "--shard-size", spec.output.shard_size,
             "--batch-size", r.batch_size, "--job-id", spec.job_id, "--device", r.device, "--json"]
    if r.workers:
        flags += ["--workers", r.workers]
    if spec.output.embed_images:
        flags += ["--embed-images"]
    return [str(f) for f in flags]


@dataclass(frozen=True)
class Submission:
    submission_id: str
    job_id: str
    output_url: str


def submit(address: str, spec: JobSpec, output_url: str) -> Submission:
    jobs = client(address)
    submission_id = f"{spec.job_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    entrypoint = "python -m pipeline.cli submit " + shlex.join(submit_flags(spec))
    env_vars = {k: os.environ[k] for k in ("NOVARCH_S3_MAX_ATTEMPTS",) if k in os.environ}  # never credentials
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            jobs.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"py_modules": project_modules(), "env_vars": env_vars},
                metadata={"novarch_job_id": spec.job_id, "output": output_url},
                entrypoint_num_cpus=0,  # the driver needs no CPU reservation: leave every core to the actors
            )
            return Submission(submission_id, spec.job_id, output_url)
        except RuntimeError as e:
            # A head that has just started answers before its job agent is up ("No available agent").
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise ClusterError(f"--cluster {address}: the cluster refused the job ({str(e).splitlines()[0][:200]})") from None
            time.sleep(1.0)


def follow(address: str, submission_id: str, echo, poll_s: float = 1.0) -> str:
    """Print the job's log as it grows; return its terminal status."""
    jobs = client(address)
    shown = 0
    while True:
        status = str(jobs.get_job_status(submission_id).value)
        logs = jobs.get_job_logs(submission_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
