"""Bad input: one line naming the fix, exit 2, nothing written, no Ray started."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from novarch_batch.pipeline.cli import cli, main

CASES = [
    (["--count", "0"], "--count must be a positive integer, got 0"),
    (["--count", "-1"], "--count must be a positive integer, got -1"),
    (["--count", "ten"], "--count must be a positive integer, got 'ten'"),
    (["--count", str(10**12)], "--count must be at most 100,000,000"),
    (["--count", "8", "--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--count", "8", "--steps", "5000"], "--steps must be at most 1000"),
    (["--count", "8", "--class", "castle"], "--class must be one of building, house, any (the model's classes), got 'castle'"),
    (["--count", "8", "--sampler", "euler"], "'euler' is not one of 'ddpm', 'ddim', 'dpmpp-2m'"),
    (["--count", "8", "--guidance", "-1"], "--guidance must be a number >= 0"),
    (["--count", "8", "--shard-size", "0"], "--shard-size must be a positive integer, got 0"),
    (["--count", "8", "--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
    (["--count", "8", "--actors", "0"], "--actors must be a positive integer, got 0"),
    (["--count", "8", "--sampler", "ddpm", "--eta", "0.5"], "--eta is used by --sampler ddim only, not ddpm"),
    (["--count", "8", "--job-id", "../escape"], "--job-id must be 1-128 letters"),
    (["--count", "8", "--out", "gs://bucket/x"], "unknown scheme 'gs://'"),
    (["--count", "8", "--out", "s3://"], "no bucket"),
    (["--count", "8", "--out", "s3://Bad_Bucket!/x"], "'Bad_Bucket!' is not a bucket name"),
    (["--count", "8", "--out", "file://relative"], "a file URL names an absolute path, file:///PATH (three slashes)"),
    (["--count", "8", "--cluster", "notaurl"], "'notaurl' is not a Ray Jobs API address; use the dashboard's, http://HEAD:8265"),
    (["--count", "8", "--cluster", "head:port"], "'head:port' is not a Ray Jobs API address; use the dashboard's, http://HEAD:8265"),
    (["--count", "8", "--cluster", "http://head:port"], "'http://head:port' is not a Ray Jobs API address"),
    (["--count", "8", "--cluster", "::1:8265"], "'::1:8265': an IPv6 address takes brackets, http://[::1]:8265"),
]


def test_only_scheme_slash_slash_makes_a_url(tmp_path):
    """A folder may hold ':' and '#'; a file URL is percent-decoded and never loses a '#' part."""
    from novarch_batch.storage import local_path

    assert local_path("runs/night-T10:00") == "runs/night-T10:00"
    assert local_path("runs/a#b") == "runs/a#b"
    assert local_path("file:///data/my%20jobs/a#b") == "/data/my jobs/a#b"
    assert local_path("file://localhost/data") == "/data"
    assert local_path("s3://bucket/prefix") is None


def run_cli(args: list[str], monkeypatch, cwd: Path, command: str = "submit"):
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["novarch-batch", command, *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    code = run_cli(args + ([] if "--out" in args else ["--out", str(tmp_path / "out")]), monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("novarch-batch: error: ")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the --out folder


TRAINING_CASES = [
    (["train", "--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0."),
    (["train", "--batch-size", "100000000"], "Invalid value for '--batch-size': 100000000 is not in the range 1<=x<=16384."),
    (["train", "--lr", "-1"], "Invalid value for '--lr': -1.0 is not in the range x>0."),
    (["train", "--device", "foo"], "Invalid value for '--device': 'foo': use cpu or cuda (cuda:N for another GPU)"),
    (["train", "--prediction-type", "epsilon"], "--zero-terminal-snr needs --prediction-type v_prediction, or pass --no-zero-terminal-snr"),
    (["train", "--ckpt-dir", "a-file/ckpt"], "Invalid value for '--ckpt-dir': cannot create a-file/ckpt:"),
    (["train", "--out", "a-file"], "Invalid value for '--out': a-file is a file; name a folder"),
    (["train", "--init-from", "nosuch"], "Invalid value for '--init-from': nosuch is not a folder; pass a model folder or a shipped name"),
    (["distill", "--teacher", "nosuch"], "Invalid value for '--teacher': nosuch is not a folder; pass a model folder or a shipped name"),
    (["distill", "--teacher", "novarch-tiny-v1"], "predicts epsilon; progressive distillation needs a v-prediction teacher"),
    (["distill", "--teacher", "novarch-tiny", "--start-steps", "12"], "--start-steps must be --final-steps times a power of two"),
]


@pytest.mark.parametrize("args,message", TRAINING_CASES, ids=[" ".join(a) for a, _ in TRAINING_CASES])
def test_train_and_distill_refuse_bad_input_in_one_line_before_writing(args, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")
    code = run_cli([*args[1:], *([] if "--out" in args else ["--out", "model"])], monkeypatch, tmp_path, command=args[0])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no model folder, no log


@pytest.mark.parametrize("value,where", [("soon", "local"), ("-1", "local"), ("nan", "local"), ("soon", "cluster")])
def test_bad_retry_delay_in_the_environment_exits_2_before_anything_is_written(value, where, tmp_path, monkeypatch, capsys):
    """It travels with a --cluster submission (pipeline/jobs.py), so the laptop refuses it too, before any contact."""
    monkeypatch.setenv("NOVARCH_RETRY_DELAY_S", value)
    out = ["--out", str(tmp_path / "out")] if where == "local" else ["--out", "s3://novarch/x", "--cluster", "http://127.0.0.1:9"]
    code = run_cli(["--count", "8", *out], monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"novarch-batch: error: NOVARCH_RETRY_DELAY_S={value!r} is not a number of seconds: "
                           "set it to one (0 or more) or unset it (the default is 5)")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file instead
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        target = blocker / "out"
    else:
        target = locked / "out"
    code = run_cli(["--count", "8", "--out", str(target)], monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert "choose another --out" in err or "choose a folder you can write to" in err, err
    assert not target.exists()


def test_an_out_that_permissions_allow_but_the_system_refuses(tmp_path, monkeypatch, capsys):
    """As root, os.access lets /proc pass; a folder really made (and removed) there is refused up front."""
    from novarch_batch.storage import local

    monkeypatch.setattr(local.os, "access", lambda *args: True)  # root's view, whoever runs the test
    code = run_cli(["--count", "8", "--out", "/proc/novarch-nope/x"], monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("novarch-batch: error: --out /proc/novarch-nope/x: cannot create a folder in /proc "
                                         "(No such file or directory); choose a folder you can write to")
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize("kind", ["missing", "corrupt", "pickle", "empty"])
def test_bad_model_folder(kind, tmp_path, monkeypatch, capsys, model_dir):
    folder = tmp_path / "model"
    if kind == "empty":
        folder.mkdir()
    elif kind != "missing":
        folder.mkdir()
        for name in ("config.json", "scheduler_config.json"):
            (folder / name).write_bytes((model_dir / name).read_bytes())
        if kind == "corrupt":
            (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00not a header at all")
        else:
            (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    out = tmp_path / "out"
    code = run_cli(["--count", "8", "--model", str(folder), "--out", str(out)], monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    expected = {"missing": "no such folder", "corrupt": "not a valid safetensors file", "pickle": "pickle checkpoint, which is refused",
                "empty": "missing config.json, diffusion_pytorch_model.safetensors, scheduler_config.json"}[kind]
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_console_script_exit_code_and_no_ray(tmp_path):
    """The installed console script itself: exit 2 before Ray could start (no Ray session folder)."""
    script = Path(sys.executable).with_name("novarch-batch")
    proc = subprocess.run([str(script), "submit", "--count", "ten", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "novarch-batch: error: --count must be a positive integer, got 'ten'"
    assert not (tmp_path / "o").exists()


def test_help_explains_every_flag():
    result = CliRunner().invoke(cli, ["submit", "--help"])
    assert result.exit_code == 0
    for flag in ("--count", "--out", "--class", "--sampler", "--steps", "--guidance", "--seed", "--shard-size",
                 "--batch-size", "--actors", "--job-id", "--ray-address", "--json", "--model"):
        assert flag in result.output


def test_a_commands_own_refusal_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """A job interrupted before its first shard: `preview` has nothing to show, and says so in one line."""
    from novarch_batch.pipeline import manifest
    from novarch_batch.pipeline.spec import build_spec
    from novarch_batch.storage import LocalStorage

    spec = build_spec(count=8, out=str(tmp_path))
    manifest.prepare_job(LocalStorage(tmp_path / spec.job_id), spec)
    monkeypatch.setattr(sys, "argv", ["novarch-batch", "preview", str(tmp_path / spec.job_id), "--out", str(tmp_path / "g.png")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert err.strip() == f"novarch-batch: error: {tmp_path / spec.job_id}: no committed shards yet; wait for the job or re-run it"


@pytest.mark.parametrize("change,message", [
    ({"job_id": "../../escape"}, "job_id must be 1-128 letters"),
    ({"count": 0}, "--count must be a positive integer, got 0"),
    ({"sampling": {"class_name": "cat"}}, "--class must be one of building, house, any"),
    ({"sampling": {"steps": -3}}, "--steps must be a positive integer, got -3"),
    (None, "run-spec: not a JobSpec"),
], ids=["job id outside --out", "count 0", "unknown class", "negative steps", "not an object"])
def test_run_spec_checks_what_submit_checks(change, message, tmp_path, monkeypatch, capsys):
    """What a cluster's head runs gets submit's checks too: a spec that did not come from submit runs nothing."""
    import json

    from novarch_batch.pipeline.spec import build_spec

    document = build_spec(count=8, out=str(tmp_path / "out"), steps=1).to_dict()
    for key, value in (change or {}).items():
        document[key] = {**document[key], **value} if isinstance(value, dict) else value
    code = run_cli([json.dumps(document if change else [])], monkeypatch, tmp_path, command="run-spec")
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "escape").exists()


def test_storage_serve_refuses_a_bad_bucket_name_before_starting(tmp_path, monkeypatch, capsys):
    code = run_cli(["serve", "--dir", "s3", "--bucket", "Bad_Bucket!"], monkeypatch, tmp_path, command="storage")
    err = capsys.readouterr().err
    assert code == 2 and "'Bad_Bucket!' is not an S3 bucket name: 3-63 lowercase letters" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_run_spec_refuses_a_student_sampled_otherwise_and_a_plan_of_too_many_shards(tmp_path, monkeypatch, capsys):
    import json

    from novarch_batch.pipeline.spec import MAX_SHARDS, build_spec

    student = build_spec(count=8, out=str(tmp_path / "out"), sampler="distilled").to_dict()
    student["sampling"]["steps"] = 8
    plan = build_spec(count=MAX_SHARDS + 1, out=str(tmp_path / "out"), shard_size=10).to_dict()
    plan["output"]["shard_size"] = 1
    for document, message in ((student, "the distilled student samples with --steps 4 only"), (plan, f"makes more than {MAX_SHARDS:,} shards")):
        code = run_cli([json.dumps(document)], monkeypatch, tmp_path, command="run-spec")
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_help_of_train_and_distill_through_the_entry_point(monkeypatch, capsys):
    for command, flag in (("train", "Images per optimizer step"), ("distill", "The first teacher's DDIM steps")):
        monkeypatch.setattr(sys, "argv", ["novarch-batch", command, "--help"])
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None)
        assert flag in capsys.readouterr().out


def test_train_takes_a_shipped_name_and_an_interrupted_run_says_what_it_left(tmp_path, monkeypatch, capsys):
    """--init-from resolves a shipped name as submit's --model does; Ctrl-C (here at the fourth step)
    names what the run leaves: no weights, the log so far, the last checkpoint; exit 130."""
    from novarch_batch.training import train as training

    step = training.optimizer_step
    calls = []

    def interrupted_at_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(training, "optimizer_step", interrupted_at_the_fourth)
    code = run_cli(["--out", "model", "--init-from", "novarch-tiny", "--ckpt-dir", "ckpt", "--ckpt-every", "2", "--log-every", "1",
                    "--steps", "100", "--batch-size", "4", "--data-workers", "0", "--threads", "1"], monkeypatch, tmp_path, command="train")
    err = capsys.readouterr().err
    assert code == 130, err
    assert (f"interrupted: no weights saved in model; {Path('model') / 'train_log.jsonl'} has the losses up to step 3; "
            "the last checkpoint, of step 2, is in ckpt") in err
    assert not (tmp_path / "model" / "diffusion_pytorch_model.safetensors").exists()
