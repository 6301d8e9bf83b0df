"""Model commands: `evaluate`, `preview` and `explain` (the maths lives in training/)."""
from __future__ import annotations

import io
import json
import os

import click
import numpy as np


def job_images(url: str, limit: int | None = None) -> tuple[np.ndarray, list[str], dict]:
    """uint8 (N, 32, 32, 3) images of a job (all, or the first `limit` by id), their requested class, job.json."""
    from PIL import Image, UnidentifiedImageError

    from novarch_batch.pipeline.reader import DamagedShard, JobView
    from novarch_batch.storage import StorageError

    repair = f"`novarch-batch verify {url}` says what is damaged and how to repair it"
    view = JobView.open(url)
    images, labels = [], []
    try:
        for row in view.rows(["id", "image_key", "class_label", "image"]):
            try:
                images.append(np.asarray(Image.open(io.BytesIO(view.image_bytes(row))).convert("RGB")))
            except StorageError as e:  # gone from storage, or the store refused: its own words name the key
                raise click.ClickException(f"{e}; {repair}") from None
            except (KeyError, OSError, UnidentifiedImageError) as e:
                raise click.ClickException(f"{url}/{row['image_key']}: not a readable image ({type(e).__name__}); {repair}") from None
            labels.append(row["class_label"])
            if limit and len(images) >= limit:
                break
    except DamagedShard as e:
        raise click.ClickException(f"{e}; {repair}") from None
    if not images:
        raise click.ClickException(f"{url}: no committed shards yet; wait for the job or re-run it")
    return np.stack(images), labels, view.job


def png_file(ctx, param, value: str) -> str:
    """--out of a picture: a .png whose folder exists or can be made, checked before any work."""
    from pathlib import Path

    if Path(value).suffix.lower() != ".png":
        stem = Path(value).stem
        raise click.BadParameter(f"must name a .png file, got '{value}' (e.g. {stem if stem and not stem.startswith('.') else 'grid'}.png)")
    if Path(value).expanduser().is_dir():
        raise click.BadParameter(f"'{value}' is a folder; name a .png file (e.g. {Path(value) / 'grid.png'})")
    folder = Path(value).expanduser().absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise click.BadParameter(f"cannot write '{value}': {existing} is not a writable folder")
    return value


@click.command()
@click.argument("job_url")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
def evaluate(job_url, as_json):
    """Judge a job's images: purity, class accuracy or balance, Fréchet distance over the judge's features and over the scene factors (MODEL.md), memorisation."""
    from novarch_batch.storage import StorageError
    from novarch_batch.training.evaluate import STABLE_COUNT, evaluate_images, format_report

    try:
        images, _, job = job_images(job_url)
    except StorageError as e:
        raise click.ClickException(str(e)) from None  # one line and exit 1 (cli.main)
    if len(images) < 2:
        raise click.ClickException(f"{job_url}: {len(images)} image; the Fréchet distance needs at least 2 (1,000 give a stable one)")
    if len(images) < STABLE_COUNT:  # on stderr, so that --json stays one object
        click.echo(f"note: {len(images)} images; below {STABLE_COUNT:,} the Fréchet distances and their floors swing "
                   f"widely (MODEL.md's targets are judged on {STABLE_COUNT:,} per setting)", err=True)
    metrics = evaluate_images(images, job["spec"]["sampling"]["class_name"])
    click.echo(json.dumps(metrics) if as_json else format_report(metrics))


@click.command()
@click.argument("job_url")
@click.option("--out", "out_png", default="grid.png", show_default=True, callback=png_file, help="PNG file to write.")
@click.option("--count", default=128, show_default=True, type=click.IntRange(min=1), help="Images on the sheet (the first ids).")
@click.option("--cols", default=16, show_default=True, type=click.IntRange(min=1), help="Images per row of the sheet.")
def preview(job_url, out_png, count, cols):
    """A contact sheet of a job's images, labelled with the requested class when it was conditional."""
    from novarch_batch.storage import StorageError
    from novarch_batch.training.preview import render_grid

    try:
        images, labels, job = job_images(job_url, count)
    except StorageError as e:
        raise click.ClickException(str(e)) from None  # one line and exit 1 (cli.main)
    conditional = job["spec"]["sampling"]["class_name"] != "any"
    path = render_grid(images, labels if conditional else None, out_png, cols=cols)
    click.echo(f"wrote {path} ({len(images)} images)")


@click.command()
@click.option("--out", "out_png", default="explain.png", show_default=True, callback=png_file, help="PNG file to write (the peaks go beside it, NAME-peaks.png).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Base seed of the pictured samples, the forward noise and the peaks' trajectories, as submit's --seed.")
@click.option("--model", default=None, metavar="NAME|PATH", help="Model folder or shipped name (default: the shipped NovArch-tiny).")
@click.option("--trajectories", default=500, show_default=True, type=click.IntRange(min=0),
              help="Unconditional samples whose judged p(house) is drawn step by step (0: no peaks picture).")
def explain(out_png, seed, model, trajectories):
    """Forward diffusion of a real image into noise, reverse diffusion from noise to a building and a
    house, and the two peaks: unconditional samples drift to a building or a house, nothing in between."""
    from novarch_batch.storage import StorageError
    from novarch_batch.training.explain import render_explain
    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.model import ModelError
    from novarch_batch.workers.model_cache import fetch_model_folder
    from novarch_batch.workers.spec import SHIPPED_MODEL

    try:
        generator = ImageGenerator(fetch_model_folder(model or SHIPPED_MODEL), "cpu")
    except (ModelError, StorageError) as e:
        raise click.ClickException(str(e)) from None  # one line and exit 1 (cli.main)
    click.echo(f"wrote {render_explain(generator, out_png, seed=seed)}")
    if trajectories:
        from pathlib import Path

        from novarch_batch.training.peaks import BETWEEN, house_trajectories, render_peaks, share_between

        from novarch_batch.workers.spec import SamplingConfig

        click.echo(f"judging {trajectories} unconditional trajectories step by step (the peaks)…", err=True)
        paths = house_trajectories(generator, trajectories, SamplingConfig(seed=seed))
        peaks_png = Path(out_png).with_name(Path(out_png).stem + "-peaks.png")
        click.echo(f"wrote {render_peaks(paths, peaks_png)}: {share_between(paths):.1%} of {trajectories} unconditional "
                   f"samples end between the peaks ({BETWEEN[0]} < p(house) < {BETWEEN[1]})")
