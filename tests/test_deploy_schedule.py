"""The nightly schedule's own command line, read from infra/kuberay/nightly-cronjob.yaml, run for real.

The CronJob container's command, args and env are taken from the manifest and run with /bin/sh
against a local Ray head that has token authentication on, writing to the session's SeaweedFS.
Only site values and sizes are replaced, each named below; the script itself is run as written.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.procs import wait_for
from tests.ray_head import ray_head

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Sizes for a 2-core CI machine instead of the manifest's night (and CPU instead of the GPU it asks for).
SIZE_OVERRIDES = {"--count 100000": "--count 16 --steps 2 --shard-size 8", "--gpus 8": "--device cpu"}


def cronjob_container() -> dict:
    docs = [d for d in yaml.safe_load_all((ROOT / "infra" / "kuberay" / "nightly-cronjob.yaml").read_text()) if d]
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def scheduled_command(overrides: dict[str, str] = SIZE_OVERRIDES) -> list[str]:
    container = cronjob_container()
    command, args = container["command"], list(container["args"])
    assert command == ["/bin/sh", "-c"] and len(args) == 1
    script = args[0]
    for flag, small in overrides.items():
        assert script.count(flag) == 1, f"the manifest's script no longer has exactly one {flag!r}"
        script = script.replace(flag, small)
    return [*command, script]


def clean_env(extra: dict[str, str], home: Path) -> dict[str, str]:
    """No AWS credentials or Ray token of the developer's own: only what is passed in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", HOME=str(home), AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE=str(home / "none"), AWS_CONFIG_FILE=str(home / "none"))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def head(s3_server, tmp_path_factory):
    """A Ray head with token auth on (its token passed as RAY_AUTH_TOKEN, as KubeRay does) and the
    S3 keys in its environment, as the RayCluster's pods get them from IRSA."""
    token = secrets.token_hex(32)
    env = clean_env({**s3_server.env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, tmp_path_factory.mktemp("head-home"))
    with ray_head(env) as address:
        yield address, token


def schedule_env(head, out: str, home: Path) -> dict[str, str]:
    """The CronJob pod's environment: the manifest's env, with the head Service, the bucket and the
    Secret's value replaced by the local head, the test's S3 prefix and the local head's token. No AWS keys."""
    address, token = head
    env = {}
    for var in cronjob_container()["env"]:
        env[var["name"]] = var.get("value", "")
    assert env["NOVARCH_CLUSTER"].startswith("http://novarch-batch-head-svc.") and env["NOVARCH_OUT"].startswith("s3://")
    env.update(NOVARCH_CLUSTER=address, NOVARCH_OUT=out, RAY_AUTH_TOKEN=token)
    return clean_env(env, home)


def run_schedule(head, out: str, home: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(scheduled_command(), capture_output=True, text=True, timeout=timeout, env=schedule_env(head, out, home))


def cli(*args: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "novarch-batch"), *args], capture_output=True, text=True, timeout=120, env=clean_env(env, home))


def summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # the driver's --json line, followed from its log


def objects(s3_server, url: str, under: str = "shards/") -> dict[str, str]:
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}")
    return {o["Key"]: f'{o["ETag"]} {o["LastModified"]}' for o in listing.get("Contents", [])}


class ForeignLease:
    """Another driver's live lease, beating every 3 s: on a job folder (`_LEASE`, a second driver of
    the same night), or on the output root (`_LEASE.nightly`, an earlier night still running)."""

    def __init__(self, s3_server, url: str, name: str = "_LEASE", **holder):
        self.client = s3_server.client()
        self.bucket, prefix = url.removeprefix("s3://").split("/", 1)
        self.key = f"{prefix}/{name}"
        self.holder = holder
        self.stop = threading.Event()

    def beat(self) -> None:
        while True:
            body = {"id": "another-driver", "host": "another-head", "pid": 1, "heartbeat": time.time(), **self.holder}
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(body).encode())
            if self.stop.wait(3.0):
                return

    def __enter__(self):
        self.thread = threading.Thread(target=self.beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


def test_the_nightly_command_runs_resumes_and_refuses_a_second_driver(head, s3_server, s3_url, tmp_path):
    day = time.strftime("%Y%m%d", time.gmtime())
    url = f"{s3_url}/nightly-{day}"

    # An earlier night whose driver still runs (its pod lost without the trap): --exclusive nightly
    # refuses tonight, non-zero, with nothing written for tonight at all.
    with ForeignLease(s3_server, s3_url, "_LEASE.nightly", job_url=f"{s3_url}/nightly-19991231"):
        overlap = run_schedule(head, s3_url, tmp_path)
    assert overlap.returncode != 0
    assert f"--exclusive nightly: {s3_url}/nightly-19991231 is still running" in overlap.stdout + overlap.stderr
    assert objects(s3_server, url, under="") == {}

    # A driver on the same night that holds only the job's lease (one started without --exclusive):
    # refused by that lease, non-zero, no shard written.
    with ForeignLease(s3_server, url):
        busy = run_schedule(head, s3_url, tmp_path)
    assert busy.returncode != 0
    assert "being run by another driver" in busy.stdout + busy.stderr
    assert objects(s3_server, url) == {}

    first = summary(run_schedule(head, s3_url, tmp_path))
    assert first["url"] == url and first["complete"] and first["images_sampled"] == 16
    assert objects(s3_server, s3_url, under="_LEASE") == {}  # both leases released: the next night may run

    s3 = s3_server.env()
    checked = cli("verify", url, "--json", "--full", env=s3, home=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and report["rows"] == 16 and report["shards"] == 2
    shards = objects(s3_server, url)
    assert len(shards) == 2

    # A retried night: the same job id from the same date; the job is complete, so it writes nothing.
    again = summary(run_schedule(head, s3_url, tmp_path))
    assert again["url"] == url and again["complete"] and again["already_complete"] and again["images_sampled"] == 0
    assert objects(s3_server, url) == shards

    status = cli("status", url, "--json", env=s3, home=tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout)["complete"] is True


def test_the_cluster_refuses_the_schedule_without_the_token(head, s3_url, tmp_path):
    address, _ = head
    done = run_schedule((address, "not-the-token"), s3_url, tmp_path, timeout=120)
    assert done.returncode != 0
    assert "authentication failed" in done.stderr or "Unauthorized" in done.stderr + done.stdout


def test_sigterm_to_the_pod_stops_the_nights_ray_job(head, s3_url, tmp_path):
    """What the Job's activeDeadlineSeconds does: SIGTERM to the container. The script's trap must
    stop the Ray job too, or the GPUs would run on past the deadline."""
    address, token = head
    env = schedule_env(head, s3_url, tmp_path)
    long_night = {"--count 100000": "--count 20000 --steps 2 --shard-size 500", "--gpus 8": "--device cpu"}
    pod = subprocess.Popen(scheduled_command(long_night), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    tonight = f"nightly-{time.strftime('%Y%m%d', time.gmtime())}-"

    def states() -> list[str]:
        listing = cli("jobs", "list", "--cluster", address, env={"RAY_AUTH_TOKEN": token}, home=tmp_path)
        return [line.split("\t")[1] for line in listing.stdout.splitlines() if line.startswith(tonight)]

    try:
        wait_for(lambda: any("RUNNING" in s for s in states()), 120, "the night's Ray job to run", interval=1.0)
        os.kill(pod.pid, signal.SIGTERM)  # the shell only, as the kubelet signals the container's PID 1
        out, err = pod.communicate(timeout=60)
        assert pod.returncode == 143, out[-2000:] + err[-2000:]
        wait_for(lambda: (s := states()) and not any("RUNNING" in x or "PENDING" in x for x in s), 60, "the Ray job to stop", interval=1.0)
        assert any("STOPPED" in s for s in states())
    finally:
        try:
            os.killpg(pod.pid, signal.SIGKILL)  # whatever the script left in its process group
        except ProcessLookupError:
            pass
