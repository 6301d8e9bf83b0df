"""benchmarks/gpu_check.sh rehearsed on the CPU with tiny counts, so a lent GPU's few minutes meet no surprise."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_in_cpu_mode_and_writes_its_results(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "BARE_COUNT": "8", "E2E_COUNT": "8", "BATCH": "8",
           "QUALITY": "0", "E2E_KS": "", "FILES": "0", "ENCODE_IMAGES": "64", "ENCODE_WORKERS": "2", "PYTHON": sys.executable, "E2E_SECONDS": "1",
           "COMPILE": "0", "EXTRA": "0"}  # compiling costs ~25 s here (tests/test_samplers.py compiles); EXTRA: the same script with other flags
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bare = json.loads((tmp_path / "bare_default.json").read_text())
    assert bare["images"] == 8 and bare["network_evaluations_per_image"] == 10  # --class any, as submit's default
    assert bare["noise_threads"] == 0  # a CPU draws noise inline
    noise = json.loads((tmp_path / "noise_cost.json").read_text())["draws_per_second"]
    assert set(noise) == {"asked, sampling thread", *(f"predrawn, {n} thread(s)" for n in (1, 2, 4, 8))}
    encode = json.loads((tmp_path / "encode_pool.json").read_text())["images_per_second"]
    assert set(encode) == {"one thread", "2 threads", "2 processes", "actors' PngEncoder, 2 processes"}
    job = json.loads((tmp_path / "e2e-parquet-k1.json").read_text())
    assert job["complete"] and job["images_sampled"] == 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["e2e"]["parquet-k1"]["efficiency_sampling"] > 0 and summary["not_run"] == []
    assert summary["bare"]["bare_default"]["network_evaluations_per_second"] == 10 * bare["images_per_second"]
