"""The import contracts in pyproject.toml: pipeline -> training -> workers -> storage, maths apart, no cycles."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("pipeline", "training", "workers", "storage")


def lint(cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath or ""}
    return subprocess.run([LINT, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_project_keeps_its_import_contracts():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def staged_copy(tmp_path: Path) -> Path:
    """The four packages as a `novarch_batch` namespace on PYTHONPATH, ahead of the installed one."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / "novarch_batch" / name, ignore=shutil.ignore_patterns("__pycache__", "models"))
    return tmp_path


def test_an_import_pointing_back_breaks_the_layers(tmp_path):
    staged = staged_copy(tmp_path)
    local = staged / "novarch_batch" / "storage" / "local.py"
    local.write_text(local.read_text() + "\nfrom novarch_batch.workers import spec  # noqa: E402\n")
    done = lint(staged, str(staged))
    assert done.returncode != 0
    assert "pipeline -> training -> workers -> storage, never back BROKEN" in done.stdout, done.stdout


def test_a_cycle_breaks_the_acyclic_contract(tmp_path):
    staged = staged_copy(tmp_path)
    seeds = staged / "novarch_batch" / "workers" / "seeds.py"
    seeds.write_text(seeds.read_text() + "\nfrom novarch_batch.workers import samplers  # noqa: E402\n")
    done = lint(staged, str(staged))
    assert done.returncode != 0
    assert "no import cycles between modules of a package BROKEN" in done.stdout, done.stdout


def test_a_users_own_pipeline_and_workers_modules_do_not_shadow_the_project(tmp_path):
    """The packages install as novarch_batch.*: a user's `pipeline/` or `workers.py` next to their
    script (first on sys.path) changes nothing."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("raise ImportError('the user\\'s own pipeline package')\n")
    (tmp_path / "workers.py").write_text("raise ImportError('the user\\'s own workers module')\n")
    (tmp_path / "storage.py").write_text("raise ImportError('the user\\'s own storage module')\n")
    code = (
        "from novarch_batch.pipeline.spec import build_spec\n"
        "spec = build_spec(count=8, out='out')\n"
        "print(spec.job_id)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("novarch-")
    shadowed = subprocess.run([sys.executable, "-c", "import pipeline"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "the user's own pipeline package" in shadowed.stderr  # the user's module really is first on the path
