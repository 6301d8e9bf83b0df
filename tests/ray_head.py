"""A real `ray start --head --block` on loopback for Jobs API tests, in its own process group."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.procs import wait_for

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2, num_gpus: int = 0, port: int | None = None, own_temp_dir: bool = True,
             metrics_port: int | None = None):
    """Yields the Jobs API address. `env` is the head's whole environment (its node role: S3 keys, token);
    `port` the GCS port (127.0.0.1:port is the address drivers join); `metrics_port` where the head serves
    Prometheus metrics (/metrics). Without `own_temp_dir` the head
    uses Ray's default /tmp/ray, as a user's `ray start --head` does, and so writes /tmp/ray/ray_current_cluster."""
    temp_dir = tempfile.mkdtemp(prefix="nvh", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    dashboard = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port or free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", *([f"--temp-dir={temp_dir}"] if own_temp_dir else []),
           "--include-dashboard=true", "--disable-usage-stats",
           # The test session's own local Ray holds the default agent ports: a head sharing them has no
           # job agent ("No available agent to submit job"), so every port is a free one.
           f"--metrics-export-port={metrics_port or free_port()}",
           *[f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
                                                     "object-manager-port")]]
    head = subprocess.Popen(cmd, env={**env, "PATH": f"{BIN}:{env.get('PATH', os.environ['PATH'])}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_counters(metrics_port: int, job_id: str) -> dict[str, float]:
    """A job's counters (pipeline/metrics.py) as Prometheus reads them from a head's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("ray_novarch_") and sample.labels.get("job_id") == job_id}
