"""Submit and manage novarch-batch jobs on a Ray cluster through the Ray Jobs API.

The job's driver runs on the cluster as ``python -m novarch_batch.pipeline.cli run-spec <spec JSON>``
with the project's packages (and the shipped model) carried by the runtime_env. Token authentication stays on: the
token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token and is never printed.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from novarch_batch.pipeline.auth import enable_token_auth
from novarch_batch.storage import local_path
from novarch_batch.storage.base import is_s3_url
from novarch_batch.workers.spec import SHIPPED_MODELS, JobSpec

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60  # how long a freshly started head may take to accept jobs
# Where the store is, how to reach it and how long to retry it travel with the job; credentials never
# do: the cluster's nodes use their own (an instance profile, IRSA, or keys set on the nodes).
TRAVELLING_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "NOVARCH_S3_MAX_ATTEMPTS",
                  "NOVARCH_RETRY_DELAY_S")
PACKAGES = ("pipeline", "workers", "storage")  # what the job's driver and actors import; training stays home


class ClusterError(RuntimeError):
    """The cluster could not be reached or refused the request; the message names the fix."""


@contextlib.contextmanager
def without_env(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def client(address: str):
    enable_token_auth()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with without_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):  # Ray's client would take either over --cluster
            return JobSubmissionClient(address)
    except AuthenticationError:
        raise ClusterError(f"--cluster {address}: authentication failed; set RAY_AUTH_TOKEN (or copy the head's ~/.ray/auth_token here)") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"--cluster {address}: cannot reach the Ray Jobs API ({type(e).__name__}); check the address, e.g. http://HEAD:8265") from None


def ask(address: str, submission_id: str, request, jobs=None):
    """One Jobs API request about a submission, `request(client)` (on `jobs`, or a new client); an unknown
    id or a refusal is a ClusterError."""
    jobs = jobs or client(address)
    try:
        return request(jobs)
    except RuntimeError as e:  # the Jobs API's answer: "Request failed with status code 404: Job X does not exist."
        if "status code 404" in str(e):
            raise ClusterError(f"no submission {submission_id} on {address}; "
                               f"`novarch-batch jobs list --cluster {address}` lists them") from None
        raise ClusterError(f"--cluster {address}: {str(e).splitlines()[0][:200]}") from None


def project_package(staging: Path) -> str:
    """A ``novarch_batch`` folder with the driver's and actors' packages (and the shipped model),
    uploaded with the job so the cluster runs this very code; on the cluster it comes before any
    installed copy on the import path."""
    package = staging / "novarch_batch"
    for name in PACKAGES:
        source = Path(importlib.import_module(f"novarch_batch.{name}").__file__).parent
        shutil.copytree(source, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(package)


def refusal(spec: JobSpec) -> str | None:
    """Why this spec cannot run on a cluster as given, naming the fix; None when it can."""
    if local_path(spec.output.out) is not None:
        return (f"--out {spec.output.out}: a local folder is on this machine, not on the cluster's nodes; "
                f"use --out s3://BUCKET/PREFIX with --cluster")
    if spec.model not in SHIPPED_MODELS and not is_s3_url(spec.model):
        return (f"--model {spec.model}: a local folder does not reach the cluster; upload it "
                f"under a prefix the cluster's nodes may read, e.g. beside --out (aws s3 cp --recursive {spec.model} "
                f"s3://BUCKET/PREFIX/models/NAME) and pass --model s3://BUCKET/PREFIX/models/NAME")
    return None


def entrypoint(spec: JobSpec) -> str:
    """The driver's command on the head: the whole spec as JSON, so no option is lost or re-parsed."""
    return "python -m novarch_batch.pipeline.cli run-spec " + shlex.quote(json.dumps(spec.to_dict(), separators=(",", ":")))


@dataclass(frozen=True)
class Submission:
    submission_id: str
    job_id: str
    output_url: str


def submit(address: str, spec: JobSpec, output_url: str) -> Submission:
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="novarch-job-") as staging:
        return _submit(jobs, address, spec, output_url, project_package(Path(staging)))


def _submit(jobs, address: str, spec: JobSpec, output_url: str, package: str) -> Submission:
    submission_id = f"{spec.job_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    env_vars = {k: os.environ[k] for k in TRAVELLING_ENV if os.environ.get(k)}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            jobs.submit_job(
                entrypoint=entrypoint(spec),
                submission_id=submission_id,
                runtime_env={"py_modules": [package], "env_vars": env_vars},
                metadata={"novarch_job_id": spec.job_id, "output": output_url},
                entrypoint_num_cpus=0,  # the driver needs no CPU reservation: leave every core to the actors
            )
            return Submission(submission_id, spec.job_id, output_url)
        except RuntimeError as e:
            # A head that has just started answers before its job agent is up ("No available agent").
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise ClusterError(f"--cluster {address}: the cluster refused the job ({str(e).splitlines()[0][:200]})") from None
            time.sleep(1.0)


def follow(address: str, submission_id: str, echo) -> str:
    """Stream the job's log as it is written (the Jobs API's log websocket); return its terminal status."""
    jobs = client(address)
    ask(address, submission_id, lambda jobs: jobs.get_job_status(submission_id), jobs)  # an unknown id: one line, not the stream's 404

    async def stream() -> None:
        async for chunk in jobs.tail_job_logs(submission_id):
            echo(chunk.rstrip("\n"))

    asyncio.run(stream())  # ends when the job does
    status = str(jobs.get_job_status(submission_id).value)
    while status not in TERMINAL:  # the stream can close a moment before the status is final
        time.sleep(0.5)
        status = str(jobs.get_job_status(submission_id).value)
    return status
