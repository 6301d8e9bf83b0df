"""Output formats: every writer through one suite, the Hugging Face Parquet, WebDataset tars read
by the webdataset library and Ray Data, and job ids that --format left unchanged."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from novarch_batch.pipeline.reader import JobView
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.pipeline.verify import verify
from novarch_batch.storage import open_storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.encode import encode_png
from novarch_batch.workers.spec import OUTPUT_FORMATS, TRAILING_GRID, JobSpec, OutputConfig, SamplingConfig, SpecError
from novarch_batch.workers.writers import WRITERS
from tests.format_jobs import COUNT, SHARD_SIZE, copy_job, s3_format_jobs

CLASSES = ("building", "house")
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def png(i: int) -> bytes:
    return encode_png(np.full((32, 32, 3), i * 40, dtype=np.uint8))


def row(i: int, data: bytes) -> dict:
    return {"id": i, "job_id": "j", "shard": 0, "seed": 100 + i, "class_label": "house", "label": 1, "sampler": "ddpm",
            "steps": 1, "guidance": 1.0, "guidance_interval": "all", "final_timestep": 999, "spacing": "trailing", "eta": 0.0, "model": "m", "model_sha256": "0" * 64, "width": 32, "height": 32,
            "format": "png", "sha256": hashlib.sha256(data).hexdigest(), "created_at": CREATED}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_writer_writes_then_reads_back_in_id_order(name, tmp_path):
    """Written from several threads in any order; close() gives the Parquet columns in id order,
    and the shard they make reads back with pyarrow."""
    storage = open_storage(str(tmp_path))
    writer = WRITERS[name](storage, 0, CREATED)
    images = {i: png(i) for i in (2, 0, 1)}
    threads = [threading.Thread(target=writer.write, args=(i, data, row(i, data))) for i, data in images.items()]
    [t.start() for t in threads]
    [t.join() for t in threads]
    columns = writer.close()
    assert set(columns) == {"image_key", "image"} and len(columns["image_key"]) == len(columns["image"]) == 3
    rows = {k: [row(i, images[i])[k] for i in range(3)] for k in row(0, b"")}
    table = pq.ParquetFile(pa.BufferReader(shard_format.shard_bytes({**rows, **columns}, CLASSES))).read()  # as pipeline/reader.py reads
    assert table.column("id").to_pylist() == [0, 1, 2]
    if name == "null":
        return
    view = JobView(str(tmp_path), storage, {})
    for r in table.to_pylist():
        assert view.image_bytes(r) == images[r["id"]]
    if name == "webdataset":
        assert storage.exists(shard_format.tar_key(0))


def test_the_encoder_processes_give_the_bytes_of_inline_encoding():
    from novarch_batch.training.dataset import make_images
    from novarch_batch.workers.encode import PngEncoder, encode_many

    images, _ = make_images(np.arange(40), 4000)
    pool = PngEncoder(2)
    try:
        assert pool.encode(images) == encode_many(images)
    finally:
        pool.close()


def test_the_writers_are_the_formats():
    assert set(WRITERS) - {"null"} == set(OUTPUT_FORMATS)


def test_a_tar_is_the_same_bytes_when_written_again(tmp_path):
    """A re-run of a shard writes an identical tar: member order, mtime and owner are fixed."""
    blobs = []
    for attempt in range(2):
        storage = open_storage(str(tmp_path / str(attempt)))
        writer = WRITERS["webdataset"](storage, 7, CREATED)
        for i in (1, 0) if attempt else (0, 1):
            writer.write(i, png(i), row(i, png(i)))
        writer.close()
        blobs.append(storage.get_bytes(shard_format.tar_key(7)))
    assert blobs[0] == blobs[1]
    names = tarfile.open(fileobj=io.BytesIO(blobs[0])).getnames()
    assert names == ["000000000.png", "000000000.json", "000000001.png", "000000001.json"]


def test_row_groups_are_sized_by_bytes():
    big = {i: bytes(200_000) for i in range(60)}  # 200 KB images: ~20 per 4 MiB group
    rows = {k: [row(i, big[i])[k] for i in big] for k in row(0, b"")}
    columns = {"image_key": ["k"] * 60, "image": [{"bytes": b, "path": "x.png"} for b in big.values()]}
    meta = pq.read_metadata(io.BytesIO(shard_format.shard_bytes({**rows, **columns}, CLASSES)))
    assert meta.num_rows == 60 and 3 <= meta.num_row_groups <= 4
    small = {k: v[:3] for k, v in rows.items()} | {"image_key": ["k"] * 3, "image": [None] * 3}
    assert pq.read_metadata(io.BytesIO(shard_format.shard_bytes(small, CLASSES))).num_row_groups == 1


def test_job_ids_of_files_and_parquet_jobs_are_those_of_embed_images():
    """Hashes computed by the code before --format, where OutputConfig had embed_images (and the
    sampling defaults were those of then: guidance 2 on the plain trailing grid)."""
    def spec(fmt):
        then = SamplingConfig(guidance=2.0, final_timestep=TRAILING_GRID, spacing="trailing")
        return JobSpec(count=100, model="novarch-tiny", model_sha256="ab" * 32, sampling=then, output=OutputConfig(shard_size=64, format=fmt))

    assert spec("files").spec_hash() == "1c0042503964c0c9bbf98962621841b1fccf0c225a6ba6adb54f3dcf6cd9dd2d"
    assert spec("parquet").spec_hash() == "02641a6d43192d83b092fab4fbb3dc2651436345220ebba4340fd49f4e439cb4"
    assert spec("webdataset").identity()["format"] == "webdataset"
    assert len({spec(f).spec_hash() for f in OUTPUT_FORMATS}) == 3


def test_an_unknown_format_is_refused_with_the_choices(tmp_path):
    with pytest.raises(SpecError, match="--format must be one of files, parquet, webdataset, got 'zip'"):
        build_spec(count=8, out=str(tmp_path), format="zip")


@pytest.fixture(scope="module")
def jobs(ray_local, s3_server, tmp_path_factory):
    """Local copies of the session's small parquet and webdataset jobs (tests/format_jobs.py)."""
    out = tmp_path_factory.mktemp("formats")
    return {fmt: copy_job(url, out) for fmt, url in s3_format_jobs(s3_server.bucket).items()}


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """`datasets` with its cache in tmp_path and no network."""
    for name, value in (("HF_HOME", tmp_path / "hf"), ("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    return tmp_path / "hf"


def test_load_dataset_reads_pil_images_and_class_labels(jobs, hf_offline):
    import datasets

    shards = str(jobs["parquet"] / "shards" / "*.parquet")
    loaded = datasets.load_dataset("parquet", data_files=shards, split="train", cache_dir=str(hf_offline))
    assert loaded.num_rows == COUNT
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded.features["label"].names == list(CLASSES)
    first = loaded[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (32, 32)
    assert first["label"] == 1 and first["class_label"] == "house"
    assert sorted(loaded["id"]) == list(range(COUNT))


def test_embedded_shards_carry_the_version_and_the_hf_metadata(jobs):
    meta = pq.read_schema(jobs["parquet"] / "shards" / "part-00000.parquet").metadata
    assert meta[shard_format.SCHEMA_VERSION_KEY] == b"5"
    features = json.loads(meta[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["label"] == {"names": list(CLASSES), "_type": "ClassLabel"}


def test_the_hf_features_are_those_datasets_infers(jobs):
    """Every plain column's feature is the one `datasets` itself derives from its Arrow type."""
    import datasets

    schema = pq.read_schema(jobs["parquet"] / "shards" / "part-00000.parquet")
    ours = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    inferred = datasets.Features.from_arrow_schema(schema.remove_metadata()).to_dict()
    assert {k: v for k, v in ours.items() if k not in ("image", "label")} == \
           {k: v for k, v in inferred.items() if k not in ("image", "label")}


def test_webdataset_library_reads_the_tars(jobs):
    import webdataset as wds

    job = jobs["webdataset"]
    assert not (job / "images").exists() and sorted(p.name for p in (job / "shards").iterdir()) == \
        ["part-00000.parquet", "part-00001.parquet"]
    urls = [str(job / shard_format.tar_key(k)) for k in range(COUNT // SHARD_SIZE)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "json"))
    assert [key for key, _, _ in samples] == [f"{i:09d}" for i in range(COUNT)]
    index = {r["id"]: r for r in pq.read_table(job / "shards").to_pylist()}
    for key, image, meta in samples:
        assert isinstance(image, Image.Image) and image.size == (32, 32)
        parquet_row = index[int(key)]
        assert meta["sha256"] == parquet_row["sha256"] and meta["seed"] == parquet_row["seed"]
        assert meta["image_key"] == parquet_row["image_key"] == shard_format.member_key(parquet_row["shard"], int(key))


def test_ray_data_reads_the_tars(jobs, ray_local):
    import ray.data

    samples = ray.data.read_webdataset(str(jobs["webdataset"] / "webdataset")).take_all()
    assert sorted(s["json"]["id"] for s in samples) == list(range(COUNT))
    assert all(s["png"].shape == (32, 32, 3) for s in samples)


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_verify_rehashes_every_image_of_each_format(jobs, fmt):
    report = verify(str(jobs[fmt]), full=True)
    assert report.ok, report.problems
    assert report.images_checked == COUNT


def test_verify_finds_a_missing_tar(jobs, tmp_path):
    import shutil

    copy = tmp_path / "job"
    shutil.copytree(jobs["webdataset"], copy)
    (copy / shard_format.tar_key(1)).unlink()
    report = verify(str(copy), full=True)
    assert not report.ok and any("image missing" in p for p in report.problems)


def test_verify_finds_a_second_copy_a_stray_and_a_foreign_row_in_a_tar(jobs, tmp_path):
    """What a WebDataset reader would yield twice or wrongly, which the Parquet index alone does not show."""
    import json
    import shutil
    import tarfile

    copy = tmp_path / "job"
    shutil.copytree(jobs["webdataset"], copy)
    tar_path = copy / shard_format.tar_key(0)
    with tarfile.open(tar_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    first = sorted(members)[0]  # 000000000.json
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [*sorted(members.items()), ("000000001.png", members["000000001.png"]),
                           ("000000999.png", b"stray")]:
            data = json.dumps({"id": 7}).encode() if name == first else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = verify(str(copy), full=True)
    assert not report.ok
    assert set(report.problems) >= {f"{shard_format.tar_key(0)}: a second 000000001.png",
                                    f"{shard_format.tar_key(0)}: unexpected member 000000999.png",
                                    f"{shard_format.tar_key(0)}: 000000000.json is not this sample's row"}
    assert report.damaged_shards == [0] and f"the damaged shards' Parquet files ({shard_format.shard_key(0)})" in report.repair


def test_verify_reports_an_unreadable_shard_and_a_stray_file_in_shards(jobs, tmp_path):
    import shutil

    copy = tmp_path / "job"
    shutil.copytree(jobs["parquet"], copy)
    (copy / shard_format.shard_key(0)).write_bytes(b"garbage")
    shutil.copy(copy / shard_format.shard_key(1), copy / "shards" / "part-00001 (copy).parquet")
    report = verify(str(copy), full=True)  # a report, not a pyarrow traceback
    assert not report.ok
    problems = "\n".join(report.problems)
    assert f"{shard_format.shard_key(0)}: checksum differs from _SUCCESS" in problems
    assert f"{shard_format.shard_key(0)}: not readable as Parquet" in problems
    assert "shards/part-00001 (copy).parquet: not a shard of this job" in problems
    assert report.repair.startswith("delete shards/part-00001 (copy).parquet; then delete _SUCCESS (if there) and the damaged "
                                    f"shards' Parquet files ({shard_format.shard_key(0)})")



def test_verify_names_a_rewritten_shard_of_an_unfinished_job_by_its_sidecar(jobs, tmp_path):
    """No _SUCCESS to compare with (an interrupted job): the checksum written beside each commit names a
    Parquet file rewritten since, here with another shard's rows, and the repair says to delete it."""
    import shutil

    copy = tmp_path / "job"
    shutil.copytree(jobs["parquet"], copy)
    (copy / "_SUCCESS").unlink()
    shutil.copy(copy / shard_format.shard_key(0), copy / shard_format.shard_key(1))
    report = verify(str(copy), full=True)
    assert not report.ok
    assert f"{shard_format.shard_key(1)}: checksum differs from its commit's sidecar, checksums/part-00001.sha256" in report.problems
    assert report.damaged_shards == [1] and f"the damaged shards' Parquet files ({shard_format.shard_key(1)})" in report.repair


def test_an_unfinished_job_without_sidecars_is_checked_by_ids_alone(jobs, tmp_path):
    """Shards committed before sidecars existed (or with them deleted): nothing to compare, nothing
    reported, and a resume hashes such a shard for _SUCCESS."""
    import hashlib
    import shutil

    from novarch_batch.pipeline import manifest

    copy = tmp_path / "job"
    shutil.copytree(jobs["parquet"], copy)
    (copy / "_SUCCESS").unlink()
    shutil.rmtree(copy / "checksums")
    report = verify(str(copy), full=True)
    assert report.problems == ["_SUCCESS is missing: the job did not finish"] and report.damaged_shards == []
    assert manifest.shard_checksums(open_storage(str(copy)), [0, 1]) == {
        k: hashlib.sha256((copy / shard_format.shard_key(k)).read_bytes()).hexdigest() for k in (0, 1)}


def test_a_shard_past_the_plan_is_a_stray_and_nothing_else(jobs, tmp_path):
    """part-00099 in a 2-shard job: every reader of shards/ reads it, so it is named and deleted; its rows
    are not counted as the job's (they would add duplicates and a row count that deleting it repairs)."""
    import shutil

    copy = tmp_path / "job"
    shutil.copytree(jobs["parquet"], copy)
    shutil.copy(copy / shard_format.shard_key(1), copy / shard_format.shard_key(99))
    (copy / "shards" / "_notes.txt").write_text("skipped by pyarrow and Ray Data, as every name from _ or .")
    report = verify(str(copy), full=True)
    assert report.problems == [f"{shard_format.shard_key(99)}: not a shard of this job, yet every reader of shards/ reads it as one; "
                               "delete it"]
    assert report.shards == 2 and report.rows == COUNT
    assert report.repair == f"delete {shard_format.shard_key(99)}: nothing else is wrong"


def test_verify_reports_a_stray_tar_that_ray_data_would_read(jobs, tmp_path, ray_local):
    """A copy of a tar in webdataset/ is read by a reader of the folder, every sample in it a second
    time (shown with Ray Data, which docs/format.md reads the folder with); verify names it."""
    import shutil

    import ray

    copy = tmp_path / "job"
    shutil.copytree(jobs["webdataset"], copy)
    shutil.copy(copy / shard_format.tar_key(0), copy / "webdataset" / "part-00000 (copy).tar")
    samples = ray.data.read_webdataset(str(copy / "webdataset")).count()
    assert samples > COUNT  # what the stray costs a reader
    report = verify(str(copy), full=True)
    assert not report.ok
    assert report.problems == ["webdataset/part-00000 (copy).tar: not one of this job's tars, yet a reader of webdataset/ "
                               "(Ray Data's read_webdataset) reads its samples too; delete it"]
    assert report.stray_files == ["webdataset/part-00000 (copy).tar"]
    assert report.repair == "delete webdataset/part-00000 (copy).tar: nothing else is wrong"
    (copy / "webdataset" / "part-00000 (copy).tar").unlink()  # the repair followed
    assert verify(str(copy), full=True).ok
