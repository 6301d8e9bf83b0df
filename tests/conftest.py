"""Shared fixtures: one real local Ray and one real S3 server (SeaweedFS) per test session, that is per
test process: each of the two xdist workers (pyproject.toml's addopts) has its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest_plugins = ["tests.fixtures_s3"]

# Tests share 2 cores between pytest, Ray actors and the S3 server: keep torch to one thread here.
torch.set_num_threads(1)


def pytest_configure(config):
    """A local Ray token (~/.ray/auth_token) from the start, whichever test runs first. Ray writes one on
    its first local start, and from then on `ray start --head` turns token authentication on; on a
    fresh machine the test heads would otherwise differ by test order (with or without a token).
    Made once, by the controlling process before any xdist worker starts: two workers' first Rays
    writing the file at once could leave one of them holding a token the file no longer has."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has made it
        return
    subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"],
                   check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """Local Ray started after the S3 keys are in the environment, so actors inherit them as
    they would inherit a user's AWS_* variables or a node's instance role."""
    import ray

    from novarch_batch.pipeline import cluster

    os.environ.update(s3_server.env())
    # Counters reach /metrics every second instead of every 10 s: tests that read them wait less.
    os.environ["RAY_metrics_report_interval_ms"] = "1000"
    cluster.connect(None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from novarch_batch.workers.model import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def unet(model_dir):
    from novarch_batch.workers.model import load_unet

    return load_unet(model_dir, torch.device("cpu"))
