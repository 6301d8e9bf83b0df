"""End to end on a real local Ray and a real folder, read back with pyarrow."""
from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from novarch_batch.pipeline import driver
from novarch_batch.pipeline.spec import SpecError, build_spec
from novarch_batch.workers import shard_format

COUNT = 24


def read_job(job_dir):
    table = ds.dataset(str(job_dir / "shards"), format="parquet").to_table()
    return table.sort_by("id").to_pylist()


@pytest.fixture(scope="module")
def finished_job(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    spec = build_spec(count=COUNT, out=str(out), steps=3, shard_size=10, batch_size=4, actors=2, seed=11)
    report = driver.run(spec)
    return spec, report, out / spec.job_id


def test_every_image_once_with_matching_checksums(finished_job, model_dir):
    spec, report, job_dir = finished_job
    rows = read_job(job_dir)
    assert report.complete and report.shards_sampled == 3 and report.images_sampled == COUNT
    assert [r["id"] for r in rows] == list(range(COUNT))
    for r in rows:
        data = (job_dir / r["image_key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        image = Image.open(io.BytesIO(data))
        assert image.size == (32, 32) and image.mode == "RGB" and (r["width"], r["height"]) == (32, 32)
        assert r["image_key"] == shard_format.image_key(r["shard"], r["id"])
        assert r["shard"] == r["id"] // 10 and r["job_id"] == spec.job_id and r["sampler"] == "dpmpp-2m-sde"  # the default
    assert len({r["seed"] for r in rows}) == COUNT


def test_manifests_and_schema_version(finished_job):
    spec, _, job_dir = finished_job
    job = json.loads((job_dir / "job.json").read_text())
    success = json.loads((job_dir / "_SUCCESS").read_text())
    assert job["spec_hash"] == spec.spec_hash() == success["spec_hash"]
    assert job["shard_plan"] == {"count": COUNT, "shard_size": 10, "num_shards": 3}
    assert job["model"]["sha256"] == spec.model_sha256
    for key, digest in success["shards"].items():
        assert hashlib.sha256((job_dir / key).read_bytes()).hexdigest() == digest
    meta = pq.read_schema(job_dir / shard_format.shard_key(0)).metadata
    assert meta[shard_format.SCHEMA_VERSION_KEY] == shard_format.SCHEMA_VERSION.encode()
    # _SUCCESS is written after every shard: its mtime is the newest in the job folder.
    newest = max(p.stat().st_mtime_ns for p in job_dir.rglob("*") if p.is_file())
    assert (job_dir / "_SUCCESS").stat().st_mtime_ns == newest


def test_every_file_of_the_job_is_as_readable_as_the_umask_allows(finished_job):
    """Written through temporary files, yet not private to their writer: other users, containers and
    training jobs read a dataset (0644 under the usual umask 022, not mkstemp's 0600)."""
    import os

    _, _, job_dir = finished_job
    mask = os.umask(0o022)
    os.umask(mask)
    if mask != 0o022:
        pytest.skip(f"checked under the usual umask 022 (this process: {mask:03o})")
    modes = {p.relative_to(job_dir).parts[0]: p.stat().st_mode & 0o777 for p in job_dir.rglob("*") if p.is_file()}
    assert set(modes) >= {"job.json", "_SUCCESS", "shards", "checksums", "images"}
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}


def test_a_process_that_read_a_shard_exits_cleanly(finished_job):
    """pyarrow reading from a Python file object could abort the process at exit ("terminate called
    without an active exception", exit 134), in about half the runs of `verify`: 8 runs must all exit 0."""
    import subprocess
    import sys

    _, _, job_dir = finished_job
    read = f"from novarch_batch.pipeline.reader import JobView; JobView.open({str(job_dir)!r}).shard_table(0)"
    codes = [subprocess.run([sys.executable, "-c", read], capture_output=True, timeout=60).returncode for _ in range(8)]
    assert codes == [0] * 8


def test_rerun_samples_nothing(finished_job):
    spec, _, job_dir = finished_job
    before = {p: p.stat().st_mtime_ns for p in (job_dir / "shards").iterdir()}
    report = driver.run(spec)
    assert report.shards_sampled == 0 and report.shards_skipped == 3 and report.images_sampled == 0
    assert before == {p: p.stat().st_mtime_ns for p in (job_dir / "shards").iterdir()}


def test_lost_shard_is_rewritten_with_identical_bytes(finished_job):
    from novarch_batch.pipeline.status import status

    spec, _, job_dir = finished_job
    shard_file = job_dir / shard_format.shard_key(1)
    original = shard_file.read_bytes()
    shard_file.unlink()
    # A finished job that lost a shard is not "already complete": refused, with the repair, and status agrees.
    with pytest.raises(driver.JobFailed, match=r"finished, but 1 shard\(s\) are gone since .* delete _SUCCESS and re-run"):
        driver.run(spec)
    stray = job_dir / shard_format.shard_key(99)  # a shard index the job does not have must not fill the gap
    stray.write_bytes(original)
    damaged = status(str(job_dir))
    stray.unlink()
    assert damaged.finished and not damaged.complete and "damaged" in damaged.text()
    from click.testing import CliRunner

    from novarch_batch.pipeline.cli import cli

    assert CliRunner().invoke(cli, ["status", str(job_dir)]).exit_code == 1  # a script must not take it for done
    (job_dir / "_SUCCESS").unlink()
    report = driver.run(spec)
    assert report.shards_sampled == 1 and report.images_sampled == 10
    assert shard_file.read_bytes() == original


def test_a_lost_image_is_found_and_made_again_with_identical_bytes(finished_job):
    """A PNG gone from a finished job: its Parquet rows still name it, yet status, a re-run and verify
    (without --full) all see it from one listing; after the repair it is back, byte for byte."""
    from novarch_batch.pipeline.status import status
    from novarch_batch.pipeline.verify import verify

    spec, _, job_dir = finished_job
    png, index = job_dir / shard_format.image_key(2, 21), job_dir / shard_format.shard_key(2)
    original_png, original_index = png.read_bytes(), index.read_bytes()
    png.unlink()
    damaged = status(str(job_dir))
    assert damaged.finished and not damaged.complete and damaged.shards_committed == 3 and damaged.shards_missing_images == 1
    assert damaged.images_committed == COUNT - 4 and "damaged" in damaged.text() and "(1 of them missing images)" in damaged.text()
    with pytest.raises(driver.JobFailed, match=r"finished, but 1 shard\(s\) have lost images since "
                                               r"\(first: images/00002/000000021.png\); delete _SUCCESS and re-run"):
        driver.run(spec)
    checked = verify(str(job_dir), sample=0)  # no image read: the listing alone finds it
    assert checked.problems == ["shards/part-00002.parquet: its images are not all in storage (first missing: images/00002/000000021.png)"]
    assert checked.repair.startswith("delete _SUCCESS (if there) and re-run the same submit")
    # Had an older novarch-batch begun the job (it resumes only with that one, which does not look for
    # lost images), deleting _SUCCESS would not bring the image back: the shard's commit goes by hand.
    job_json = job_dir / "job.json"
    current = job_json.read_text()
    job_json.write_text(json.dumps({**json.loads(current), "schema_version": "4"}))
    by_hand = "delete _SUCCESS and the Parquet file (shards/part-NNNNN.parquet) of each damaged shard"
    with pytest.raises(driver.JobFailed, match=rf"lost images since .*; {re.escape(by_hand)} .* began the job \(Parquet schema 4\)"):
        driver.run(spec)
    assert verify(str(job_dir), sample=0).repair.startswith(by_hand)
    job_json.write_text(current)
    (job_dir / "_SUCCESS").unlink()
    report = driver.run(spec)
    assert report.shards_sampled == 1 and report.shards_skipped == 2
    assert png.read_bytes() == original_png and index.read_bytes() == original_index
    assert verify(str(job_dir), full=True).ok


def test_damage_in_place_is_named_by_verify_and_its_repair_restores_the_bytes(finished_job):
    """Damage a resume cannot see (it trusts a commit and reads no shard body): a PNG replaced by another
    valid PNG, a truncated Parquet file. verify names the two commits to delete; done, the re-run makes
    both shards again, byte for byte."""
    from novarch_batch.pipeline.verify import verify

    spec, _, job_dir = finished_job
    png, truncated = job_dir / shard_format.image_key(0, 3), job_dir / shard_format.shard_key(2)
    originals = {p: p.read_bytes() for p in (png, truncated, job_dir / shard_format.shard_key(0))}
    png.write_bytes((job_dir / shard_format.image_key(1, 13)).read_bytes())
    truncated.write_bytes(originals[truncated][: len(originals[truncated]) // 2])
    assert driver.run(spec).already_complete  # the resume does not read them: only verify finds them
    checked = verify(str(job_dir), full=True)
    assert not checked.ok and checked.damaged_shards == [0, 2], checked.problems
    assert checked.repair.startswith("delete _SUCCESS (if there) and the damaged shards' Parquet files "
                                     "(shards/part-00000.parquet, shards/part-00002.parquet), then re-run the same submit")
    for key in ("_SUCCESS", shard_format.shard_key(0), shard_format.shard_key(2)):  # the repair, as printed
        (job_dir / key).unlink()
    report = driver.run(spec)
    assert report.shards_sampled == 2 and report.complete
    assert {p: p.read_bytes() for p in originals} == originals
    assert verify(str(job_dir), full=True).ok


def test_an_edited_job_json_is_refused_by_every_reader_and_the_resume(finished_job):
    """Counts and checks all trust job.json: a spec edited by hand (count 24 -> 16, shard plan to match)
    no longer hashes to its spec_hash, and is refused as damaged instead of read as a smaller job."""
    from novarch_batch.pipeline.status import status
    from novarch_batch.pipeline.verify import verify
    from novarch_batch.storage import StorageError

    spec, _, job_dir = finished_job
    job_json = job_dir / "job.json"
    original = job_json.read_text()
    edited = json.loads(original)
    edited["spec"]["count"] = edited["shard_plan"]["count"] = 16
    edited["shard_plan"]["num_shards"] = 2
    job_json.write_text(json.dumps(edited))
    try:
        refusal = f"{job_dir}/job.json was edited or damaged (its spec, spec_hash and shard plan disagree); restore it from a copy"
        for read in (lambda: status(str(job_dir)), lambda: verify(str(job_dir)), lambda: driver.run(spec)):
            with pytest.raises(StorageError, match=re.escape(refusal)):
                read()
    finally:
        job_json.write_text(original)
    assert verify(str(job_dir)).ok


def test_a_lost_job_json_comes_back_with_the_shards_creation_time(finished_job):
    """job.json and a shard deleted: the readers say job.json is missing (not "no job here"); a re-run
    writes it again with the creation time read back from a shard, so the shard it samples again is
    byte-identical (a new created_at would change every row of it)."""
    from novarch_batch.pipeline.status import status
    from novarch_batch.storage import StorageError

    spec, _, job_dir = finished_job
    job_json, shard_file = job_dir / "job.json", job_dir / shard_format.shard_key(1)
    originals = {p: p.read_bytes() for p in (job_json, shard_file)}
    for p in (job_json, shard_file, job_dir / "_SUCCESS"):
        p.unlink()
    with pytest.raises(StorageError, match="job.json is missing, yet shards/ is not empty; restore it from a copy, or re-run"):
        status(str(job_dir))
    reused = build_spec(count=COUNT, out=str(job_dir.parent), steps=3, shard_size=10, batch_size=4, actors=2, seed=12, job_id=spec.job_id)
    with pytest.raises(SpecError, match="part-00000.parquet was sampled with another spec"):  # a reused --job-id adopts nothing
        driver.run(reused)
    report = driver.run(spec)
    assert report.shards_sampled == 1 and report.complete
    assert shard_file.read_bytes() == originals[shard_file]
    assert json.loads(job_json.read_text())["created_at"] == json.loads(originals[job_json])["created_at"]


def test_a_stray_shard_past_the_plan_is_not_read_for_a_lost_job_json(finished_job, tmp_path):
    """job.json gone and only a shard past the plan there (a copy, another job's file): it is a stray, so
    the job starts anew instead of failing with an IndexError from the shard arithmetic."""
    from novarch_batch.pipeline import manifest
    from novarch_batch.storage import LocalStorage

    spec, _, job_dir = finished_job
    stray = tmp_path / "job" / shard_format.shard_key(99999)
    stray.parent.mkdir(parents=True)
    stray.write_bytes((job_dir / shard_format.shard_key(0)).read_bytes())
    created_at = manifest.prepare_job(LocalStorage(tmp_path / "job"), spec, {99999})
    assert json.loads((tmp_path / "job" / "job.json").read_text())["created_at"] == created_at


def test_a_lost_tar_is_made_again_when_the_job_resumes(ray_local, tmp_path):
    from novarch_batch.pipeline.status import status

    spec = build_spec(count=6, out=str(tmp_path), steps=1, shard_size=3, batch_size=3, actors=1, format="webdataset")
    driver.run(spec)
    job_dir = tmp_path / spec.job_id
    tar = job_dir / shard_format.tar_key(0)
    original = tar.read_bytes()
    tar.unlink()
    (job_dir / "_SUCCESS").unlink()  # an unfinished job whose committed shard 0 lost its tar
    assert status(str(job_dir)).images_committed == 3 and status(str(job_dir)).shards_missing_images == 1
    report = driver.run(spec)
    assert report.shards_sampled == 1 and report.shards_skipped == 1
    assert tar.read_bytes() == original


def test_same_samples_across_batch_shard_and_worker_layout(finished_job, tmp_path):
    """Different batch size, shard size and worker count: each image within 1 level of 255."""
    spec, _, job_dir = finished_job
    other = build_spec(count=COUNT, out=str(tmp_path), steps=3, shard_size=7, batch_size=5, actors=1, seed=11)
    driver.run(other)
    a, b = read_job(job_dir), read_job(tmp_path / other.job_id)
    assert [r["seed"] for r in a] == [r["seed"] for r in b]
    for ra, rb in zip(a, b):
        pa_ = np.asarray(Image.open(job_dir / ra["image_key"]), dtype=np.int16)
        pb_ = np.asarray(Image.open(tmp_path / other.job_id / rb["image_key"]), dtype=np.int16)
        assert np.abs(pa_ - pb_).max() <= 1


def test_job_id_reused_with_another_spec_is_refused(finished_job, ray_local):
    spec, _, job_dir = finished_job
    clash = build_spec(count=COUNT, out=str(job_dir.parent), steps=4, job_id=spec.job_id)
    with pytest.raises(SpecError, match="with another spec"):
        driver.run(clash)


def test_job_begun_with_v1_is_refused_with_v2_and_finishes_with_v1(ray_local, tmp_path):
    """The model's sha256 is part of the job: a v1 job is never completed with v2 images."""
    options = dict(count=4, out=str(tmp_path), steps=2, shard_size=2, batch_size=2, actors=1, job_id="old")
    v1, v2 = build_spec(model="novarch-tiny-v1", **options), build_spec(**options)
    assert v1.model_sha256 != v2.model_sha256 and v1.spec_hash() != v2.spec_hash()
    driver.run(v1)
    job_dir = tmp_path / "old"
    lost = job_dir / shard_format.shard_key(1)
    original = lost.read_bytes()
    lost.unlink()  # an interrupted v1 job: one shard to go
    (job_dir / "_SUCCESS").unlink()
    with pytest.raises(SpecError, match="another model .* resume it with --model novarch-tiny-v1"):
        driver.run(v2)
    assert not lost.exists() and not (job_dir / "_SUCCESS").exists()  # nothing written
    assert driver.run(v1).images_sampled == 2 and lost.read_bytes() == original
    default_ids = {build_spec(count=4, out=str(tmp_path), model=m).job_id for m in ("novarch-tiny", "novarch-tiny-v1")}
    assert len(default_ids) == 2  # without --job-id, the two models' jobs never share a folder


def test_distilled_job_records_the_students_settings(ray_local, tmp_path):
    spec = build_spec(count=4, out=str(tmp_path), sampler="distilled", class_name="house", shard_size=4, batch_size=4, actors=1)
    assert driver.run(spec).complete
    rows = read_job(tmp_path / spec.job_id)
    assert [(r["sampler"], r["steps"], r["guidance"], r["model"]) for r in rows] == [("distilled", 4, 2.0, "novarch-tiny-distilled")] * 4


def test_embedded_images_job_writes_one_object_per_shard(ray_local, tmp_path):
    spec = build_spec(count=12, out=str(tmp_path), steps=2, shard_size=6, batch_size=6, actors=1, seed=2, format="parquet")
    driver.run(spec)
    job_dir = tmp_path / spec.job_id
    assert not (job_dir / "images").exists()
    rows = read_job(job_dir)
    assert [r["id"] for r in rows] == list(range(12))
    for r in rows:
        assert hashlib.sha256(r["image"]["bytes"]).hexdigest() == r["sha256"]
        assert Image.open(io.BytesIO(r["image"]["bytes"])).size == (32, 32)
        assert r["image_key"] == shard_format.embedded_key(r["shard"], r["id"])
    from novarch_batch.pipeline.verify import verify

    assert verify(str(job_dir), full=True).ok


def test_dry_run_prints_a_plan_and_writes_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).with_name("novarch-batch"))
    proc = subprocess.run([cli, "submit", "--count", "5000", "--steps", "2", "--out", str(tmp_path / "o" / "deeper"), "--dry-run", "--json"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["shards"] == "32 of 157 images" and plan["calibrated_images_per_second"] > 0 and plan["estimated_minutes"] > 0
    assert plan["network_evaluations_per_image"] == 2  # 2 steps, class any: no guidance pass
    assert not (tmp_path / "o").exists()


def test_a_compiled_jobs_dry_run_says_what_its_estimate_leaves_out(tmp_path):
    from novarch_batch.pipeline.estimate import estimate

    notes = {flag: estimate(build_spec(count=100, out=str(tmp_path), steps=1, compile=flag))["note"] for flag in (False, True)}
    assert "--compile" not in notes[False]
    assert "calibrated without --compile, which adds a compilation per actor and batch shape" in notes[True]


def test_evaluate_and_preview_a_small_job(finished_job, tmp_path):
    from click.testing import CliRunner

    from novarch_batch.pipeline.cli import cli

    _, _, job_dir = finished_job
    result = CliRunner().invoke(cli, ["evaluate", str(job_dir), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)  # one object; the small-sample note goes to stderr
    assert result.stderr.startswith(f"note: {COUNT} images; below 1,000 the Fréchet distances and their floors swing widely")
    assert metrics["count"] == COUNT and metrics["requested_class"] == "any"
    assert 0 <= metrics["purity"] <= 1 and set(metrics["balance"]) == {"building", "house"}
    assert metrics["fd"] > 0 and metrics["fd_floor"] > 0 and len(metrics["nearest_train_l2"]) == 8
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(cli, ["preview", str(job_dir), "--out", str(grid), "--cols", "8"])
    assert result.exit_code == 0, result.output
    sheet = Image.open(grid)
    assert sheet.width >= 8 * 32 and sheet.height >= 3 * 32  # 24 images in rows of 8


def test_model_commands_refuse_bad_input_and_damage_in_one_line(finished_job, tmp_path):
    import shutil

    from click.testing import CliRunner

    from novarch_batch.pipeline.cli import cli

    _, _, job_dir = finished_job
    for args, code, message in [(["preview", str(job_dir), "--out", str(tmp_path / "grid")], 2, "must name a .png file"),
                                (["preview", str(job_dir), "--count", "0"], 2, "0 is not in the range x>=1"),
                                (["explain", "--out", str(tmp_path / "job.json" / "x.png")], 2, "is not a writable folder"),
                                (["preview", str(job_dir), "--out", str(tmp_path / "sheets.png")], 2, "sheets.png' is a folder; name a .png file")]:
        if "job.json" in args[-1]:
            (tmp_path / "job.json").write_text("{}")  # a file where a folder would be
        (tmp_path / "sheets.png").mkdir(exist_ok=True)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == code and message in result.output, result.output
    damaged = tmp_path / "damaged"
    shutil.copytree(job_dir, damaged)
    (damaged / shard_format.image_key(0, 3)).write_bytes(b"junk")
    for command in (["evaluate", str(damaged)], ["preview", str(damaged), "--out", str(tmp_path / "g.png")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1 and "000000003.png: not a readable image" in result.output, result.output
    # A shard that is no Parquet file, or an image gone from storage: named, with the command that says more.
    shutil.rmtree(damaged)
    shutil.copytree(job_dir, damaged)
    (damaged / shard_format.image_key(1, 12)).unlink()
    (damaged / shard_format.shard_key(0)).write_bytes(b"not parquet")
    expected = f"{damaged}/shards/part-00000.parquet: not readable as Parquet"
    for missing_too in (False, True):
        if missing_too:
            (damaged / shard_format.shard_key(0)).unlink()  # the next shard's lost image is met first now
            expected = f"{damaged}/images/00001/000000012.png: not found"
        for command in (["evaluate", str(damaged)], ["preview", str(damaged), "--out", str(tmp_path / "g.png")]):
            result = CliRunner().invoke(cli, command)
            assert result.exit_code == 1 and expected in result.output and f"novarch-batch verify {damaged}` says" in result.output, result.output
    assert [p.name for p in tmp_path.glob("*.png")] == ["sheets.png"]  # the folder made above; no picture written


def test_the_printed_look_and_read_commands_run_as_pasted_from_a_path_with_spaces(finished_job, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from novarch_batch.pipeline.cli import next_steps

    _, _, job_dir = finished_job
    job = tmp_path / "my data" / "it's here"
    shutil.copytree(job_dir, job)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for what, command in next_steps(str(job)):
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert done.returncode == 0, f"{what}: {command}\n{done.stderr}"
    assert (tmp_path / "grid.png").is_file()
    assert "[5 rows x" in done.stdout  # the read command printed the table's head
