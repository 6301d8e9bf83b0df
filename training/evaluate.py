"""Score generated images with the judge: purity, class accuracy or balance, Fréchet distance, memorisation."""
from __future__ import annotations

import numpy as np

from novarch_batch.training.dataset import SCENE_FACTORS, make_images
from novarch_batch.training.export import CLASSES
from novarch_batch.training.judge import JUDGE_CLASSES, Judge, features, load_judge, predict_proba
from novarch_batch.training.metrics import frechet_distance, nearest_l2
from novarch_batch.training.scene import SceneReader, load_scene_reader, scene_features
from novarch_batch.training.train import TRAIN_DATA_SEED

REAL_SEED = 3000  # real reference set; disjoint from novarch_batch.training (1000) and judge (2000, 2001)
FLOOR_SEEDS = (3001, 3002, 3003, 3004)  # independent real sets; the floor is their median distance to it
CONFIDENT = 0.9  # a judge probability at least this high counts as a clear building or house
N_TRAIN_REFERENCE = 5000  # training images searched for each sample's nearest neighbour
N_NEAREST = 8  # samples checked for memorisation
STABLE_COUNT = 1000  # images per setting behind MODEL.md's targets; fewer give Fréchet distances that swing


def evaluate_images(images_uint8: np.ndarray, requested_class: str, judge: Judge | None = None,
                    reader: SceneReader | None = None) -> dict:
    """Metrics for uint8 (N, 32, 32, 3) images sampled for `requested_class` (building, house or any).

    Two Fréchet distances, each with its real-vs-real floor: over the judge's features (`fd`) and
    over the scene factors the scene reader sees (`fd_scene`, training/scene.py says why).
    """
    images = np.asarray(images_uint8)
    if requested_class not in (*CLASSES, "any"):
        raise ValueError(f"requested_class must be one of {', '.join(CLASSES)} or any, got {requested_class!r}")
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or len(images) < 2:
        raise ValueError(f"need at least 2 uint8 images of shape (32, 32, 3), got {images.dtype} {images.shape}")
    judge, reader = judge or load_judge(), reader or load_scene_reader()
    n = len(images)
    probs = predict_proba(judge, images)  # (N, 3): building, house, neither
    judged = probs.argmax(1)
    shares = {name: float((judged == k).mean()) for k, name in enumerate(JUDGE_CLASSES)}
    real = real_images(n, requested_class, REAL_SEED)
    floor_sets = [real_images(n, requested_class, s) for s in FLOOR_SEEDS]
    fd, fd_floor = distance_and_floor(lambda x: features(judge, x), features(judge, images), features(judge, real), floor_sets)
    scene_images, scene_real = scene_features(reader, images), scene_features(reader, real)
    fd_scene, fd_scene_floor = distance_and_floor(lambda x: scene_features(reader, x), scene_images, scene_real, floor_sets)
    shift = scene_images.mean(0) - scene_real.mean(0)  # in real spreads
    train_ref, _ = make_images(np.arange(N_TRAIN_REFERENCE), TRAIN_DATA_SEED)
    k = min(N_NEAREST, n)
    return {
        "count": n,
        "requested_class": requested_class,
        "purity": float((probs[:, :len(CLASSES)].max(1) >= CONFIDENT).mean()),
        "conditional_accuracy": shares[requested_class] if requested_class in CLASSES else None,
        "balance": {c: shares[c] for c in CLASSES} if requested_class == "any" else None,
        "class_shares": shares,
        "fd": fd,
        "fd_floor": fd_floor,
        "fd_ratio": fd / fd_floor if fd_floor > 0 else None,
        "fd_scene": fd_scene,
        "fd_scene_floor": fd_scene_floor,
        "fd_scene_ratio": fd_scene / fd_scene_floor if fd_scene_floor > 0 else None,
        # how far the samples' mean scene is from the real one, per factor, in real standard deviations
        "scene_mean_shift": {name: round(float(v), 3) for name, v in zip(SCENE_FACTORS, shift)},
        # L2 over [0, 1] pixels; a sample far closer to a training image than real images are is copied
        "nearest_train_l2": nearest_l2(images[:k], train_ref).round(3).tolist(),
        "nearest_train_l2_real_reference": nearest_l2(real[:k], train_ref).round(3).tolist(),
    }


def distance_and_floor(embed, image_feats: np.ndarray, real_feats: np.ndarray, floor_sets: list[np.ndarray]) -> tuple[float, float]:
    """FD of the samples' features to the real set's in one feature space, and the floor: the median
    FD of independent real sets (mapped by `embed`) to the real set (with two classes the features are
    bimodal, so one pair's distance swings with its class shares: at N=1000 a 2-point share
    difference moves it ~5x)."""
    floor = float(np.median([frechet_distance(real_feats, embed(other)) for other in floor_sets]))
    return frechet_distance(image_feats, real_feats), floor


def real_images(n: int, requested_class: str, seed: int) -> np.ndarray:
    """n real images of the requested class (both classes for "any"), deterministic per seed."""
    if requested_class == "any":
        return make_images(np.arange(n), seed)[0]
    want, found, start = CLASSES.index(requested_class), [], 0
    while sum(len(f) for f in found) < n:
        images, labels = make_images(np.arange(start, start + 2 * n), seed)
        found.append(images[labels == want])
        start += 2 * n
    return np.concatenate(found)[:n]


def format_report(metrics: dict) -> str:
    """Human-readable lines for the CLI."""
    lines = [f"images: {metrics['count']} (requested class: {metrics['requested_class']})",
             f"purity (judge p >= {CONFIDENT}): {metrics['purity']:.3f}"]
    if metrics["conditional_accuracy"] is not None:
        lines.append(f"conditional accuracy: {metrics['conditional_accuracy']:.3f}")
    lines.append("class shares: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["class_shares"].items()))
    lines.append(f"Fréchet distance: {metrics['fd']:.3f} (real-vs-real floor {metrics['fd_floor']:.3f}, "
                 f"ratio {metrics['fd_ratio']:.2f})")
    largest = sorted(metrics["scene_mean_shift"].items(), key=lambda kv: -abs(kv[1]))[:3]
    lines.append(f"scene Fréchet distance: {metrics['fd_scene']:.4f} (floor {metrics['fd_scene_floor']:.4f}, "
                 f"ratio {metrics['fd_scene_ratio']:.2f}); largest mean shifts: "
                 + ", ".join(f"{name} {v:+.2f} sd" for name, v in largest))
    lines.append(f"nearest training image L2: samples {_short(metrics['nearest_train_l2'])}; "
                 f"real images {_short(metrics['nearest_train_l2_real_reference'])}")
    return "\n".join(lines)


def _short(values: list[float]) -> str:
    return "min {:.2f} / median {:.2f}".format(min(values), float(np.median(values)))
