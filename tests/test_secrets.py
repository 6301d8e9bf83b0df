"""No access key or secret in logs, job.json, Parquet (data or metadata), errors or --json output."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from novarch_batch.storage.s3 import S3Storage

CLI = str(Path(sys.executable).with_name("novarch-batch"))


def test_no_secret_anywhere_after_a_run(s3_server, s3_env, tmp_path):
    env_keys = s3_server.env()
    secrets = [env_keys["AWS_ACCESS_KEY_ID"], env_keys["AWS_SECRET_ACCESS_KEY"]]
    ray_tmp = Path(tempfile.mkdtemp(prefix="nvr", dir="/tmp"))  # this run's own Ray logs; short: socket paths < 108 bytes
    env = {**env_keys, "PATH": "/usr/bin:/bin", "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp), "HOME": str(tmp_path)}
    out = f"s3://{s3_server.bucket}/secrets-{time.time_ns()}"
    ok = subprocess.run([CLI, "submit", "--count", "16", "--steps", "2", "--shard-size", "8", "--actors", "1", "--out", out, "--json"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([CLI, "submit", "--count", "16", "--out", f"s3://{s3_server.bucket}-missing/x"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    verify = subprocess.run([CLI, "verify", f"{out}/does-not-exist"], capture_output=True, text=True, env=env, timeout=120)
    assert verify.returncode == 1

    texts = {"stdout": ok.stdout, "stderr": ok.stderr, "error": bad.stderr, "verify error": verify.stderr}
    storage = S3Storage.from_url(out)
    keys = storage.list()
    assert any(k.endswith("job.json") for k in keys) and any(k.endswith(".parquet") for k in keys)
    blobs = {key: storage.get_bytes(key) for key in keys}
    logs = {str(p): p.read_bytes() for p in ray_tmp.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000}
    assert any("/logs/" in name for name in logs), "the run's Ray logs were not found"
    shutil.rmtree(ray_tmp, ignore_errors=True)
    for secret in secrets:
        for name, text in texts.items():
            assert secret not in text, f"secret in {name}"
        for name, data in {**blobs, **logs}.items():
            assert secret.encode() not in data, f"secret in {name}"
