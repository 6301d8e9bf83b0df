"""Pytest fixtures for a real S3 server (SeaweedFS), started once per test session (per xdist worker).

Register with ``pytest_plugins = ["tests.fixtures_s3"]`` in tests/conftest.py, or run
``pytest -p tests.fixtures_s3``.
"""
from __future__ import annotations

import re
import uuid

import pytest

from novarch_batch.pipeline.seaweed import EmbeddedS3

S3_ENV_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running ``EmbeddedS3`` with bucket ``novarch`` and its own random keys."""
    server = EmbeddedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


def isolate_aws_env(monkeypatch, tmp_path) -> None:
    """No credentials from the developer's own ~/.aws or instance metadata can leak into a test."""
    for name in S3_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # else boto3 waits on 169.254.169.254


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> dict[str, str]:
    """This test's process environment points boto3/pyarrow/polars at ``s3_server``."""
    isolate_aws_env(monkeypatch, tmp_path)
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_url(s3_server, request) -> str:
    """A fresh, empty ``s3://novarch/<test-name>-<uuid>`` prefix for this test."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")[:60]
    return f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex[:8]}"
