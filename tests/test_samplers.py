"""One shared suite run against every sampler and both shipped models (v2 predicts v on a
zero-terminal-SNR schedule, v1 predicts epsilon): diffusers agreement, determinism, guidance."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from novarch_batch.workers.model import ModelInfo, default_model_dir, load_unet, make_denoiser
from novarch_batch.workers.samplers import SAMPLERS, Schedule
from novarch_batch.workers.spec import SAMPLER_OPTIONS, SHIPPED_MODELS, SHIPPED_STUDENT, trailing_timesteps
from novarch_batch.workers.schedules import alphas_cumprod_for
from novarch_batch.workers.seeds import GeneratorNoise, draw_noise, make_generators, sample_seed

STEPS = 10
SEEDS = [sample_seed(7, i) for i in range(3)]


def load(name: str):
    folder = default_model_dir(name)
    return load_unet(folder, torch.device("cpu")), ModelInfo.read(folder)


@pytest.fixture(scope="module", params=[name for name in SHIPPED_MODELS if name != SHIPPED_STUDENT])
def model(request):
    """(unet, info) of v2 (v) and v1 (epsilon): the diffusers agreement runs on both parameterisations;
    the contracts below on the default model; the student has its own test."""
    return load(request.param)


@pytest.fixture(scope="module")
def default_model():
    return load(SHIPPED_MODELS[0])


@pytest.fixture(scope="module")
def unet(default_model):
    return default_model[0]


@pytest.fixture(scope="module")
def info(default_model):
    return default_model[1]


def schedule_of(info, timesteps, clip_sample=None) -> Schedule:
    config = info.scheduler_config
    clip = config["clip_sample"] if clip_sample is None else clip_sample
    return Schedule(alphas_cumprod_for(config), timesteps, clip, config.get("prediction_type", "epsilon"))


def test_shipped_models_cover_both_parameterisations():
    types = {ModelInfo.read(default_model_dir(name)).scheduler_config["prediction_type"] for name in SHIPPED_MODELS}
    assert types == {"epsilon", "v_prediction"}


def test_zero_terminal_snr_schedule_matches_diffusers():
    config = ModelInfo.read(default_model_dir()).scheduler_config
    assert config["rescale_betas_zero_snr"] and config["prediction_type"] == "v_prediction"
    ours = alphas_cumprod_for(config)
    assert ours[-1] == 0.0  # t = T is pure noise
    assert torch.allclose(ours, DDPMScheduler.from_config(config).alphas_cumprod, rtol=1e-6, atol=1e-9)


def diffusers_scheduler(name: str, config: dict):
    if name == "ddpm":
        return DDPMScheduler.from_config(config, timestep_spacing="trailing")
    if name in ("ddim", "distilled"):
        return DDIMScheduler.from_config(config, timestep_spacing="trailing")
    # thresholding with sample_max_value 1 clamps x0 to [-1, 1]: the clip_sample of our schedule
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="sde-dpmsolver++" if name == "dpmpp-2m-sde" else "dpmsolver++", solver_order=2, timestep_spacing="trailing", final_sigmas_type="zero",
        lower_order_final=True, thresholding=config["clip_sample"], sample_max_value=1.0,
    )


def run_ours(name, unet, info, seeds, labels, guidance=2.0, eta=0.0, steps=STEPS):
    gens = make_generators(seeds)
    x = draw_noise(gens, (3, 32, 32))
    schedule = schedule_of(info, trailing_timesteps(1000, steps))
    denoise = make_denoiser(unet, torch.tensor(labels), info.null_label, guidance)
    with torch.inference_mode():
        options = {"eta": eta} if "eta" in SAMPLER_OPTIONS[name] else {}  # as SamplingConfig.sampler_kwargs passes it
        return SAMPLERS[name](denoise, x, schedule, noise=GeneratorNoise(gens), **options)


def run_diffusers(name, unet, info, seeds, labels, guidance=2.0, eta=0.0, steps=STEPS, timesteps=None):
    """The reference loop written independently: plain CFG, diffusers' own step(); on the trailing
    grid of `steps`, or on the given `timesteps` (DDPM and DPM-Solver++ take a custom grid)."""
    sched = diffusers_scheduler(name, info.scheduler_config)
    if timesteps is None:
        sched.set_timesteps(steps)
    else:
        sched.set_timesteps(timesteps=timesteps)
    assert [int(t) for t in sched.timesteps] == (timesteps or trailing_timesteps(1000, steps))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.cat([torch.randn((1, 3, 32, 32), generator=g) for g in gens])
    y = torch.tensor(labels)
    null = torch.full_like(y, info.null_label)
    with torch.inference_mode():
        for t in sched.timesteps:
            # One batched pass for both branches, as ours: near t = T a cosine schedule divides eps by
            # sqrt(alpha_bar) ~ 5e-5, so even kernel rounding from another batch shape would show.
            both = unet(torch.cat([x, x]), t.repeat(2 * len(seeds)), class_labels=torch.cat([y, null])).sample
            cond, uncond = both.chunk(2)
            out = uncond + guidance * (cond - uncond)  # epsilon or v, as the model predicts
            kwargs = {"eta": eta} if name == "ddim" else {}
            x = sched.step(out, t, x, generator=gens, **kwargs).prev_sample
    return x


CASES = [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.7), ("dpmpp-2m", 0.0), ("dpmpp-2m-sde", 0.0)]


@pytest.mark.parametrize("name,eta", CASES)
def test_matches_diffusers(name, eta, model):
    unet, info = model
    labels = [0, 1, 0]
    ours = run_ours(name, unet, info, SEEDS, labels, eta=eta)
    ref = run_diffusers(name, unet, info, SEEDS, labels, eta=eta)
    rel = (ours - ref).norm() / ref.norm()
    assert rel < 1e-4, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("name,spacing", [("dpmpp-2m-sde", "trailing"), ("ddpm", "trailing"), ("dpmpp-2m", "karras")])
def test_a_jobs_grid_with_its_final_timestep_matches_diffusers(name, spacing, unet, info):
    """A job samples SamplingConfig.timesteps(): the trailing grid with its last step lowered to
    --final-timestep, or the --spacing karras grid ending there; diffusers, given that grid, makes
    the same images."""
    from dataclasses import replace

    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.spec import DEFAULT_FINAL_TIMESTEP, SamplingConfig, karras_timesteps

    sampling = replace(SamplingConfig(), sampler=name, class_name="house", guidance=2.0, guidance_interval="all", spacing=spacing)
    grid = sampling.timesteps()
    if spacing == "karras":
        assert grid == karras_timesteps(1000, STEPS, DEFAULT_FINAL_TIMESTEP) and grid[:2] == [999, 950]
    else:
        assert grid == [*trailing_timesteps(1000, STEPS)[:-1], DEFAULT_FINAL_TIMESTEP]
    ours = ImageGenerator(default_model_dir(), "cpu").sample(SEEDS, sampling)
    ref = run_diffusers(name, unet, info, SEEDS, [1, 1, 1], guidance=sampling.guidance, timesteps=grid)
    rel = (ours - ref).norm() / ref.norm()
    assert rel < 1e-4, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("name", SAMPLERS)
def test_sample_does_not_depend_on_batch(name, unet, info):
    labels = [1, 0, 1]
    together = run_ours(name, unet, info, SEEDS, labels, eta=0.5)
    alone = torch.cat([run_ours(name, unet, info, [s], [y], eta=0.5) for s, y in zip(SEEDS, labels)])
    levels = ((together.clamp(-1, 1) + 1) * 127.5 - (alone.clamp(-1, 1) + 1) * 127.5).abs().max()
    assert levels <= 1.0


@pytest.mark.parametrize("name", SAMPLERS)
def test_bit_identical_reruns(name, unet, info):
    a = run_ours(name, unet, info, SEEDS, [0, 1, 2], eta=0.5)
    b = run_ours(name, unet, info, SEEDS, [0, 1, 2], eta=0.5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", SAMPLERS)
def test_guidance_endpoints(name, unet, info):
    """G = 0 is the unconditional sample and G = 1 the conditional one, on the same noise."""
    labels = [0, 1, 0]
    nulls = [info.null_label] * 3
    assert torch.allclose(run_ours(name, unet, info, SEEDS, labels, guidance=0.0), run_ours(name, unet, info, SEEDS, nulls, guidance=5.0), atol=1e-5)
    cond_only = run_ours(name, unet, info, SEEDS, labels, guidance=1.0)
    nulls_ignored = run_ours(name, unet, info, SEEDS, labels, guidance=1.0 + 1e-12)  # takes the two-branch path
    assert (cond_only - nulls_ignored).norm() / nulls_ignored.norm() < 1e-3


def test_guidance_interval_guides_only_its_timesteps(unet, info):
    """Inside LO-HI the guided output, outside it the conditional one, each as computed without an
    interval; through ImageGenerator an interval that holds every step is the same as 'all'."""
    from dataclasses import replace

    import numpy as np

    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.spec import SamplingConfig

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    guided = make_denoiser(unet, labels, info.null_label, 2.0)
    conditional = make_denoiser(unet, labels, info.null_label, 1.0)
    limited = make_denoiser(unet, labels, info.null_label, 2.0, (650, 950))
    unconditional = make_denoiser(unet, labels, info.null_label, 0.0, (650, 950))
    with torch.inference_mode():
        assert torch.equal(unconditional(x, 999), make_denoiser(unet, labels, info.null_label, 0.0)(x, 999))
        assert not torch.equal(guided(x, 700), conditional(x, 700))
        for t, inside in ((999, False), (951, False), (950, True), (700, True), (650, True), (649, False), (99, False)):
            assert torch.equal(limited(x, t), guided(x, t) if inside else conditional(x, t)), t
    generator = ImageGenerator(default_model_dir(), "cpu")
    sampling = SamplingConfig(class_name="house", steps=3, seed=1, guidance=2.0, spacing="trailing")  # timesteps 999, 666, 8
    rows: list[int] = []  # images per network call: what a step really costs
    hook = generator.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    images = {}
    for interval in ("all", "0-999", "600-700", "660-670", "667-700"):
        rows.clear()
        config = replace(sampling, guidance_interval=interval)
        images[interval] = generator.images(SEEDS[:2], config)
        assert sum(rows) == 2 * config.network_evaluations(), interval
    hook.remove()
    assert [replace(sampling, guidance_interval=i).network_evaluations() for i in ("all", "600-700", "667-700")] == [6, 4, 3]
    assert np.array_equal(images["all"], images["0-999"])
    assert np.array_equal(images["600-700"], images["660-670"])  # both guide t = 666 only
    assert not np.array_equal(images["all"], images["600-700"])
    assert np.array_equal(images["667-700"], generator.images(SEEDS[:2], replace(sampling, guidance=1.0)))  # guides no step
    alone = generator.images(SEEDS[:1], replace(sampling, guidance_interval="600-700"))
    assert np.abs(images["600-700"][:1].astype(int) - alone).max() <= 1  # another batch size: within one level


def test_ancestral_noise_comes_from_the_sample_generator():
    """DDPM with a zero epsilon network: every step's noise must be the next draw of the sample's generator."""
    info = ModelInfo.read(default_model_dir("novarch-tiny-v1"))
    zero = lambda x, t: torch.zeros_like(x)
    seeds = SEEDS[:2]
    gens = make_generators(seeds)
    x = draw_noise(gens, (3, 32, 32))
    schedule = schedule_of(info, [999, 500], clip_sample=False)
    out = SAMPLERS["ddpm"](zero, x.clone(), schedule, noise=GeneratorNoise(gens))
    # Independent computation of the same two steps from the formulas (Ho et al. eq. 7).
    ac = alphas_cumprod_for(info.scheduler_config).double()
    ref_gens = [torch.Generator().manual_seed(s) for s in seeds]
    xi = torch.stack([torch.randn((3, 32, 32), generator=g) for g in ref_gens]).double()
    a_t, a_p = ac[999], ac[500]
    beta = 1 - a_t / a_p
    x0 = xi / a_t.sqrt()
    mean = a_p.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_p) / (1 - a_t) * xi
    z = torch.stack([torch.randn((3, 32, 32), generator=g) for g in ref_gens]).double()
    x500 = mean + ((1 - a_p) / (1 - a_t) * beta).sqrt() * z
    expected = x500 / ac[500].sqrt()  # last step: x0 of a zero-noise prediction
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_trailing_timesteps_start_from_pure_noise():
    assert trailing_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert trailing_timesteps(1000, 1) == [999]
    assert len(trailing_timesteps(1000, 1000)) == 1000


def test_every_sampler_has_its_options_declared():
    """The CLI's --sampler choices and the refusal of unused options come from SAMPLER_OPTIONS."""
    import inspect

    assert set(SAMPLERS) == set(SAMPLER_OPTIONS)
    for name, fn in SAMPLERS.items():
        params = inspect.signature(fn).parameters
        assert [p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY] == ["noise", *SAMPLER_OPTIONS[name], "callback"]


def test_v_prediction_recovers_the_image_at_pure_noise():
    """At alpha_bar = 0 the v network's x0 is -v: a v model is defined where epsilon is not."""
    from novarch_batch.workers.samplers import predict

    config = ModelInfo.read(default_model_dir()).scheduler_config
    schedule = schedule_of(ModelInfo.read(default_model_dir()), [999])
    x, v = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4) - 0.5
    x0, eps = predict(x, v, 0.0, schedule)
    assert torch.equal(x0, -v) and torch.equal(eps, x)
    with pytest.raises(ValueError, match="train the model with prediction_type v_prediction"):
        Schedule(alphas_cumprod_for(config), [999], True, "epsilon")


def test_distilled_sampler_is_diffusers_ddim_on_the_student_in_one_pass_per_step():
    """--sampler distilled: the shipped student, its 4 steps, guidance folded in (one pass of the labels)."""
    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.spec import SamplingConfig

    folder = default_model_dir(SHIPPED_STUDENT)
    info = ModelInfo.read(folder)
    assert info.distilled["steps"] == 4 and info.distilled["guidance"] == 2.0
    unet = load_unet(folder, torch.device("cpu"))
    labels = [0, 1, info.null_label]
    ref = run_diffusers("distilled", unet, info, SEEDS, labels, guidance=1.0, steps=4)
    ours = run_ours("distilled", unet, info, SEEDS, labels, guidance=1.0, steps=4)
    assert (ours - ref).norm() / ref.norm() < 1e-4
    generator = ImageGenerator(folder, "cpu")
    for k, name in enumerate(("building", "house", "any")):  # the product path passes no guidance to the student
        sampled = generator.sample([SEEDS[k]], SamplingConfig(class_name=name, sampler="distilled", steps=4, guidance=2.0))
        assert torch.allclose(sampled, ours[k:k + 1], atol=1e-5)
    batch = generator.sample(SEEDS, SamplingConfig(class_name="house", sampler="distilled", steps=4, guidance=2.0))
    alone = torch.cat([generator.sample([s], SamplingConfig(class_name="house", sampler="distilled", steps=4, guidance=2.0)) for s in SEEDS])
    assert ((batch.clamp(-1, 1) - alone.clamp(-1, 1)).abs() * 127.5).max() <= 1.0  # within one level of 255


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 5, 5)])  # whole 16-value blocks of torch's sampler, and not
def test_predrawn_noise_is_each_generators_stream(shape):
    """Noise drawn ahead on threads is, draw for draw, what the generators give when asked; past the
    predrawn draws it goes on from where they ended."""
    from concurrent.futures import ThreadPoolExecutor

    from novarch_batch.workers.seeds import PredrawnNoise

    seeds = [sample_seed(3, i) for i in range(5)]
    asked = GeneratorNoise(make_generators(seeds))
    with ThreadPoolExecutor(2) as pool:
        ahead = PredrawnNoise.start(pool, 2, make_generators(seeds), shape, draws=3)
        for _ in range(5):
            assert torch.equal(ahead.draw(shape, "cpu"), asked.draw(shape, "cpu"))


@pytest.mark.parametrize("name,eta", CASES + [("distilled", 0.0)])
def test_noise_draws_counts_what_the_sampler_draws(name, eta):
    """SamplingConfig.noise_draws sizes the predrawn noise; it must be what each sampler really reads."""
    from novarch_batch.workers.spec import SamplingConfig

    info = ModelInfo.read(default_model_dir())

    class Counted(GeneratorNoise):
        draws = 0

        def draw(self, shape, device):
            Counted.draws += 1
            return super().draw(shape, device)

    noise = Counted(make_generators(SEEDS[:2]))
    x = noise.draw((3, 32, 32), "cpu")
    options = {"eta": eta} if "eta" in SAMPLER_OPTIONS[name] else {}
    SAMPLERS[name](lambda x, t: torch.zeros_like(x), x, schedule_of(info, trailing_timesteps(1000, 5)), noise=noise, **options)
    assert Counted.draws == SamplingConfig(sampler=name, steps=5, eta=eta).noise_draws()


def test_stream_draws_noise_ahead_without_changing_a_byte():
    """The actors' path: micro-batches through ImageGenerator.stream with noise threads give the
    bytes of plain one-batch-at-a-time sampling (the default SDE sampler draws noise every step)."""
    import numpy as np

    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.spec import SamplingConfig

    sampling = SamplingConfig(class_name="house", steps=3)
    batches = [SEEDS[:2], SEEDS[2:]]
    plain = ImageGenerator(default_model_dir(), "cpu")
    threaded = ImageGenerator(default_model_dir(), "cpu", noise_threads=2)
    streamed = list(threaded.stream(batches, sampling))
    assert [len(images) for images in streamed] == [2, 1]
    for images, seeds in zip(streamed, batches):
        assert np.array_equal(images, plain.images(seeds, sampling))
        assert np.array_equal(images, threaded.images(seeds, sampling))  # noise drawn ahead under inference mode


def test_noise_drawn_ahead_is_capped_and_the_rest_comes_from_the_same_streams(monkeypatch):
    """A sampler with more draws than PREDRAWN_BYTES holds (DDPM-1000 would pin 12 GB a micro-batch) draws
    the first ones ahead and the rest from the generators: the same bytes as drawing them all when asked."""
    import numpy as np

    from novarch_batch.workers import generate
    from novarch_batch.workers.spec import SamplingConfig

    sampling = SamplingConfig(class_name="building", sampler="ddpm", steps=5)  # 5 draws per sample
    seeds = SEEDS[:2]
    monkeypatch.setattr(generate, "PREDRAWN_BYTES", 2 * len(seeds) * 4 * 3 * 32 * 32)  # room for 2 draws
    threaded = generate.ImageGenerator(default_model_dir(), "cpu", noise_threads=2)
    assert threaded.noise_for(seeds, sampling).draws == 2
    plain = generate.ImageGenerator(default_model_dir(), "cpu")
    assert np.array_equal(threaded.images(seeds, sampling), plain.images(seeds, sampling))


def test_compiled_network_samples_within_one_level_and_compiles_one_shape():
    """--compile: torch.compile (inductor, on this CPU) at one batch shape; short micro-batches are
    padded to the job's (here 3), so a job compiles once, and images stay within one level of the eager ones."""
    import numpy as np
    from torch._dynamo.utils import counters

    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.spec import SamplingConfig

    sampling = SamplingConfig(steps=2)  # unconditional: one network pass per step
    batches = [SEEDS[:2], SEEDS[2:]]
    eager = np.concatenate(list(ImageGenerator(default_model_dir(), "cpu").stream(batches, sampling)))
    torch._dynamo.reset()  # nothing reused from another test's compilation
    counters.clear()
    compiled = np.concatenate(list(ImageGenerator(default_model_dir(), "cpu", compile=True).stream(batches, sampling, pad_to=3)))
    assert counters["stats"]["unique_graphs"] == 1
    assert compiled.shape == eager.shape and np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1


def test_a_compiled_actor_compiles_the_jobs_shape_before_it_is_ready(tmp_path):
    """--compile in a job: the actor compiles at the job's micro-batch while it starts (its ready time then
    means sampling at speed), and its shards sample on that one thread, whose compiled graphs (CUDA graphs
    on a GPU) they reuse: the shard compiles nothing more."""
    import threading

    from torch._dynamo.utils import counters

    from novarch_batch.workers.shard_worker import ShardWorker
    from novarch_batch.workers.spec import SamplingConfig
    from novarch_batch.workers.tasks import ShardTask

    sampling = SamplingConfig(steps=2)
    torch._dynamo.reset()  # graphs compiled by another test for this shape would be reused, and counted nowhere
    counters.clear()
    worker = ShardWorker("novarch-tiny", "cpu", threads=1, compile=True, warmup=(sampling, 3))
    assert counters["stats"]["unique_graphs"] == 1
    threads = set()
    stream = worker.generator.stream
    worker.generator.stream = lambda *a, **k: (threads.add(threading.current_thread().name), stream(*a, **k))[1]
    task = ShardTask("job", str(tmp_path), 0, 0, 5, sampling, 3, "2026-01-01T00:00:00+00:00", "parquet")  # 3 + 2, padded
    assert worker.run_shard(task).ok
    assert counters["stats"]["unique_graphs"] == 1
    assert len(threads) == 1 and threads.pop().startswith("sample")


def test_predrawn_noise_refuses_a_shape_that_would_skip_its_draws():
    from concurrent.futures import ThreadPoolExecutor

    from novarch_batch.workers.seeds import PredrawnNoise

    with ThreadPoolExecutor(1) as pool:
        noise = PredrawnNoise.start(pool, 1, make_generators(SEEDS), (3, 32, 32), draws=2)
        noise.draw((3, 32, 32), "cpu")
        with pytest.raises(ValueError, match="drawn ahead and not used"):
            noise.draw((3, 16, 16), "cpu")
