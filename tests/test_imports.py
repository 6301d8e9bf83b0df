"""The import contracts in pyproject.toml: pipeline -> training -> workers -> storage, maths apart, no cycles."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("module,imports,broken", [
    ("storage/local.py", "novarch_batch.workers import spec", "pipeline -> training -> workers -> storage, never back"),
    ("workers/seeds.py", "novarch_batch.workers import samplers", "no import cycles between modules of a package"),
], ids=["pointing back", "a cycle"])
def test_a_staged_violation_breaks_its_contract(module, imports, broken, tmp_path):
    staged = staged_copy(tmp_path)
    source = staged / "novarch_batch" / module
    source.write_text(source.read_text() + f"\nfrom {imports}  # noqa: E402\n")
    done = lint(staged, str(staged))
    assert done.returncode != 0
    assert f"{broken} BROKEN" in done.stdout, done.stdout


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


def test_a_local_job_needs_no_boto3():
    """The GPU machine (and a laptop writing to a folder) may lack boto3: only S3 storage imports it."""
    code = ("import sys; import novarch_batch.pipeline.cli, novarch_batch.pipeline.driver, novarch_batch.workers.shard_worker; "
            "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
