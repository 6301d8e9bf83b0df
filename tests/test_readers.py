"""The readers' page: every `# reader:` snippet in docs/format.md and docs/storage.md runs here,
against jobs on the embedded S3 server, so the documentation cannot drift from what works."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.format_jobs import COUNT, s3_format_jobs

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLACEHOLDER = "s3://novarch/datasets/demo/<job_id>"
SNIPPET = re.compile(r"```python\n(# reader: ([\w-]+)\n.*?)```", re.S)


def snippets() -> dict[str, str]:
    found = {}
    for page in ("format.md", "storage.md"):
        for code, name in SNIPPET.findall((DOCS / page).read_text()):
            assert name not in found, f"two snippets named {name}"
            assert PLACEHOLDER in code, f"{page}: the {name} snippet must read the job at {PLACEHOLDER}"
            found[name] = code
    return found


def check_datasets(ns):
    images = ns["images"]
    assert images.num_rows == COUNT and images.features["label"].names == ["building", "house"]
    assert isinstance(images[0]["image"], Image.Image)


def check_webdataset(ns):
    samples = list(ns["dataset"])
    assert len(samples) == COUNT
    assert isinstance(samples[0][0], Image.Image) and samples[0][1]["id"] == 0


def check_ray_parquet(ns):
    assert ns["rows"].count() == COUNT
    assert Image.open(io.BytesIO(ns["first"]["image"]["bytes"])).size == (32, 32)


def check_ray_webdataset(ns):
    assert ns["samples"].count() == COUNT
    assert ns["samples"].take(1)[0]["png"].shape == (32, 32, 3)


def check_pyarrow(ns):
    assert ns["table"].num_rows == COUNT and ns["table"]["image"].null_count == 0


def check_duckdb(ns):
    assert ns["counts"] == [("house", COUNT)]


def check_polars(ns):
    assert ns["df"].height == COUNT and ns["df"]["id"].n_unique() == COUNT


# reader -> (the --format of the job it reads, what must hold afterwards)
READERS = {
    "datasets": ("parquet", check_datasets),
    "webdataset": ("webdataset", check_webdataset),
    "ray-parquet": ("parquet", check_ray_parquet),
    "ray-webdataset": ("webdataset", check_ray_webdataset),
    "pyarrow": ("parquet", check_pyarrow),
    "duckdb": ("parquet", check_duckdb),
    "polars": ("parquet", check_polars),
}


def test_the_docs_have_one_snippet_per_reader():
    assert set(snippets()) == set(READERS)


@pytest.fixture(scope="module")
def s3_jobs(ray_local, s3_server):
    return s3_format_jobs(s3_server.bucket)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_reader_snippet_runs_against_a_job_on_s3(reader, s3_jobs, s3_env, monkeypatch, tmp_path):
    fmt, check = READERS[reader]
    for name, value in (("HF_HOME", tmp_path / "hf"), ("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # `python` of pipe: URLs
    code = snippets()[reader].replace(PLACEHOLDER, s3_jobs[fmt])
    namespace: dict = {}
    exec(compile(code, f"<docs snippet {reader}>", "exec"), namespace)
    check(namespace)


def test_the_webdataset_snippet_leaves_a_large_tar_quietly(s3_jobs, s3_env, monkeypatch):
    """Its loop leaves the first tar after one sample: the `pipe:` download of a tar larger than a pipe's
    buffer (64 KiB) is then cut short, and must stop as `cat` would, without a BrokenPipeError traceback."""
    from novarch_batch.storage import open_storage

    small = tarfile.open(fileobj=io.BytesIO(open_storage(s3_jobs["webdataset"]).get_bytes("webdataset/part-00000.tar")))
    members = [(m.name, small.extractfile(m).read()) for m in small.getmembers()]
    large = io.BytesIO()
    with tarfile.open(fileobj=large, mode="w") as tar:
        for copy in range(200):  # the job's samples under other keys
            for name, data in members:
                info = tarfile.TarInfo(f"{copy:04d}-{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert large.tell() > 1 << 20
    job = s3_jobs["webdataset"] + "-large-tar"
    store = open_storage(job)
    store.put_bytes("job.json", json.dumps({"shard_plan": {"num_shards": 1}}).encode())
    store.put_bytes("webdataset/part-00000.tar", large.getvalue())
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # `python` of pipe: URLs
    script = snippets()["webdataset"].replace(PLACEHOLDER, job) + "\nprint(row['id'], image.size)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "0 (32, 32)\n", done.stdout + done.stderr[-2000:]
    assert done.stderr == "", done.stderr[-2000:]
