"""Few-step student: the distillation target's maths, and a smoke run that gives a loadable student."""
import json

import numpy as np
import pytest
import torch

from novarch_batch.pipeline.spec import build_spec
from novarch_batch.training.distill import DistillConfig, distill, ddim_step, two_step_target
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.samplers import Schedule
from novarch_batch.workers.spec import SamplingConfig, trailing_timesteps


@pytest.mark.parametrize("a_t,a_end", [(0.0, 0.3), (0.2, 0.7), (0.5, 1.0)])  # from pure noise; midway; to the clean end
def test_one_step_with_the_target_lands_where_two_teacher_steps_do(a_t, a_end):
    """Salimans & Ho's x~ is the x0 whose DDIM step from z_t reaches the teacher's z after two steps."""
    gen = torch.Generator().manual_seed(0)
    z_t, z_end = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    a_t, a_end = torch.full((4, 1, 1, 1), a_t), torch.full((4, 1, 1, 1), a_end)
    x_target = two_step_target(z_t, z_end, a_t, a_end)
    eps = (z_t - a_t.sqrt() * x_target) / (1 - a_t).sqrt()  # DDIM's noise for that x0
    assert torch.allclose(a_end.sqrt() * x_target + (1 - a_end).sqrt() * eps, z_end, atol=1e-5)


def test_ddim_step_matches_the_shipped_ddim_sampler():
    """The distillation's teacher step is the product's DDIM step (eta 0, x0 clamped)."""
    from novarch_batch.workers.model import ModelInfo
    from novarch_batch.workers.samplers import sample_ddim
    from novarch_batch.workers.schedules import alphas_cumprod_for

    config = ModelInfo.read(default_model_dir()).scheduler_config
    alphas = alphas_cumprod_for(config)
    schedule = Schedule(alphas, [999, 499], True, "v_prediction")
    net = lambda x, t: 0.3 * x + 0.01 * t  # any v network
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    one = ddim_step(z, net(z, 999), alphas[999].view(1, 1, 1, 1).expand(2, 1, 1, 1), alphas[499].view(1, 1, 1, 1).expand(2, 1, 1, 1), schedule)
    two = ddim_step(one, net(one, 499), alphas[499].view(1, 1, 1, 1).expand(2, 1, 1, 1), torch.ones(2, 1, 1, 1), schedule)
    assert torch.allclose(two, sample_ddim(net, z.clone(), schedule, noise=None), atol=1e-5)


def test_trailing_grids_are_nested():
    for n in (4, 8, 16, 32):
        assert trailing_timesteps(1000, n) == trailing_timesteps(1000, 2 * n)[::2]


def test_bad_round_plan_names_the_fix():
    with pytest.raises(ValueError, match="--start-steps must be --final-steps times a power of two"):
        DistillConfig(teacher="t", out="o", start_steps=12, final_steps=4)
    assert DistillConfig(teacher="t", out="o").rounds == [32, 16, 8, 4]


def test_an_epsilon_teacher_is_refused_before_anything_is_written(tmp_path):
    cfg = DistillConfig(teacher=str(default_model_dir("novarch-tiny-v1")), out=str(tmp_path / "student"), start_steps=4, final_steps=2)
    with pytest.raises(ValueError, match="needs a v-prediction teacher"):
        distill(cfg)
    assert not (tmp_path / "student").exists()


def test_smoke_distillation_gives_a_student_sampled_in_its_steps(tmp_path):
    cfg = DistillConfig(teacher=str(default_model_dir()), out=str(tmp_path / "student"), start_steps=4, final_steps=2,
                        steps_per_round=2, batch_size=3, threads=1, log_every=1)
    folder = distill(cfg)
    meta = json.loads((folder / "novarch.json").read_text())
    assert meta["distilled"]["steps"] == 2
    # The command novarch.json gives samples the student at the grid and guidance it was distilled for.
    assert meta["distilled"]["sample_with"] == f"novarch-batch submit --sampler distilled --model {folder}"
    sampling = build_spec(count=2, out=str(tmp_path / "jobs"), sampler="distilled", model=str(folder)).sampling
    assert (sampling.steps, sampling.timesteps(), sampling.guidance) == (2, [999, 499], meta["distilled"]["guidance"])
    log = [json.loads(line) for line in (folder / "distill_log.jsonl").read_text().splitlines()]
    assert [row["student_steps"] for row in log] == [2, 2] and all(np.isfinite(row["loss"]) for row in log)
    images = ImageGenerator(folder, "cpu").images([1, 2], SamplingConfig(class_name="house", sampler="ddim", steps=2, guidance=1.0))
    assert images.shape == (2, 32, 32, 3)
