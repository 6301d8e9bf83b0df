"""Submit through the Ray Jobs API to a real Ray head started on loopback, writing to the session's S3.

The head plays a cluster node: it has the S3 keys of its own (an instance role) but not the
endpoint, which must travel with the job from the laptop; the laptop's keys never travel. It
registers one GPU that the actors do not really use (NOVARCH_FORCE_DEVICE=cpu), so the GPU path
of the spec runs here too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from novarch_batch.pipeline.verify import verify
from novarch_batch.storage import open_storage
from tests.procs import wait_for
from tests.ray_head import free_port, job_counters, ray_head

CLI = str(Path(sys.executable).with_name("novarch-batch"))


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """Where the head serves its Prometheus metrics, as a cluster's Prometheus would scrape them."""
    return free_port()


@pytest.fixture(scope="module")
def head(s3_server, metrics_port):
    s3 = s3_server.env()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(AWS_ACCESS_KEY_ID=s3["AWS_ACCESS_KEY_ID"], AWS_SECRET_ACCESS_KEY=s3["AWS_SECRET_ACCESS_KEY"],
               AWS_EC2_METADATA_DISABLED="true", NOVARCH_FORCE_DEVICE="cpu")
    with ray_head(env, num_cpus=2, num_gpus=1, metrics_port=metrics_port) as address:
        yield address


@pytest.fixture
def laptop_env(s3_server, monkeypatch) -> dict[str, str]:
    """The laptop: the store's endpoint and its own keys (which must not reach the cluster)."""
    env = {**os.environ, **s3_server.env()}
    env.pop("RAY_AUTH_MODE", None)  # the CLI turns token mode on itself when the token is at hand
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)  # for verify() and reads in this process
    return env


def run_cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_submit_wait_and_verify(head, metrics_port, laptop_env, s3_url, s3_server):
    laptop_env = {**laptop_env, "NOVARCH_RETRY_DELAY_S": "0.25"}  # a setting of the driver's: it travels, as the endpoint does
    done = run_cli(laptop_env, "submit", "--count", "24", "--steps", "2", "--shard-size", "8", "--out", s3_url, "--cluster", head, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the job driver's --json line, streamed from its log
    assert summary["complete"] and summary["images_sampled"] == 24
    assert summary["actors"] == "1 GPU actor(s), one GPU each"
    result = verify(summary["url"], full=True)
    assert result.ok and result.rows == 24, result.problems
    expected = {"ray_novarch_images_total": 24.0, "ray_novarch_shards_committed_total": 3.0}  # no retry, no preemption: not counted
    wait_for(lambda: job_counters(metrics_port, summary["job_id"]) == expected, 30, f"the head's Prometheus metrics to read {expected}")

    listing = run_cli(laptop_env, "jobs", "list", "--cluster", head)
    assert listing.returncode == 0 and "SUCCEEDED" in listing.stdout
    submission = listing.stdout.split()[0]
    status = run_cli(laptop_env, "jobs", "status", submission, "--cluster", head)
    assert status.stdout.startswith(f"{submission}: SUCCEEDED")
    logs = run_cli(laptop_env, "jobs", "logs", submission, "--cluster", head)
    assert '"complete": true' in logs.stdout
    assert_endpoint_travelled_and_keys_did_not(head, submission, laptop_env, s3_server)


def assert_endpoint_travelled_and_keys_did_not(head: str, submission: str, laptop_env: dict, s3_server) -> None:
    """What the cluster was given (asked in a process of its own: Ray reads RAY_AUTH_MODE when imported).
    The head has S3 keys but no endpoint, so the job above succeeded only because the endpoint travelled."""
    ask = ("import json, sys; from ray.job_submission import JobSubmissionClient as C; "
           "i = C(sys.argv[1]).get_job_info(sys.argv[2]); print(json.dumps({'runtime_env': i.runtime_env, 'entrypoint': i.entrypoint}))")
    info = subprocess.run([sys.executable, "-c", ask, head, submission], capture_output=True, text=True, timeout=60,
                          env={**laptop_env, "RAY_AUTH_MODE": "token"})
    assert info.returncode == 0, info.stderr
    given = json.loads(info.stdout)
    assert given["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] == s3_server.env()["AWS_ENDPOINT_URL"]
    assert given["runtime_env"]["env_vars"]["NOVARCH_RETRY_DELAY_S"] == laptop_env["NOVARCH_RETRY_DELAY_S"]
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in info.stdout and "AWS_ACCESS_KEY_ID" not in info.stdout
    assert given["entrypoint"].startswith("python -m novarch_batch.pipeline.cli run-spec ")


def test_submit_returns_at_once_and_a_resubmit_resumes(head, laptop_env, s3_url):
    first = run_cli(laptop_env, "submit", "--count", "16", "--steps", "2", "--out", s3_url, "--cluster", head, "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["output"] == f"{s3_url}/{info['job_id']}"
    logs = run_cli(laptop_env, "jobs", "logs", info["submission_id"], "--follow", "--cluster", head)
    assert logs.returncode == 0, logs.stdout
    assert '"images_sampled": 16' in logs.stdout  # streamed from the job's log
    again = run_cli(laptop_env, "submit", "--count", "16", "--steps", "2", "--out", s3_url, "--cluster", head, "--wait")
    assert again.returncode == 0
    assert json.loads(again.stdout.strip().splitlines()[-1])["images_sampled"] == 0
    follow = next(line.split("follow: novarch-batch ", 1)[1] for line in again.stderr.splitlines() if "follow: " in line)
    assert follow.split()[:2] == ["jobs", "logs"] and "--follow" in follow.split()  # streams, not one download
    followed = run_cli(laptop_env, *follow.split())  # the command the laptop printed, as a user pastes it
    assert followed.returncode == 0 and '"images_sampled": 0' in followed.stdout, followed.stdout + followed.stderr


@pytest.mark.parametrize("flags,message", [
    (["--out", "./local-out"], "a local folder is on this machine, not on the cluster's nodes; use --out s3://BUCKET/PREFIX"),
    (["--out", "s3://novarch/x", "--model", "MODEL"], "a local folder does not reach the cluster; upload it"),
])
def test_what_cannot_reach_the_cluster_is_refused_on_the_laptop(flags, message, laptop_env, tmp_path, model_dir):
    flags = [str(model_dir) if f == "MODEL" else f for f in flags]
    done = subprocess.run([CLI, "submit", "--count", "4", *flags, "--cluster", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120, env=laptop_env, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_unreachable_cluster_is_one_line(laptop_env):
    # scheme-less HOST:PORT is the Jobs API over http (Ray's client alone would wait ~40 s for a GCS there)
    done = run_cli(laptop_env, "submit", "--count", "4", "--out", "s3://novarch/x", "--cluster", f"127.0.0.1:{free_port()}", timeout=90)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("novarch-batch: error: --cluster http://127.0.0.1:")


def test_every_spec_field_reaches_the_head_unchanged(head, laptop_env, s3_url):
    """The head runs the spec validated on the laptop, whole: each field set to a non-default value
    comes back from the job.json the head's driver wrote."""
    from dataclasses import fields

    from novarch_batch.pipeline.spec import build_spec
    from novarch_batch.workers.spec import JobSpec, OutputConfig, RunConfig, SamplingConfig

    options = dict(class_name="house", sampler="ddim", steps=2, guidance=2.5, guidance_interval="900-999", final_timestep=300, spacing="trailing", eta=0.5, seed=7, out=s3_url, shard_size=4,
                   format="parquet", gpus=1, actors_per_gpu=2, batch_size=4, placement_timeout=120.0, device="cuda",
                   encode_processes=2, exclusive="every-field")
    # ray_address: a job on the cluster joins the head's own Ray; actors: CPU actors only, refused
    # beside --gpus; compile: a 25 s compilation per actor on this CPU (tests/test_samplers.py
    # compiles; tests/test_spec.py round-trips every field through JSON).
    untouched = {"ray_address", "actors", "compile"}
    for config in (SamplingConfig, OutputConfig, RunConfig):
        for f in fields(config):
            assert f.name in options or f.name in untouched, f"set --{f.name} here to prove it reaches the head"
            assert f.name in untouched or options[f.name] != f.default
    laptop = build_spec(count=8, job_id="every-field", **options)
    flags = ["--count", "8", "--job-id", "every-field", "--class", "house", "--sampler", "ddim", "--steps", "2", "--guidance", "2.5",
             "--guidance-interval", "900-999", "--final-timestep", "300", "--spacing", "trailing", "--eta", "0.5", "--seed", "7", "--out", s3_url, "--shard-size", "4", "--format", "parquet", "--gpus", "1",
             "--actors-per-gpu", "2", "--batch-size", "4", "--placement-timeout", "120", "--device", "cuda", "--encode-processes", "2",
             "--exclusive", "every-field"]
    done = run_cli(laptop_env, "submit", *flags, "--cluster", head, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["actors"] == "2 GPU actor(s), 2 per GPU"
    job = json.loads(open_storage(f"{s3_url}/every-field").get_bytes("job.json"))
    assert JobSpec.from_dict(job["spec"]) == laptop
    assert job["spec_hash"] == laptop.spec_hash()


def test_an_unknown_submission_or_a_bad_address_is_one_line(head, laptop_env):
    # A RAY_ADDRESS in the shell (here a dead one) does not take over --cluster, as it would in Ray's client
    elsewhere = {**laptop_env, "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}"}
    for args in (["status", "nosuch"], ["logs", "nosuch", "--follow"]):  # logs and stop ask as status does (cli._ask)
        done = run_cli(elsewhere, "jobs", *args, "--cluster", head, timeout=60)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == (f"novarch-batch: error: no submission nosuch on {head}; "
                                       f"`novarch-batch jobs list --cluster {head}` lists them")
    done = run_cli(laptop_env, "jobs", "list", "--cluster", "ftp://head:8265", timeout=60)
    assert done.returncode == 2 and "is not a Ray Jobs API address; use the dashboard's, http://HEAD:8265" in done.stderr
