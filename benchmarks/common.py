"""Shared helpers for the benchmark scripts: machine description, medians, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rate_summary(rates: dict[str, list[float]], digits: int = 0) -> dict:
    """Each variant's median and every repeat's rate (rounded to `digits`), for a results file."""
    return {name: {"median": median(v), "all": [round(x, digits) if digits else round(x) for x in v]} for name, v in rates.items()}


def echo_medians(rates: dict[str, list[float]], unit: str = "images/s") -> None:
    for name, v in rates.items():
        print(f"{name}: {median(v):,.0f} {unit}")


def save(results: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")


JOB_SAMPLING_FLAGS = ("sampler", "steps", "guidance", "guidance_interval", "final_timestep", "spacing")


def job_sampling_options(command):
    """submit's own sampling flags, with submit's defaults, for a benchmark that samples rows as jobs do."""
    from novarch_batch.pipeline.cli_options import sampling_option

    for name in reversed(JOB_SAMPLING_FLAGS):  # click lists options in the order they are applied, innermost first
        command = sampling_option(name)(command)
    return command
