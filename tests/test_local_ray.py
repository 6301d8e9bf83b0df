"""`submit` without --ray-address runs on a private local Ray, whatever other Ray the machine has;
--ray-address joins a running one. Ray's plain ray.init() would instead follow
/tmp/ray/ray_current_cluster, which `ray start --head` writes and a killed head leaves behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.ray_head import free_port, ray_head

CLI = str(Path(sys.executable).with_name("novarch-batch"))
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def submit(out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["NOVARCH_FORCE_DEVICE"] = "cpu"  # the head below registers a GPU that actors only pretend to use
    return subprocess.run([CLI, "submit", "--count", "8", "--steps", "1", "--out", str(out), "--json", *flags],
                          capture_output=True, text=True, timeout=300, env=env)


def test_a_live_ray_start_cluster_is_joined_only_when_named_and_a_stale_one_is_ignored(tmp_path):
    port = free_port()
    head_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    before = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    try:
        with ray_head(head_env, num_cpus=1, num_gpus=1, port=port):
            # What a user's `ray start --head` (default temp dir) writes once its head is up; the test's head
            # keeps its own temp dir, so the file is written here, naming the live head.
            CURRENT_CLUSTER.parent.mkdir(parents=True, exist_ok=True)
            CURRENT_CLUSTER.write_text(f"127.0.0.1:{port}")
            private = submit(tmp_path / "private")
            assert private.returncode == 0, private.stderr
            assert json.loads(private.stdout)["actors"].endswith("CPU actor(s) x 1 thread(s) (no GPU in the cluster)")
            joined = submit(tmp_path / "joined", "--ray-address", f"127.0.0.1:{port}")
            assert joined.returncode == 0, joined.stderr
            assert json.loads(joined.stdout)["actors"] == "1 GPU actor(s), one GPU each"  # the head's (registered) GPU
        CURRENT_CLUSTER.write_text(f"127.0.0.1:{port}")  # the head is gone; its file stays, as after a kill without `ray stop`
        stale = submit(tmp_path / "stale")
        assert stale.returncode == 0, stale.stderr
        assert json.loads(stale.stdout)["images_sampled"] == 8
    finally:
        if before is None:
            CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER.write_text(before)
