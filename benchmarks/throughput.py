"""End-to-end throughput, side by side in one run: bare sampler vs novarch-batch vs the Ray Data recipe.

Each measurement is a fresh process (Ray start and model load included in wall clock), runs
are interleaved so drift hits every variant alike, and the table shows medians.

    python -m benchmarks.throughput --count 2000 --steps 5 --runs 3 --out benchmarks/results/throughput.json
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


@click.command()
@click.option("--count", default=2000, show_default=True)
@click.option("--sampler", default="ddpm", show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--guidance", default=1.0, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--recipe-scheduler", default=None, help="The recipe's diffusers scheduler (default: the same as --sampler).")
@click.option("--recipe-steps", default=None, type=int, help="The recipe's steps (default: --steps); e.g. ddim 50 for quality-matched runs.")
@click.option("--bare/--no-bare", default=True, show_default=True)
@click.option("--embed-images", is_flag=True, help="Run novarch-batch with --embed-images (one object per shard).")
@click.option("--local/--no-local", default=True, show_default=True, help="Measure into a local folder.")
@click.option("--runs", default=3, show_default=True)
@click.option("--s3/--no-s3", default=True, show_default=True, help="Also measure into the embedded SeaweedFS.")
@click.option("--out", default="benchmarks/results/throughput.json", show_default=True)
def main(count, sampler, steps, guidance, batch_size, recipe_scheduler, recipe_steps, bare, embed_images, local, runs, s3, out):
    env = {**os.environ, "RAY_ADDRESS": ""}
    work = Path(tempfile.mkdtemp(prefix="nvbench-"))
    server = None
    if s3:
        from pipeline.seaweed import EmbeddedS3

        server = EmbeddedS3(work / "s3").start()
        env.update(server.env())
    threads = os.cpu_count()
    common = settings_flags(count, sampler, steps, guidance, batch_size)
    samples: dict[str, list[dict]] = {}
    try:
        for run in range(runs):
            if bare:
                _, result = timed([PY, "-m", "benchmarks.bare_sampler", *common, "--sampler", sampler, "--threads", str(threads)], env)
                samples.setdefault("bare", []).append({"ips": result["images_per_second"]})
            targets = ([("local", str(work / f"ours-{run}"))] if local else []) + ([("s3", f"s3://{server.bucket}/ours-{run}")] if server else [])
            embed = ["--embed-images"] if embed_images else []
            for name, dest in targets:
                wall, report = timed([CLI, "submit", *common, *embed, "--class", "building", "--sampler", sampler, "--out", dest, "--json"], env)
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
    med = {k: {m: median([s[m] for s in v]) for m in v[0]} for k, v in samples.items()}
    bare_ips = med["bare"]["ips"] if bare else float("nan")
    summary = {"bare_ips": bare_ips}
    print(f"\nmachine: {machine()['cpu']}, {threads} threads; {count} images, {sampler}, {steps} steps, guidance {guidance}, batch {batch_size}; "
          f"recipe: {recipe_scheduler or sampler}, {recipe_steps or steps} steps; medians of {runs}")
    print(f"{'variant':14} {'wall img/s':>11} {'steady img/s':>13} {'wall eff.':>9} {'steady eff.':>11}")
    print(f"{'bare sampler':14} {bare_ips:11.1f} {'':>13} {'1.00':>9}")
    for key in [k for k in med if k != "bare"]:
        m = med[key]
        steady = m.get("steady_ips", m.get("after_ray_ips"))
        summary[key] = {**m, "wall_efficiency": m["wall_ips"] / bare_ips, "steady_efficiency": steady / bare_ips}
        print(f"{key:14} {m['wall_ips']:11.1f} {steady:13.1f} {m['wall_ips'] / bare_ips:9.2f} {steady / bare_ips:11.2f}")
    for name in ("local", "s3"):
        if f"ours_{name}" in med:
            speedup = med[f"ours_{name}"]["wall_ips"] / med[f"recipe_{name}"]["wall_ips"]
            summary[f"speedup_{name}"] = speedup
            print(f"speed-up over the recipe ({name}): {speedup:.2f}")
    save({"machine": machine(), "settings": {"count": count, "sampler": sampler, "steps": steps, "guidance": guidance,
          "batch_size": batch_size, "runs": runs, "threads": threads, "recipe_scheduler": recipe_scheduler or sampler,
          "recipe_steps": recipe_steps or steps, "embed_images": embed_images}, "samples": samples, "summary": summary}, out)


if __name__ == "__main__":
    main()
