"""The one spec: its fields make the CLI's options, travel as JSON, and become Parquet columns."""
from __future__ import annotations

import math
from dataclasses import fields

import pytest
from click.testing import CliRunner

from novarch_batch.pipeline.cli import cli
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.workers import shard_format
from novarch_batch.workers.spec import (KARRAS_MAX_STEPS, JobSpec, OutputConfig, RunConfig, SamplingConfig, SpecError, flag_name,
                                        karras_timesteps, novarch_noise_levels)


def test_every_sampling_column_is_in_the_parquet_schema():
    columns = SamplingConfig().columns()
    assert "class_label" in columns and "seed" not in columns  # renamed, and per-row rather than per-job
    assert set(columns) <= set(shard_format.SCHEMA.names)


def test_submit_has_one_option_per_spec_field_with_the_dataclass_default():
    help_text = CliRunner().invoke(cli, ["submit", "--help"], terminal_width=400).output
    for config in (SamplingConfig, OutputConfig, RunConfig):
        for f in fields(config):
            assert flag_name(f) in help_text
            if f.default not in (None, False, 0) or f.metadata.get("show"):
                typed = int(f.default) if isinstance(f.default, float) and f.default.is_integer() else f.default  # 1, not 1.0
                assert f"[default: {f.metadata.get('show') or typed}]" in help_text


def test_defaults_come_from_the_dataclasses(tmp_path):
    spec = build_spec(count=100, out=str(tmp_path))
    assert spec.sampling == SamplingConfig() and spec.run == RunConfig()
    assert spec.output == OutputConfig(out=str(tmp_path), shard_size=64)


def test_json_round_trip_and_unknown_keys_refused(tmp_path):
    spec = build_spec(count=10, out=str(tmp_path), sampler="ddim", eta=0.3, class_name="house", actors=3, compile=True)
    data = spec.to_dict()
    assert JobSpec.from_dict(data) == spec
    data["sampling"]["temperature"] = 2.0
    with pytest.raises(TypeError):
        JobSpec.from_dict(data)


def test_an_option_the_sampler_does_not_read_is_refused_and_never_hashed(tmp_path):
    with pytest.raises(SpecError, match="--eta is used by --sampler ddim only, not dpmpp-2m-sde"):
        build_spec(count=10, out=str(tmp_path), eta=0.5)
    plain = build_spec(count=10, out=str(tmp_path))
    assert build_spec(count=10, out=str(tmp_path), eta=0.0).job_id == plain.job_id
    ddim = build_spec(count=10, out=str(tmp_path), sampler="ddim")
    assert build_spec(count=10, out=str(tmp_path), sampler="ddim", eta=0.5).job_id != ddim.job_id


def test_classes_come_from_the_models_own_metadata(tmp_path, model_dir):
    """A model whose novarch.json names other classes is usable with those classes."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "novarch.json").read_text())
    (folder / "novarch.json").write_text(json.dumps({**meta, "classes": ["tower", "cottage"]}))
    spec = build_spec(count=8, out=str(tmp_path / "out"), model=str(folder), class_name="cottage")
    assert spec.sampling.class_name == "cottage"
    with pytest.raises(SpecError, match="--class must be one of tower, cottage, any"):
        build_spec(count=8, out=str(tmp_path / "out"), model=str(folder), class_name="house")


def test_unknown_build_spec_option_is_a_programming_error(tmp_path):
    with pytest.raises(TypeError, match="workers"):
        build_spec(count=8, out=str(tmp_path), workers=2)


def test_choices_are_checked_for_python_callers_too(tmp_path):
    with pytest.raises(SpecError, match="--sampler must be one of ddpm, ddim, dpmpp-2m, dpmpp-2m-sde, distilled, got 'euler'"):
        build_spec(count=8, out=str(tmp_path), sampler="euler")
    with pytest.raises(SpecError, match="--device must be one of auto, cpu, cuda, got 'tpu'"):
        build_spec(count=8, out=str(tmp_path), device="tpu")


def test_a_sampling_field_added_later_leaves_job_ids_alone(tmp_path, monkeypatch):
    """Hash a spec as if SamplingConfig had grown an option: at the value that samples as before it
    existed it is not in the job id; at any other value, its default included, it is."""
    import dataclasses

    from novarch_batch.workers import spec as spec_module

    plain = build_spec(count=8, out=str(tmp_path))
    for default, before in ((1.0, 1.0), (3.0, 1.0)):
        grown = dataclasses.make_dataclass("Grown", [("new_option", float, spec_module.option(default, "h", before=before))],
                                           bases=(SamplingConfig,), frozen=True)
        monkeypatch.setitem(spec_module.FIELDS, "new_option", dataclasses.fields(grown)[-1])
        at_default = dataclasses.replace(plain, sampling=grown(**dataclasses.asdict(plain.sampling)))
        assert (at_default.spec_hash() == plain.spec_hash()) == (default == before)
        as_before = dataclasses.replace(plain, sampling=grown(**dataclasses.asdict(plain.sampling), new_option=before))
        assert as_before.spec_hash() == plain.spec_hash()
        changed = dataclasses.replace(plain, sampling=grown(**dataclasses.asdict(plain.sampling), new_option=2.0))
        assert changed.spec_hash() != plain.spec_hash()


def test_guidance_interval_counts_only_its_steps_and_is_hashed_unless_all(tmp_path):
    house = dict(count=8, out=str(tmp_path), class_name="house", steps=16, guidance=2.0, spacing="trailing")
    assert build_spec(**house).sampling.guidance_interval == "650-950"  # the default, hashed: it samples differently from "all"
    assert "guided_timesteps" in build_spec(**house).identity()["sampling"]
    every = build_spec(**house, guidance_interval="all")
    assert every.sampling.network_evaluations() == 32
    assert "guidance_interval" not in every.identity()["sampling"]  # samples as before the option existed
    limited = build_spec(**house, guidance_interval="650-950")
    assert limited.sampling.guided_timesteps() == [937, 874, 811, 749, 687]  # of the 16-step trailing grid
    assert limited.sampling.network_evaluations() == 16 + 5
    assert limited.identity()["sampling"]["guided_timesteps"] == [937, 874, 811, 749, 687] and limited.spec_hash() != every.spec_hash()
    assert build_spec(**{**house, "class_name": "any"}, guidance_interval="650-950").sampling.network_evaluations() == 16
    # the same guided steps, the same images, the same job: 'any' has no guidance, 0-999 holds every step
    assert build_spec(**{**house, "class_name": "any"}).spec_hash() == build_spec(**{**house, "class_name": "any"}, guidance_interval="all").spec_hash()
    assert build_spec(**house, guidance_interval="0-999").spec_hash() == every.spec_hash()
    assert build_spec(**house, guidance_interval="660-950").spec_hash() == limited.spec_hash()  # 687 is the lowest guided step either way
    for bad in ("650", "950-650", "0-1000", "a-b", "-1-5", "0650-950", "６５０-９５０"):
        with pytest.raises(SpecError, match=r"--guidance-interval must be 'all' or LO-HI, .*got '"):
            build_spec(**house, guidance_interval=bad)
    with pytest.raises(SpecError, match="--guidance-interval does not apply to --sampler distilled"):
        build_spec(count=8, out=str(tmp_path), sampler="distilled", guidance_interval="650-950")
    assert build_spec(count=8, out=str(tmp_path), sampler="distilled").sampling.guidance_interval == "all"


def test_every_step_count_has_its_own_number_of_distinct_timesteps_from_pure_noise():
    from novarch_batch.workers.spec import trailing_timesteps

    for steps in range(1, 1001):  # 61 steps once ended in t = -1, one step too many
        grid = SamplingConfig(steps=steps, spacing="trailing").timesteps()
        assert len(grid) == steps and grid[0] == 999 and grid[-1] >= 0, steps
        assert all(a > b for a, b in zip(grid, grid[1:])), steps
        assert grid[:-1] == trailing_timesteps(1000, steps)[:-1]


def test_final_timestep_lowers_only_the_last_step_and_is_hashed_as_the_grid(tmp_path):
    job = dict(count=8, out=str(tmp_path), spacing="trailing")
    default = build_spec(**job)
    assert default.sampling.timesteps() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 8]
    assert default.identity()["sampling"]["timesteps"] == default.sampling.timesteps()  # it samples differently from before
    trailing = build_spec(**job, final_timestep=999)
    assert trailing.sampling.timesteps()[-1] == 99 and "timesteps" not in trailing.identity()["sampling"]
    assert "final_timestep" not in trailing.identity()["sampling"] and trailing.spec_hash() != default.spec_hash()
    # spellings that leave the grid as it was are the job it was: 99 at 10 steps, anything at 1,000 steps, one step
    assert build_spec(**job, final_timestep=99).spec_hash() == trailing.spec_hash()
    assert build_spec(**job, steps=1000, sampler="ddpm").spec_hash() == build_spec(**job, steps=1000, sampler="ddpm", final_timestep=999).spec_hash()
    assert build_spec(**job, steps=1).sampling.timesteps() == [999]  # a single step starts from pure noise
    assert build_spec(**job, steps=16, final_timestep=40).sampling.timesteps()[-2:] == [124, 40]
    for bad in (-1, 1000):
        with pytest.raises(SpecError, match=rf"--final-timestep must be a timestep from 0 to 999 .*got {bad}"):
            build_spec(**job, final_timestep=bad)
    with pytest.raises(SpecError, match="--final-timestep does not apply to --sampler distilled"):
        build_spec(**job, sampler="distilled", final_timestep=30)
    student = build_spec(**job, sampler="distilled").sampling
    assert student.final_timestep == 999 and student.timesteps() == [999, 749, 499, 249]  # the grid it was distilled on


def test_karras_spacing_lies_in_sigma_ends_at_the_last_step_and_is_hashed_as_the_grid(tmp_path):
    job = dict(count=8, out=str(tmp_path), class_name="house", guidance=1.5)
    trailing, karras = build_spec(**job, spacing="trailing"), build_spec(**job)
    assert karras.sampling.spacing == "karras"  # the default
    assert karras.sampling.timesteps() == [999, 950, 915, 850, 729, 527, 291, 123, 40, 8]
    assert karras.identity()["sampling"]["timesteps"] == karras.sampling.timesteps() and "spacing" not in karras.identity()["sampling"]
    assert trailing.spec_hash() != karras.spec_hash()
    assert "timesteps" in trailing.identity()["sampling"]  # the default's last step, not its spacing
    # the guided steps are the grid's inside the interval: one more than the trailing grid's three
    assert karras.sampling.guided_timesteps() == [950, 915, 850, 729] and karras.sampling.network_evaluations() == 14
    # one step is pure noise with either spacing: the same job
    assert build_spec(**job, steps=1).spec_hash() == build_spec(**job, steps=1, spacing="trailing").spec_hash()
    # the last step is the trailing grid's own (99 at 10 steps) when --final-timestep lowers nothing
    assert build_spec(**job, spacing="karras", final_timestep=999).sampling.timesteps()[-1] == 99
    sigma = novarch_noise_levels()
    for steps in range(2, KARRAS_MAX_STEPS + 1):
        for last in (0, 8, 99):
            grid = karras_timesteps(1000, steps, last)
            assert len(grid) == steps and grid[0] == 999 and grid[-1] == last, (steps, last)
            assert all(a > b for a, b in zip(grid, grid[1:])), (steps, last)
            # evenly spaced in sigma^(1/7) up to the rounding to a timestep, where nothing collides
            roots = [sigma[t] ** (1 / 7) for t in grid[1:]]
            if 3 <= steps <= 20 and last == 8:
                gaps = [a - b for a, b in zip(roots, roots[1:])]
                assert max(gaps) < 1.1 * min(gaps) + 0.01, (steps, gaps)
    with pytest.raises(SpecError, match=rf"--spacing karras spaces at most {KARRAS_MAX_STEPS} steps, got --steps 101"):
        build_spec(**job, spacing="karras", steps=101)
    with pytest.raises(SpecError, match="--spacing does not apply to --sampler distilled"):
        build_spec(count=8, out=str(tmp_path), sampler="distilled", spacing="karras")
    assert build_spec(count=8, out=str(tmp_path), sampler="distilled").sampling.spacing == "trailing"  # the student's grid
    with pytest.raises(SpecError, match="--spacing must be one of trailing, karras, got 'cosine'"):
        build_spec(**job, spacing="cosine")


def test_the_spacings_noise_levels_are_those_of_the_shipped_models_schedule():
    """karras_timesteps spaces sigma of NovArch's schedule computed without torch; the samplers use
    the float32 alphas diffusers builds from the model's scheduler_config.json."""
    import torch

    from novarch_batch.workers.model import ModelInfo, default_model_dir
    from novarch_batch.workers.schedules import alphas_cumprod_for

    abar = alphas_cumprod_for(ModelInfo.read(default_model_dir()).scheduler_config).double()
    theirs = ((1 - abar[:-1]) / abar[:-1]).sqrt()
    ours = torch.tensor(novarch_noise_levels()[:-1], dtype=torch.float64)
    assert float(((ours - theirs).abs() / theirs).max()) < 0.005 and novarch_noise_levels()[-1] == math.inf


def test_bad_guidance_interval_final_timestep_or_spacing_is_one_line_exit_2_nothing_written(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["submit", "--count", "4", "--out", str(out), "--guidance-interval", "900-100"])
    assert result.exit_code == 2
    assert "--guidance-interval must be 'all' or LO-HI" in result.output and not out.exists()
    result = CliRunner().invoke(cli, ["submit", "--count", "4", "--out", str(out), "--final-timestep", "1000"])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip().splitlines()[-1].endswith("--final-timestep must be a timestep from 0 to 999 (999 = the plain trailing grid), got 1000")
    result = CliRunner().invoke(cli, ["submit", "--count", "4", "--out", str(out), "--spacing", "karras", "--steps", "200"])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip().splitlines()[-1].endswith("--spacing karras spaces at most 100 steps, got --steps 200; use --spacing trailing")


def test_distilled_sampler_takes_the_students_steps_and_guidance(tmp_path):
    from novarch_batch.workers.spec import SHIPPED_STUDENT

    spec = build_spec(count=8, out=str(tmp_path), sampler="distilled", class_name="house")
    assert spec.model == SHIPPED_STUDENT and (spec.sampling.steps, spec.sampling.guidance) == (4, 2.0)
    assert spec.sampling.network_evaluations() == 4
    # the default for a class: 10 steps without guidance, one evaluation each
    assert build_spec(count=8, out=str(tmp_path), class_name="house").sampling.network_evaluations() == 10
    assert spec.model_sha256 != build_spec(count=8, out=str(tmp_path)).model_sha256  # the student's weights are the job's
    with pytest.raises(SpecError, match="--steps 10: the distilled student samples with --steps 4 only"):
        build_spec(count=8, out=str(tmp_path), sampler="distilled", steps=10)
    with pytest.raises(SpecError, match="--guidance 3.0: the distilled student samples with --guidance 2.0 only"):
        build_spec(count=8, out=str(tmp_path), sampler="distilled", guidance=3.0)
    with pytest.raises(SpecError, match="--model novarch-tiny is not one"):
        build_spec(count=8, out=str(tmp_path), sampler="distilled", model="novarch-tiny")
    assert not (tmp_path / spec.job_id).exists()


def test_format_defaults_to_embedded_images_for_s3_and_files_for_a_folder(tmp_path):
    """Per-image PUTs are what S3 cannot sustain at GPU rates: an s3:// job embeds its images unless told."""
    assert build_spec(count=10, out="s3://bucket/prefix").output.format == "parquet"
    assert build_spec(count=10, out=str(tmp_path)).output.format == "files"
    assert build_spec(count=10, out="s3://bucket/prefix", format="files").output.format == "files"
    assert build_spec(count=10, out="s3://bucket/prefix", format="webdataset").output.format == "webdataset"


def test_the_dry_run_says_where_guidance_applies_on_the_jobs_grid():
    from novarch_batch.pipeline.estimate import guidance_plan

    trailing = SamplingConfig(class_name="building", guidance=2.0, spacing="trailing", final_timestep=999)
    assert guidance_plan(trailing) == "2 at t = 899, 799, 699 (3 of 10 steps, a second evaluation each)"
    # an interval between two steps of the karras grid (999, 950, ...) guides none: legal, but said
    nothing = SamplingConfig(class_name="building", guidance=2.0, guidance_interval="951-998")
    assert nothing.network_evaluations() == 10 and "holds no step of this grid: conditional throughout" in guidance_plan(nothing)
    assert guidance_plan(SamplingConfig(guidance=2.0)) == "none: class any samples unconditionally"
    assert guidance_plan(SamplingConfig(class_name="house")) == "1: conditional, one evaluation per step"
