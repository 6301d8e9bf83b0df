"""Submit through the Ray Jobs API to a real Ray head started on loopback, then verify the output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from novarch_batch.pipeline.verify import verify
from tests.procs import wait_for

BIN = Path(sys.executable).parent
CLI = str(BIN / "novarch-batch")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group, with token authentication left on."""
    temp_dir = tempfile.mkdtemp(prefix="nvh", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    dashboard = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # the job's `python` is this environment's
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp_dir}",
           "--include-dashboard=true", "--disable-usage-stats",
           # The test session's own local Ray holds the default agent ports: a head sharing them has no
           # job agent ("No available agent to submit job"), so every port is a free one.
           *[f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                                                     "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
                                                     "object-manager-port")]]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            return True
        except OSError as e:  # 401 without a token still proves the API is up
            return getattr(e, "code", None) in (401, 403)

    try:
        wait_for(answers, 120, "the Ray head's Jobs API", interval=0.5)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("RAY_AUTH_MODE", None)  # the CLI turns token mode on itself when the token is at hand
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_submit_wait_and_verify(ray_head, tmp_path):
    out = tmp_path / "out"
    done = run_cli("submit", "--count", "24", "--steps", "2", "--shard-size", "8", "--out", str(out), "--cluster", ray_head, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the job driver's --json line, followed from its log
    assert summary["complete"] and summary["images_sampled"] == 24
    result = verify(summary["url"], full=True)
    assert result.ok and result.rows == 24, result.problems

    listing = run_cli("jobs", "list", "--cluster", ray_head)
    assert listing.returncode == 0 and "SUCCEEDED" in listing.stdout
    submission = listing.stdout.split()[0]
    status = run_cli("jobs", "status", submission, "--cluster", ray_head)
    assert status.stdout.startswith(f"{submission}: SUCCEEDED")
    logs = run_cli("jobs", "logs", submission, "--cluster", ray_head)
    assert '"complete": true' in logs.stdout


def test_submit_returns_at_once_and_a_resubmit_resumes(ray_head, tmp_path):
    out = tmp_path / "out"
    first = run_cli("submit", "--count", "16", "--steps", "2", "--out", str(out), "--cluster", ray_head, "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["output"] == f"{out}/{info['job_id']}"
    logs = run_cli("jobs", "logs", info["submission_id"], "--follow", "--cluster", ray_head)
    assert logs.returncode == 0, logs.stdout
    again = run_cli("submit", "--count", "16", "--steps", "2", "--out", str(out), "--cluster", ray_head, "--wait")
    assert again.returncode == 0
    assert json.loads(again.stdout.strip().splitlines()[-1])["images_sampled"] == 0


def test_unreachable_cluster_is_one_line(tmp_path):
    done = run_cli("submit", "--count", "4", "--out", str(tmp_path), "--cluster", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("novarch-batch: error: --cluster http://127.0.0.1:")


def test_every_spec_field_reaches_the_head_unchanged(ray_head, tmp_path):
    """The head runs the spec validated on the laptop, whole: each field set to a non-default value
    comes back from the job.json the head's driver wrote."""
    from dataclasses import fields

    from novarch_batch.pipeline.spec import build_spec
    from novarch_batch.workers.spec import JobSpec, OutputConfig, RunConfig, SamplingConfig

    options = dict(class_name="house", sampler="ddim", steps=2, guidance=1.5, eta=0.5, seed=7,
                   out=str(tmp_path / "out"), shard_size=4, embed_images=True, actors=1, batch_size=4, device="cpu")
    untouched = {"ray_address"}  # a job on the cluster joins the head's own Ray
    for config in (SamplingConfig, OutputConfig, RunConfig):
        for f in fields(config):
            assert f.name in options or f.name in untouched, f"set --{f.name} here to prove it reaches the head"
            assert f.name in untouched or options[f.name] != f.default
    laptop = build_spec(count=8, job_id="every-field", **options)
    flags = ["--count", "8", "--job-id", "every-field", "--class", "house", "--sampler", "ddim", "--steps", "2", "--guidance", "1.5",
             "--eta", "0.5", "--seed", "7", "--out", str(tmp_path / "out"), "--shard-size", "4", "--embed-images", "--actors", "1",
             "--batch-size", "4", "--device", "cpu"]
    done = run_cli("submit", *flags, "--cluster", ray_head, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads((tmp_path / "out" / "every-field" / "job.json").read_text())
    assert JobSpec.from_dict(job["spec"]) == laptop
    assert job["spec_hash"] == laptop.spec_hash()
