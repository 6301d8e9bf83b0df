"""Scale-up timeline on Ray's real autoscaler (fake multi-node provider, GPU nodes from zero).

    python -m benchmarks.scale_up --runs 3 --out benchmarks/results/scale_up-cpu.json

Each run starts a fresh cluster with no worker node, then `submit --gpus N --ray-address …`; the
fake nodes register one GPU each and the actors compute on the CPU (NOVARCH_FORCE_DEVICE=cpu), so
the numbers are the scheduling path's: seconds from the driver's start to each actor being
ready, and images/s in each interval between actors joining (from the shards' commit times).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.common import machine, median, save
from tests.fake_cluster import fake_cluster

CLI = str(Path(sys.executable).with_name("novarch-batch"))


def one_run(gpus: int, count: int, steps: int, shard_size: int) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NOVARCH_FORCE_DEVICE")}
    env["RAY_AUTH_MODE"] = "token"
    with fake_cluster({"CPU": 1, "GPU": 1}, max_workers=gpus, env=env) as cluster, tempfile.TemporaryDirectory() as out:
        done = subprocess.run([CLI, "submit", "--ray-address", cluster.gcs_address, "--out", out, "--json", "--gpus", str(gpus),
                               "--count", str(count), "--steps", str(steps), "--shard-size", str(shard_size), "--batch-size", str(shard_size)],
                              capture_output=True, text=True, timeout=900, env={**env, "NOVARCH_FORCE_DEVICE": "cpu"})
        if done.returncode:
            raise click.ClickException(done.stderr.strip().splitlines()[-1])
        report = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
        commits = sorted(p.stat().st_mtime - report["started_at"] for p in (Path(out) / report["job_id"] / "shards").glob("*.parquet"))
    ready = report["actor_ready_seconds"]
    edges = ready + [report["seconds"]]
    rates = []
    for k in range(len(ready)):  # images/s while k + 1 actors were ready
        lo, hi = edges[k], edges[k + 1]
        shards = sum(lo <= c < hi for c in commits)
        rates.append({"actors": k + 1, "from_s": round(lo, 2), "to_s": round(hi, 2),
                      "images_per_second": round(shards * shard_size / (hi - lo), 1) if hi > lo else None})
    return {"actor_ready_seconds": ready, "first_ready_s": ready[0], "last_ready_s": ready[-1], "job_seconds": report["seconds"],
            "images_per_second": report["images_per_second"], "intervals": rates}


@click.command()
@click.option("--gpus", default=3, show_default=True)
@click.option("--count", default=480, show_default=True)
@click.option("--steps", default=8, show_default=True)
@click.option("--shard-size", default=8, show_default=True)
@click.option("--runs", default=3, show_default=True)
@click.option("--out", default="benchmarks/results/scale_up-cpu.json", show_default=True)
def main(gpus, count, steps, shard_size, runs, out):
    results = []
    for run in range(runs):
        started = time.perf_counter()
        results.append(one_run(gpus, count, steps, shard_size))
        print(f"run {run + 1}: {json.dumps(results[-1])} ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = {key: median([r[key] for r in results]) for key in ("first_ready_s", "last_ready_s", "job_seconds", "images_per_second")}
    print(json.dumps(summary))
    save({"machine": machine(), "gpus": gpus, "count": count, "steps": steps, "shard_size": shard_size, "median": summary, "runs": results}, out)


if __name__ == "__main__":
    main()
