"""Ray's real autoscaler on one machine: the fake multi-node provider launches "nodes" (raylets
with the resources a node type declares) from zero as demand appears, and removes idle ones.

The recipe is DESIGN.md's (facts about the parts). Worker nodes are started by the head's
autoscaler monitor, outside the head's process group, so they are found and stopped by the
temp dir they share with the head.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.procs import kill_ray_cluster, parent_pid, processes, wait_for
from tests.ray_head import free_port, why

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class FakeCluster:
    gcs_address: str
    temp_dir: str
    config: Path
    head_pgid: int
    metrics_port: int  # the head's Prometheus metrics (/metrics)

    def node_pids(self, node_id: str) -> list[int]:
        """The processes of one fake worker node: its raylet and the workers it started (actors), as a
        lost VM takes them all. `node_id` as ray.nodes() shows it."""
        raylets = [pid for pid, argv in processes() if self.temp_dir in argv and "raylet/raylet" in argv and f"--node_id={node_id}" in argv]
        return raylets + [pid for pid, _ in processes() if parent_pid(pid) in raylets]

    def worker_node_ids(self) -> list[str]:
        """Ids of the fake worker nodes: every raylet of this cluster but the head's (the child of `ray start`)."""
        ids = []
        for pid, argv in processes():
            if self.temp_dir in argv and "raylet/raylet" in argv and "--node_id=" in argv and parent_pid(pid) != self.head_pgid:
                ids.append(argv.split("--node_id=", 1)[1].split()[0])
        return ids


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def cluster_config(gcs_address: str, worker_resources: dict, max_workers: int, idle_minutes: float) -> dict:
    return {
        "cluster_name": "novarch-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            "worker": {"resources": worker_resources, "node_config": {}, "min_workers": 0, "max_workers": max_workers},
        },
        # The legacy autoscaler reads these keys directly.
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def fake_cluster(worker_resources: dict, max_workers: int, env: dict[str, str], idle_minutes: float = 1.0):
    """A head with no resources of its own (like ray_cluster.yaml's) and one worker type, from zero."""
    port = free_port()
    gcs_address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="nvf", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    config = Path(temp_dir) / "cluster.yaml"
    config.write_text(yaml.safe_dump(cluster_config(gcs_address, worker_resources, max_workers, idle_minutes)))
    metrics_port = free_port()
    head_env = {**env, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head_env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=0", f"--port={port}", "--node-ip-address=127.0.0.1",
           f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--include-dashboard=false",
           f"--metrics-export-port={metrics_port}",
           *[f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
                                                     "object-manager-port")]]
    log = Path(temp_dir) / "ray-start.log"
    with open(log, "wb") as output:
        head = subprocess.Popen(cmd, env=head_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def monitor_started() -> bool:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited ({head.returncode}) before the autoscaler started:\n{why(temp_dir)}")
        return any("monitor.py" in argv and f":{port}" in argv for _, argv in processes())

    try:
        try:
            wait_for(monitor_started, 60, "the head's autoscaler", interval=0.5)
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n{why(temp_dir)}") from None
        # A loaded machine can start the monitor before the head's raylet is up and the GCS answers;
        # a driver that connects then fails to reach the cluster.
        wait_for(lambda: any("raylet" in argv and temp_dir in argv for _, argv in processes()) and _listening(port), 60,
                 "the head's raylet and GCS", interval=0.5)
        yield FakeCluster(gcs_address, temp_dir, config, head.pid, metrics_port)
    finally:
        kill_ray_cluster(head, temp_dir)
