"""The seed's picture: unconditional trajectories drift to a building or a house, nothing in between.

At every step of `submit`'s own sampler the predicted clean image x0 is shown to the judge. Its
p(house) between the two classes, p(house) / (p(building) + p(house)), is used rather than the
3-way p(house): at pure noise x0 is a blur the judge calls "neither", which would pin the 3-way value
near 0, while the 2-way one shows which way the blur leans. It ends at one of the two peaks, 0 or 1.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from novarch_batch.training.judge import JUDGE_CLASSES, Judge, load_judge, predict_proba
from novarch_batch.workers.generate import ImageGenerator, to_uint8
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import ANY_CLASS, SamplingConfig

BUILDING, HOUSE = JUDGE_CLASSES.index("building"), JUDGE_CLASSES.index("house")
BETWEEN = (0.1, 0.9)  # a final p(house) in this open interval is neither a clear building nor a clear house
W, H, PAD, HIST_W = 640, 360, 44, 120


def house_trajectories(generator: ImageGenerator, count: int, sampling: SamplingConfig | None = None,
                       judge: Judge | None = None, batch: int = 250) -> np.ndarray:
    """(count, steps) judge p(house) / (p(building) + p(house)) of the predicted x0 at each step, for
    images 0..count-1 of an unconditional `submit` with these sampling settings (the defaults unless given)."""
    sampling = replace(sampling or SamplingConfig(), class_name=ANY_CLASS)
    judge = judge or load_judge()
    rows = []
    for start in range(0, count, batch):
        seeds = [sample_seed(sampling.seed, i) for i in range(start, min(count, start + batch))]
        steps: list[np.ndarray] = []
        generator.sample(seeds, sampling, callback=lambda i, x, x0: steps.append(
            house_share(predict_proba(judge, to_uint8(x0.float().cpu())))))
        rows.append(np.stack(steps, axis=1))
    return np.concatenate(rows)


def house_share(probs: np.ndarray) -> np.ndarray:
    """p(house) / (p(building) + p(house)) from the judge's (N, 3) probabilities."""
    return probs[:, HOUSE] / np.maximum(probs[:, HOUSE] + probs[:, BUILDING], 1e-12)


def share_between(trajectories: np.ndarray) -> float:
    """Share of trajectories whose final p(house) lies strictly between the peaks."""
    final = trajectories[:, -1]
    return float(((final > BETWEEN[0]) & (final < BETWEEN[1])).mean())


def render_peaks(trajectories: np.ndarray, out_png) -> Path:
    """Lines of p(house) against step, and the histogram of where they end, in one PNG."""
    n, steps = trajectories.shape
    sheet = Image.new("RGB", (W + HIST_W + 2 * PAD, H + 2 * PAD), (255, 255, 255))
    lines = Image.new("RGBA", sheet.size, (0, 0, 0, 0))
    draw, ink = ImageDraw.Draw(sheet), ImageDraw.Draw(lines)
    x_of = lambda step: PAD + W * step / max(steps - 1, 1)
    y_of = lambda p: PAD + H * (1 - p)
    for row in trajectories:
        colour = (200, 60, 40, 40) if row[-1] >= 0.5 else (40, 80, 200, 40)  # house red, building blue
        ink.line([(x_of(s), y_of(p)) for s, p in enumerate(row)], fill=colour, width=1)
    sheet.paste(lines, (0, 0), lines)
    for p in BETWEEN:
        draw.line([(PAD, y_of(p)), (PAD + W, y_of(p))], fill=(150, 150, 150))
    draw.rectangle([PAD, PAD, PAD + W, PAD + H], outline=(0, 0, 0))
    counts, _ = np.histogram(trajectories[:, -1], bins=20, range=(0, 1))
    left, bar_h = PAD + W + 10, H / 20
    for k, c in enumerate(counts):  # bin k covers p in [k/20, (k+1)/20): drawn at its height on the p axis
        top = y_of((k + 1) / 20)
        draw.rectangle([left, top, left + (HIST_W - 20) * c / max(counts.max(), 1), top + bar_h - 1], fill=(90, 90, 90))
    draw.text((PAD, 8), f"judge p(house | building or house) of the predicted image, {n} unconditional samples; "
                        f"{share_between(trajectories):.1%} end between {BETWEEN[0]} and {BETWEEN[1]}", fill=(0, 0, 0))
    draw.text((PAD, PAD + H + 8), f"step 1 (pure noise) ... step {steps} (the image)", fill=(0, 0, 0))
    draw.text((left, PAD + H + 8), "where they end", fill=(0, 0, 0))
    for p in (0.0, 0.5, 1.0):
        draw.text((6, y_of(p) - 6), f"{p:.1f}", fill=(0, 0, 0))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
