"""Training smoke run, model folder format, judge, metrics and the two pictures."""
import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from novarch_batch.training.dataset import SCENE_FACTORS, make_images, scene_factors
from novarch_batch.training.evaluate import evaluate_images
from novarch_batch.training.explain import FRAMES, SCALE, render_explain
from novarch_batch.training.peaks import house_trajectories, render_peaks, share_between
from novarch_batch.training.judge import default_folder, load_judge, predict_proba
from novarch_batch.training.metrics import frechet_distance, nearest_l2
from novarch_batch.training.preview import render_grid
from novarch_batch.training.scene import load_scene_reader, read_factors
from novarch_batch.training.train import StartWeightsError, TrainConfig, train
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir

FRESH_SEED = 4000  # seen by neither the model nor the judge


@pytest.fixture(scope="module")
def smoke_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    train(TrainConfig(out=str(out), steps=3, batch_size=4, warmup=2, threads=1, log_every=1,
                      ckpt_dir=str(out / "ckpt"), ckpt_every=2))
    return out


def test_smoke_training_writes_a_loadable_folder(smoke_folder):
    files = {p.name for p in smoke_folder.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "novarch.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
    unet = UNet2DModel.from_pretrained(smoke_folder, use_safetensors=True)
    assert unet.config.num_class_embeds == 3
    meta = json.loads((smoke_folder / "novarch.json").read_text())
    assert meta["classes"] == ["building", "house"] and meta["null_label"] == 2
    assert meta["steps_done"] == 3 and meta["training_config"]["batch_size"] == 4
    log = [json.loads(line) for line in (smoke_folder / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3] and all(np.isfinite(row["loss"]) for row in log)
    assert (smoke_folder / "ckpt" / "diffusion_pytorch_model.safetensors").is_file()


def test_smoke_training_is_reproducible(smoke_folder, tmp_path):
    train(TrainConfig(out=str(tmp_path), steps=3, batch_size=4, warmup=2, threads=1, log_every=1))
    a = (smoke_folder / "train_log.jsonl").read_text().splitlines()
    b = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in a] == [json.loads(x)["loss"] for x in b]


def test_a_run_goes_on_from_init_from_weights(smoke_folder, tmp_path):
    # at lr 0 the run changes nothing: the weights written are the start's, and novarch.json names it
    from novarch_batch.storage import sha256_file

    out = tmp_path / "continued"
    train(TrainConfig(out=str(out), steps=2, batch_size=4, warmup=2, threads=1, lr=0.0, init_from=str(smoke_folder)))
    start, after = (UNet2DModel.from_pretrained(f, use_safetensors=True).state_dict() for f in (smoke_folder, out))
    assert all(torch.equal(start[k], after[k]) for k in start)
    meta = json.loads((out / "novarch.json").read_text())
    assert meta["init_from"]["weights_sha256"] == sha256_file(smoke_folder / "diffusion_pytorch_model.safetensors")
    assert meta["init_from"]["steps_done"] == 3 and "--init-from START" in meta["reproduce"]
    # weights are never trained on under another network or schedule
    with pytest.raises(StartWeightsError, match="pass --channels 32,64,64"):
        train(TrainConfig(out=str(tmp_path / "wide"), steps=1, channels=(64, 64, 64), init_from=str(smoke_folder)))
    with pytest.raises(StartWeightsError, match="another noise schedule: pass --zero-terminal-snr"):
        train(TrainConfig(out=str(tmp_path / "plain"), steps=1, zero_terminal_snr=False, init_from=str(smoke_folder)))
    assert not (tmp_path / "wide").exists() and not (tmp_path / "plain").exists()


def test_bad_config_names_the_fix():
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        TrainConfig(out="x", steps=0)
    with pytest.raises(ValueError, match="--zero-terminal-snr needs --prediction-type v_prediction"):
        TrainConfig(out="x", prediction_type="epsilon")  # zero terminal SNR is the default


def test_smoke_training_writes_a_v_prediction_zero_snr_model(smoke_folder):
    config = json.loads((smoke_folder / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction" and config["rescale_betas_zero_snr"]
    meta = json.loads((smoke_folder / "novarch.json").read_text())
    assert meta["prediction_type"] == "v_prediction" and meta["reproduce"].startswith("novarch-batch train --out OUT --steps 3 ")


def test_batches_do_not_depend_on_the_workers_that_paint_them(tmp_path):
    """Step s's batch comes from (seed, s) alone: two worker processes give the in-process bytes."""
    from novarch_batch.training.train import TrainingBatches

    cfg = TrainConfig(out=str(tmp_path), steps=4, batch_size=3, threads=1)
    alone = [TrainingBatches(cfg, 1000)[s] for s in range(4)]
    loader = torch.utils.data.DataLoader(TrainingBatches(cfg, 1000), batch_size=None, num_workers=2)
    for a, b in zip(alone, loader, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(alone[0]["noise"], alone[1]["noise"])


def test_max_seconds_plans_the_steps_from_the_warmup_pace(tmp_path):
    from novarch_batch.training.train import PROBE_FROM, planned_steps

    cfg = TrainConfig(out=str(tmp_path), steps=10_000, warmup=PROBE_FROM + 100, max_seconds=60)
    # 100 steps in 2 s after 3 s of start-up: 50 steps/s for the 57 s left
    assert planned_steps(cfg, PROBE_FROM + 100, 2.0, 3.0) == PROBE_FROM + 100 + 2850
    assert planned_steps(cfg, PROBE_FROM + 100, 0.01, 3.0) == 10_000  # never past --steps


def test_shipped_judge_tells_buildings_from_houses():
    judge = load_judge()
    assert (default_folder() / "judge.json").is_file()
    images, labels = make_images(np.arange(300), FRESH_SEED)
    assert (predict_proba(judge, images).argmax(1) == labels).mean() > 0.9
    noise = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    assert (predict_proba(judge, noise)[:, :2].max(1) < 0.9).mean() > 0.9  # noise: rarely a confident class


def test_missing_judge_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m novarch_batch.training.judge"):
        load_judge(tmp_path)


def test_shipped_scene_reader_reads_what_a_scene_shows():
    reader = load_scene_reader()
    assert (default_folder("novarch-scene") / "scene.json").is_file()
    images, _ = make_images(np.arange(400), FRESH_SEED)
    truth, read = scene_factors(np.arange(400), FRESH_SEED), read_factors(reader, images)
    r2 = dict(zip(SCENE_FACTORS, 1 - ((read - truth) ** 2).mean(0) / truth.var(0)))
    assert min(r2[name] for name in ("house", "dusk", "horizon", "left", "width", "height", "top")) > 0.9, r2
    assert np.abs(read - truth)[:, SCENE_FACTORS.index("width")].mean() < 1.0  # pixels


def test_the_two_feature_spaces_weigh_softness_and_scenes_differently():
    # pool real houses of one seed: a 25% blur changes how they are drawn, keeping only daytime
    # scenes changes what they show; the judge's FD weighs the first, the scene FD the second
    pool, labels = make_images(np.arange(2400), FRESH_SEED)
    dusk = scene_factors(np.arange(2400), FRESH_SEED)[:, SCENE_FACTORS.index("dusk")] == 1
    houses = pool[labels == 1][:500]
    x = houses.astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = np.rint(0.75 * x + 0.25 * sum(padded[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)) / 9)
    soft = evaluate_images(blurred.astype(np.uint8), "house")
    daytime = evaluate_images(pool[(labels == 1) & ~dusk][:500], "house")
    assert soft["fd_ratio"] > 5 and soft["fd_scene_ratio"] < 2, soft
    assert daytime["fd_scene_ratio"] > 10 and daytime["scene_mean_shift"]["dusk"] < -0.5, daytime


def test_missing_scene_reader_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m novarch_batch.training.scene"):
        load_scene_reader(tmp_path)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, rng.normal(size=(500, 16)) + 1.0) > 10  # mean shift of 1 in 16 dims: ~16


def test_nearest_l2_finds_copies():
    images, _ = make_images(np.arange(50), 0)
    np.testing.assert_allclose(nearest_l2(images[:3], images), 0, atol=1e-4)  # cdist rounds at ~1e-6
    assert (nearest_l2(images[:3], images, exclude_self=True) > 0.5).all()


def test_evaluate_real_images_meets_every_target():
    images, labels = make_images(np.arange(200), FRESH_SEED)
    m = evaluate_images(images, "any")
    assert m["purity"] > 0.95 and 0.4 <= m["balance"]["house"] <= 0.6 and m["conditional_accuracy"] is None
    assert min(m["nearest_train_l2"]) > 0.5  # fresh images are not copies of training images
    houses = evaluate_images(images[labels == 1], "house")
    assert houses["conditional_accuracy"] > 0.95 and houses["balance"] is None
    assert 0 < houses["fd"] < 3 * houses["fd_floor"]  # against real houses only
    assert 0 < houses["fd_scene"] < 3 * houses["fd_scene_floor"] and max(map(abs, houses["scene_mean_shift"].values())) < 0.5  # ~100 houses: 0.1 sd of noise
    with pytest.raises(ValueError, match="building, house or any"):
        evaluate_images(images, "castle")


def test_render_grid(tmp_path):
    images, labels = make_images(np.arange(20), 0)
    out = render_grid(images, [["building", "house"][k] for k in labels], tmp_path / "grid.png", cols=8)
    with Image.open(out) as im:
        im.load()
        assert im.size == (8 * 66 + 2, 3 * 76 + 2)
    with pytest.raises(ValueError, match="one per image"):
        render_grid(images, ["house"], tmp_path / "bad.png")


def test_render_explain(tmp_path):
    out = render_explain(ImageGenerator(default_model_dir(), "cpu"), tmp_path / "explain.png", steps=8)
    with Image.open(out) as im:
        im.load()
        assert im.width > FRAMES * 32 * SCALE and im.height > 3 * 32 * SCALE


def test_unconditional_samples_end_at_the_two_peaks(tmp_path):
    """The seed's promise with the shipped model: each trajectory ends a building or a house."""
    paths = house_trajectories(ImageGenerator(default_model_dir(), "cpu"), 24)
    assert paths.shape == (24, 10) and ((paths >= 0) & (paths <= 1)).all()
    assert share_between(paths) <= 1 / 24  # 0.2% of 500 in MODEL.md
    final = paths[:, -1]
    assert (final > 0.9).any() and (final < 0.1).any()  # both peaks are reached
    out = render_peaks(paths, tmp_path / "peaks.png")
    assert Image.open(out).size[0] > 600
