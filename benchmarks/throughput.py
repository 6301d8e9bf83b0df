"""End-to-end throughput, side by side in one run: bare sampler vs novarch-batch vs the Ray Data recipe.

Each measurement is a fresh process (Ray start and model load included in wall clock), runs
are interleaved so drift hits every variant alike, and the table shows medians.

    python -m benchmarks.throughput --count 2000 --steps 5 --runs 3 --out benchmarks/results/throughput.json
    python -m benchmarks.throughput --count 500 --sampler dpmpp-2m-sde --steps 10 --guidance 2 \
        --recipe-scheduler ddim --recipe-steps 50 --no-bare --no-s3 --judge      # quality-matched
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.common import machine, median, save

PY = sys.executable
CLI = str(Path(sys.executable).with_name("novarch-batch"))


def timed(cmd: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def settings_flags(count, sampler, steps, guidance, batch_size) -> list[str]:
    return ["--count", str(count), "--steps", str(steps), "--guidance", str(guidance), "--batch-size", str(batch_size)]


ALL_STEPS_GUIDED = ["--guidance-interval", "all"]  # the recipe guides every step: ours and bare do the same work


def bare_per_core(count: int, sampler: str, steps: int, guidance: float, batch_size: int, env: dict) -> float:
    """One 1-thread bare sampler per core at once (count split between them): what this machine's
    cores sample with no system around them, the layout novarch-batch's CPU actors use."""
    cores = os.cpu_count() or 1
    share = -(-count // cores)
    cmd = [PY, "-m", "benchmarks.bare_sampler", *settings_flags(share, sampler, steps, guidance, batch_size), *ALL_STEPS_GUIDED,
           "--sampler", sampler, "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(cores)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"bare sampler failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return sum(r["images"] for r in results) / max(r["seconds"] for r in results)


def judge_outputs(ours_root: Path, recipe_root: Path, class_name: str) -> dict:
    """The judge's purity and FD / floor (novarch_batch.training.evaluate) for both outputs of the same run."""
    import io

    import numpy as np
    import pyarrow.dataset as ds
    from PIL import Image

    from novarch_batch.training.evaluate import evaluate_images

    decode = lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    ours = np.stack([decode(p.read_bytes()) for p in sorted(ours_root.glob("*/images/*/*.png"))])
    recipe = np.stack([decode(b) for b in ds.dataset(str(recipe_root)).to_table(columns=["png"]).column("png").to_pylist()])
    pick = lambda m: {k: m[k] for k in ("purity", "conditional_accuracy", "fd", "fd_floor", "fd_ratio")}
    return {"ours": pick(evaluate_images(ours, class_name)), "recipe": pick(evaluate_images(recipe, class_name))}


@click.command()
@click.option("--count", default=2000, show_default=True)
@click.option("--sampler", default="ddpm", show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--guidance", default=1.0, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--recipe-scheduler", default=None, help="The recipe's diffusers scheduler (default: the same as --sampler).")
@click.option("--recipe-steps", default=None, type=int, help="The recipe's steps (default: --steps); e.g. ddim 50 for quality-matched runs.")
@click.option("--bare/--no-bare", default=True, show_default=True, help="Measure the bare sampler: one process on every thread, and one 1-thread process per core.")
@click.option("--judge", is_flag=True, help="Judge the first run's local outputs (purity, FD / floor) for a quality-matched comparison.")
@click.option("--format", "output_format", type=click.Choice(["files", "parquet", "webdataset"]), default="files", show_default=True,
              help="novarch-batch's --format (parquet and webdataset: one object per shard).")
@click.option("--local/--no-local", default=True, show_default=True, help="Measure into a local folder.")
@click.option("--runs", default=3, show_default=True)
@click.option("--s3/--no-s3", default=True, show_default=True, help="Also measure into the embedded SeaweedFS.")
@click.option("--out", default="benchmarks/results/throughput.json", show_default=True)
def main(count, sampler, steps, guidance, batch_size, recipe_scheduler, recipe_steps, bare, judge, output_format, local, runs, s3, out):
    env = {**os.environ, "RAY_ADDRESS": ""}
    work = Path(tempfile.mkdtemp(prefix="nvbench-"))
    server = None
    if s3:
        from novarch_batch.pipeline.seaweed import EmbeddedS3

        server = EmbeddedS3(work / "s3").start()
        env.update(server.env())
    threads = os.cpu_count()
    common = settings_flags(count, sampler, steps, guidance, batch_size)
    samples: dict[str, list[dict]] = {}
    try:
        for run in range(runs):
            if bare:
                _, result = timed([PY, "-m", "benchmarks.bare_sampler", *common, *ALL_STEPS_GUIDED, "--sampler", sampler,
                                   "--threads", str(threads)], env)
                samples.setdefault("bare", []).append({"ips": result["images_per_second"]})
                samples.setdefault("bare_per_core", []).append({"ips": bare_per_core(count, sampler, steps, guidance, batch_size, env)})
            targets = ([("local", str(work / f"ours-{run}"))] if local else []) + ([("s3", f"s3://{server.bucket}/ours-{run}")] if server else [])
            embed = ["--format", output_format]
            for name, dest in targets:
                wall, report = timed([CLI, "submit", *common, *ALL_STEPS_GUIDED, *embed, "--class", "building", "--sampler", sampler,
                                      "--out", dest, "--json"], env)
                steady = report["images_sampled"] / (report["seconds"] - report["startup_seconds"])
                samples.setdefault(f"ours_{name}", []).append({"wall_ips": count / wall, "steady_ips": steady, "wall": wall})
            recipe_targets = ([("local", str(work / f"recipe-{run}"))] if local else []) + ([("s3", f"s3://{server.bucket}/recipe-{run}")] if server else [])
            for name, dest in recipe_targets:
                recipe = settings_flags(count, sampler, recipe_steps or steps, guidance, batch_size)
                wall, result = timed([PY, "-m", "benchmarks.recipe_ray_data", *recipe, "--scheduler", recipe_scheduler or sampler,
                                      "--threads", str(threads), "--out", dest], env)
                samples.setdefault(f"recipe_{name}", []).append({"wall_ips": count / wall, "after_ray_ips": count / result["seconds_after_ray_up"], "wall": wall})
            print(f"run {run + 1}/{runs} done", flush=True)
    finally:
        if server:
            server.stop()
    quality = judge_outputs(work / "ours-0", work / "recipe-0", "building") if judge and local else None
    med = {k: {m: median([s[m] for s in v]) for m in v[0]} for k, v in samples.items()}
    bare_ips = med["bare"]["ips"] if bare else float("nan")
    core_ips = med["bare_per_core"]["ips"] if bare else float("nan")
    summary = {"bare_ips": bare_ips, "bare_per_core_ips": core_ips, "quality": quality}
    print(f"\nmachine: {machine()['cpu']}, {threads} threads; {count} images, {sampler}, {steps} steps, guidance {guidance}, batch {batch_size}; "
          f"recipe: {recipe_scheduler or sampler}, {recipe_steps or steps} steps; medians of {runs}")
    print("efficiency: against the bare sampler in one process on every thread, and (per core) against one 1-thread process per core")
    print(f"{'variant':14} {'wall img/s':>11} {'steady img/s':>13} {'wall eff.':>9} {'steady eff.':>11} {'per core: wall':>15} {'steady':>7}")
    print(f"{'bare sampler':14} {bare_ips:11.1f} {'':>13} {'1.00':>9}")
    print(f"{'bare per core':14} {core_ips:11.1f} {'':>13} {core_ips / bare_ips:9.2f}")
    for key in [k for k in med if not k.startswith("bare")]:
        m = med[key]
        steady = m.get("steady_ips", m.get("after_ray_ips"))
        summary[key] = {**m, "wall_efficiency": m["wall_ips"] / bare_ips, "steady_efficiency": steady / bare_ips,
                        "wall_efficiency_per_core": m["wall_ips"] / core_ips, "steady_efficiency_per_core": steady / core_ips}
        print(f"{key:14} {m['wall_ips']:11.1f} {steady:13.1f} {m['wall_ips'] / bare_ips:9.2f} {steady / bare_ips:11.2f} "
              f"{m['wall_ips'] / core_ips:15.2f} {steady / core_ips:7.2f}")
    for name in ("local", "s3"):
        if f"ours_{name}" in med:
            speedup = med[f"ours_{name}"]["wall_ips"] / med[f"recipe_{name}"]["wall_ips"]
            summary[f"speedup_{name}"] = speedup
            steady_speedup = med[f"ours_{name}"]["steady_ips"] / med[f"recipe_{name}"]["after_ray_ips"]
            summary[f"steady_speedup_{name}"] = steady_speedup
            print(f"speed-up over the recipe ({name}): {speedup:.2f} wall, {steady_speedup:.2f} after start-up")
    if quality:
        for who, q in quality.items():
            print(f"quality ({who}, run 1, building): purity {q['purity']:.3f}, accuracy {q['conditional_accuracy']:.3f}, "
                  f"FD {q['fd']:.2f} / floor {q['fd_floor']:.2f} = {q['fd_ratio']:.1f}")
    save({"machine": machine(), "settings": {"count": count, "sampler": sampler, "steps": steps, "guidance": guidance,
          "batch_size": batch_size, "runs": runs, "threads": threads, "recipe_scheduler": recipe_scheduler or sampler,
          "recipe_steps": recipe_steps or steps, "format": output_format, "judge": judge}, "samples": samples, "summary": summary}, out)


if __name__ == "__main__":
    main()
