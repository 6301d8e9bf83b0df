"""Faults with real processes killed: no image lost, none duplicated (docs/faults.md)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from novarch_batch.pipeline import driver
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.pipeline.verify import verify
from tests.procs import pids_with_title, sigkill, wait_for
from tests.ray_head import job_counters
from novarch_batch.workers.tasks import FAULT_ENV

CLI = str(Path(sys.executable).with_name("novarch-batch"))


def ids_and_hashes(job_dir: Path) -> dict[int, str]:
    table = ds.dataset(str(job_dir / "shards"), format="parquet").to_table(columns=["id", "sha256"])
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids"
    return dict(zip(ids, table.column("sha256").to_pylist()))


def run_in_thread(spec):
    outcome: dict = {}

    def target():
        try:
            outcome["report"] = driver.run(spec)
        except BaseException as e:  # surfaced by the test's assertion
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_actor_killed_mid_shard_is_replaced(ray_local, tmp_path):
    spec = build_spec(count=48, out=str(tmp_path), steps=6, shard_size=8, batch_size=2, actors=2, seed=5)
    thread, outcome = run_in_thread(spec)
    images = tmp_path / spec.job_id / "images"
    # Mid-shard: an actor is inside run_shard and has stored part of its shard's images.
    wait_for(lambda: images.exists() and any(images.rglob("*.png")), 120, "the first stored image")
    victim = wait_for(lambda: pids_with_title("ray::ShardActor.run_shard"), 30, "a busy actor")[0]
    sigkill(victim)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.actors_replaced >= 1 and report.preemptions >= 1
    assert report.retries == 0  # a lost actor is not the shard's fault: no attempt used
    assert any("lost with its actor" in e for e in report.errors)
    assert len(report.recovery_seconds) >= 1
    print(f"actor kill: recovered in {report.recovery_seconds} s")
    assert sorted(ids_and_hashes(tmp_path / spec.job_id)) == list(range(48))
    assert verify(str(tmp_path / spec.job_id), full=True).ok


def test_failing_shard_stops_job_and_rerun_resumes(ray_local, tmp_path, monkeypatch):
    spec = build_spec(count=40, out=str(tmp_path), steps=2, shard_size=8, batch_size=8, actors=2, seed=9)
    monkeypatch.setenv(FAULT_ENV, "2")
    monkeypatch.setenv("NOVARCH_RETRY_DELAY_S", "0.2")  # the retries' back-off, not its length, is what is tested
    with pytest.raises(driver.JobFailed, match=r"shard 2 \(ids 16-23\) attempt 3/3 failed: RuntimeError: fault injected.*gave up after 3 attempts"):
        driver.run(spec)
    job_dir = tmp_path / spec.job_id
    committed = {p.name for p in (job_dir / "shards").iterdir()}
    assert committed == {f"part-{k:05d}.parquet" for k in (0, 1, 3, 4)}  # the others finished and committed
    assert not (job_dir / "_SUCCESS").exists()
    monkeypatch.delenv(FAULT_ENV)
    report = driver.run(spec)
    assert report.shards_sampled == 5 - len(committed) and report.shards_skipped == len(committed)
    assert verify(str(job_dir), full=True).ok
    # Prometheus sees both runs of the job added up: shard 2's two retries, then every image once.
    metrics_port = ray_local.nodes()[0]["MetricsExportPort"]
    expected = {"ray_novarch_images_total": 40.0, "ray_novarch_shards_committed_total": 5.0, "ray_novarch_shard_retries_total": 2.0}
    wait_for(lambda: job_counters(metrics_port, spec.job_id) == expected, 30, f"the local Ray's metrics to read {expected}")


def submit_cmd(out: Path, *extra: str) -> list[str]:
    return [CLI, "submit", "--count", "48", "--steps", "4", "--shard-size", "8", "--batch-size", "4",
            "--actors", "2", "--seed", "21", "--out", str(out), "--json", *extra]


def test_driver_killed_then_rerun_resumes_identically(tmp_path):
    """SIGKILL the driver process mid-job; the same command resumes and matches an uninterrupted run."""
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(submit_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        shards = lambda: list(out.glob("*/shards/*.parquet"))
        wait_for(lambda: len(shards()) >= 2, 240, "two committed shards", interval=0.02)
        sigkill(proc.pid)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(list(out.glob("*/shards/*.parquet")))
    assert done_before < 6, "the driver finished before it could be killed"
    resumed = subprocess.run(submit_cmd(out), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["shards_skipped"] >= done_before and report["shards_sampled"] == 6 - report["shards_skipped"]
    reference = build_spec(count=48, out=str(tmp_path / "clean"), steps=4, shard_size=8, batch_size=4, actors=2, seed=21)
    driver.run(reference)
    job = next(out.iterdir())
    assert ids_and_hashes(job) == ids_and_hashes(tmp_path / "clean" / reference.job_id)
    assert verify(str(job), full=True).ok


@pytest.mark.parametrize("moment, stop", [("before Ray runs", "SIGTERM"), ("while Ray starts", "SIGTERM"),
                                         ("while shards sample", "SIGTERM"), ("while shards sample", "Ctrl-C")])
def test_sigterm_or_ctrl_c_stops_the_driver_in_one_line(moment, stop, tmp_path):
    """kill, docker stop, a scheduler: one line and exit 143, the job's lease released, no crash report,
    whenever it comes. (Before Ray ran, Python's default killed the driver with its lease held; while Ray
    started, Ray's own handler exited 15 without a word, or aborted with a crash report, 134; while the
    driver waited on its actors, Ray's wait turned SIGTERM into a plain KeyboardInterrupt: exit 130.)
    Ctrl-C as a terminal sends it, SIGINT to the whole process group (the local Ray it started too): exit
    130 and the same line (the interpreter's finalisation after its Ray died with it segfaulted now and
    then, -11 after the line, in 3 of 24 Ctrl-Cs at random moments under load)."""
    out = tmp_path / "stopped"
    proc = subprocess.Popen(submit_cmd(out, "--steps", "20"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True)
    try:
        if moment == "before Ray runs":
            assert proc.stderr.readline().startswith("job novarch-")  # printed before Ray starts
        elif moment == "while Ray starts":
            wait_for(lambda: list(out.glob("*/_LEASE")), 120, "the job's lease", interval=0.02)  # then Ray starts
        else:
            wait_for(lambda: list(out.glob("*/shards/*.parquet")), 240, "a committed shard", interval=0.02)
            time.sleep(0.5)  # the driver is back in ray.wait for the next shard (each takes a second or more at 20 steps)
        if stop == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    code, word = (130, "interrupted") if stop == "Ctrl-C" else (143, "terminated")
    assert proc.returncode == code, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"novarch-batch: error: {word}; committed shards are kept, run the same command to resume"
    assert "SIGTERM received" not in stderr
    assert not list(out.glob("*/_LEASE*"))  # released on the way out: a re-run need not wait for it to go stale


SIGTERM_AS_THE_CORE_WORKER_STARTS = """
import os, signal, sys
import ray._private.worker as worker
original = worker.connect
def connect(*args, **kwargs):  # the driver's core worker now exists; ray.init has not returned
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return result
worker.connect = connect
from novarch_batch.pipeline.cli import main
sys.argv = ["novarch-batch", "submit", "--count", "8", "--steps", "1", "--out", sys.argv[1]]
main()
"""


def test_sigterm_as_rays_core_worker_starts_prints_no_crash_dump(tmp_path):
    """The narrowest window of ray.init, hit every time: the driver's core worker had installed Ray's C++
    failure-signal handler, which took the signal with a crash dump ('*** SIGTERM received ...') and
    now and then aborted the process at exit (-6) after the terminated line."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", SIGTERM_AS_THE_CORE_WORKER_STARTS, str(out)], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 143, done.stderr[-2000:]
    assert "SIGTERM received" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("novarch-batch: error: terminated; committed shards are kept, "
                                                    "run the same command to resume")
    assert not list(out.glob("*/_LEASE*"))


def test_an_error_while_sigterm_unwinds_the_driver_does_not_hide_it(tmp_path, monkeypatch):
    """Cleanup that fails because the signal cut something short (a thread stopped inside its start, say)
    is not the news: still exit 143 and the resume line, not exit 1 and the cleanup's error."""
    from click.testing import CliRunner

    from novarch_batch.pipeline.cli import cli

    def run(spec, progress=None):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        finally:
            raise RuntimeError("cannot join thread before it is started")

    released = []
    monkeypatch.setattr(driver, "run", run)
    monkeypatch.setattr(driver, "release", lambda: released.append(True))  # the test process's own Ray stays up
    monkeypatch.delenv("NOVARCH_DEBUG", raising=False)
    result = CliRunner().invoke(cli, ["submit", "--count", "8", "--out", str(tmp_path / "out")])
    assert result.exit_code == 143, result.output
    assert released == [True]  # Ray shut down before the exit
    assert result.output.strip().splitlines()[-1] == ("novarch-batch: error: terminated; committed shards are kept, "
                                                      "run the same command to resume")


def test_second_driver_on_a_running_job_refuses(ray_local, tmp_path):
    spec = build_spec(count=48, out=str(tmp_path), steps=6, shard_size=8, batch_size=4, actors=1, seed=33)
    thread, outcome = run_in_thread(spec)
    wait_for(lambda: (tmp_path / spec.job_id / "_LEASE").exists(), 60, "the first driver's lease")
    second = subprocess.run(([CLI, "submit", "--count", "48", "--steps", "6", "--shard-size", "8",
                            "--batch-size", "4", "--seed", "33", "--out", str(tmp_path)]), capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    error = second.stderr.strip().splitlines()[-1]  # after the one-line job announcement
    assert error.startswith("novarch-batch: error: ") and "is being run by another driver" in error
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert verify(str(tmp_path / spec.job_id), full=True).ok


def test_unplaceable_actors_fail_at_the_deadline(ray_local, tmp_path):
    """GPU actors on a cluster with no GPU and no known autoscaler wait --placement-timeout, then the
    job fails naming what the actors asked for."""
    spec = build_spec(count=8, out=str(tmp_path), steps=1, gpus=1, placement_timeout=5)
    started = time.monotonic()
    with pytest.raises(driver.JobFailed, match=r"no sampler actor became ready within 5 s \(each asks for \{GPU: 1, CPU: 1\}; "
                                               r"the cluster had 0 GPU\(s\) and its autoscaler could add 0: add a GPU node type"):
        driver.run(spec)
    assert time.monotonic() - started < 60
    assert not (tmp_path / spec.job_id / "shards").exists()


def test_device_cuda_without_a_gpu_to_be_had_is_refused_with_nothing_written(ray_local, tmp_path):
    from novarch_batch.pipeline.cluster import ClusterRefusal

    spec = build_spec(count=8, out=str(tmp_path), steps=1, device="cuda")
    with pytest.raises(ClusterRefusal, match="--device cuda, but the Ray cluster has no GPU and no autoscaler that can add one"):
        driver.run(spec)
    assert list(tmp_path.iterdir()) == []  # planned before the job's files: not even its folder


def test_changed_model_weights_fail_the_actors_start(ray_local, tmp_path, model_dir):
    """The weights changed after the job was planned: every actor refuses them at start-up, and after
    a bounded number of replacements the job fails with the actor's own error."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    spec = build_spec(count=8, out=str(tmp_path / "out"), steps=1, actors=1, model=str(folder))
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(driver.JobFailed, match=r"sampler actors failed to start 3 times; the last said: .*ModelIntegrityError"):
        driver.run(spec)
