"""Score generated images with the judge: purity, class accuracy or balance, Fréchet distance, memorisation."""
from __future__ import annotations

import numpy as np

from novarch_batch.training.dataset import make_images
from novarch_batch.training.export import CLASSES
from novarch_batch.training.judge import JUDGE_CLASSES, Judge, features, load_judge, predict_proba
from novarch_batch.training.metrics import frechet_distance, nearest_l2
from novarch_batch.training.train import TRAIN_DATA_SEED

REAL_SEED = 3000  # real reference set; disjoint from novarch_batch.training (1000) and judge (2000, 2001)
FLOOR_SEEDS = (3001, 3002, 3003, 3004)  # independent real sets; the floor is their median distance to it
CONFIDENT = 0.9  # a judge probability at least this high counts as a clear building or house
N_TRAIN_REFERENCE = 5000  # training images searched for each sample's nearest neighbour
N_NEAREST = 8  # samples checked for memorisation


def evaluate_images(images_uint8: np.ndarray, requested_class: str, judge: Judge | None = None) -> dict:
    """Metrics for uint8 (N, 32, 32, 3) images sampled for `requested_class` (building, house or any)."""
    images = np.asarray(images_uint8)
    if requested_class not in (*CLASSES, "any"):
        raise ValueError(f"requested_class must be one of {', '.join(CLASSES)} or any, got {requested_class!r}")
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or len(images) < 2:
        raise ValueError(f"need at least 2 uint8 images of shape (32, 32, 3), got {images.dtype} {images.shape}")
    judge = judge or load_judge()
    n = len(images)
    probs = predict_proba(judge, images)  # (N, 3): building, house, neither
    judged = probs.argmax(1)
    shares = {name: float((judged == k).mean()) for k, name in enumerate(JUDGE_CLASSES)}
    real = real_images(n, requested_class, REAL_SEED)
    real_feats = features(judge, real)
    # the median over several real sets: with two classes the features are bimodal, so one pair's
    # distance swings with its class shares (at N=1000 a 2-point share difference moves it ~5x)
    fd_floor = float(np.median([frechet_distance(real_feats, features(judge, real_images(n, requested_class, s)))
                                for s in FLOOR_SEEDS]))
    train_ref, _ = make_images(np.arange(N_TRAIN_REFERENCE), TRAIN_DATA_SEED)
    k = min(N_NEAREST, n)
    fd = frechet_distance(features(judge, images), real_feats)
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
        # L2 over [0, 1] pixels; a sample far closer to a training image than real images are is copied
        "nearest_train_l2": nearest_l2(images[:k], train_ref).round(3).tolist(),
        "nearest_train_l2_real_reference": nearest_l2(real[:k], train_ref).round(3).tolist(),
    }


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
    lines.append(f"nearest training image L2: samples {_short(metrics['nearest_train_l2'])}; "
                 f"real images {_short(metrics['nearest_train_l2_real_reference'])}")
    return "\n".join(lines)


def _short(values: list[float]) -> str:
    return "min {:.2f} / median {:.2f}".format(min(values), float(np.median(values)))
