"""A real `ray start --head --block` on loopback for Jobs API tests, in its own process group."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.procs import kill_ray_cluster, wait_for

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2, num_gpus: int = 0, port: int | None = None,
             metrics_port: int | None = None):
    """Yields the Jobs API address. `env` is the head's whole environment (its node role: S3 keys, token);
    `port` the GCS port (127.0.0.1:port is the address drivers join); `metrics_port` where the head serves
    Prometheus metrics (/metrics). The head keeps its own temp dir, never Ray's shared /tmp/ray, so the
    test session's local Ray and the leftovers of other runs there cannot hold it up."""
    temp_dir = tempfile.mkdtemp(prefix="nvh", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    log = Path(temp_dir) / "ray-start.log"
    dashboard = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port or free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--temp-dir={temp_dir}",
           "--include-dashboard=true", "--disable-usage-stats",
           # The test session's own local Ray holds the default agent ports: a head sharing them has no
           # job agent ("No available agent to submit job"), so every port is a free one.
           f"--metrics-export-port={metrics_port or free_port()}",
           *[f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
                                                     "object-manager-port")]]
    with open(log, "wb") as output:
        head = subprocess.Popen(cmd, env={**env, "PATH": f"{BIN}:{env.get('PATH', os.environ['PATH'])}"},
                                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"

    def answers() -> bool:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited ({head.returncode}) before its Jobs API answered:\n{why(temp_dir)}")
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            return True
        except OSError as e:  # 401 without a token still proves the API is up
            return getattr(e, "code", None) in (401, 403)

    try:
        try:
            wait_for(answers, 120, "the Ray head's Jobs API", interval=0.5)
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n{why(temp_dir)}") from None
        yield address
    finally:
        kill_ray_cluster(head, temp_dir)


def why(temp_dir: str, lines: int = 30) -> str:
    """The tails of `ray start`'s output and of the head's dashboard logs: what a failed start says."""
    logs = [Path(temp_dir) / "ray-start.log", *sorted(Path(temp_dir).glob("session_*/logs/dashboard*.log")),
            *sorted(Path(temp_dir).glob("session_*/logs/dashboard*.err"))]
    return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                     for path in logs if path.is_file())


def job_counters(metrics_port: int, job_id: str) -> dict[str, float]:
    """A job's counters (pipeline/metrics.py) as Prometheus reads them from a head's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("ray_novarch_") and sample.labels.get("job_id") == job_id}
