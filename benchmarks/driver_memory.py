"""Driver memory at 1x and 10x the image count: it must not grow with --count.

Runs `novarch-batch submit --json` (1 step, no guidance: the driver's work per shard is the
same whatever the sampling costs) and reads the driver's own peak RSS from the report.

    python -m benchmarks.driver_memory --count 1000 --factor 10
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from benchmarks.common import machine, save

CLI = str(Path(sys.executable).with_name("novarch-batch"))


@click.command()
@click.option("--count", default=1000, show_default=True)
@click.option("--factor", default=10, show_default=True)
@click.option("--out", default="benchmarks/results/driver_memory.json", show_default=True)
def main(count, factor, out):
    rows = []
    for n in (count, count * factor):
        dest = tempfile.mkdtemp(prefix="nvmem-")
        proc = subprocess.run([CLI, "submit", "--count", str(n), "--steps", "1", "--guidance", "1", "--out", dest, "--json"],
                              capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        report = json.loads(proc.stdout)
        rows.append({"count": n, "shards": report["shards"], "driver_peak_rss_mb": report["driver_peak_rss_mb"], "seconds": report["seconds"]})
        print(f"{n:>8} images, {report['shards']:>4} shards: driver peak RSS {report['driver_peak_rss_mb']:.0f} MB ({report['seconds']:.0f} s)", flush=True)
    save({"machine": machine(), "rows": rows}, out)


if __name__ == "__main__":
    main()
