"""The distribution: one top-level name, ``revhpo``, with every layer, data file and marker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (a build leaves no files in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("revhpo", "precise", "hessian", "optimizers", "nets", "service"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("revhpo-*.whl")
    return path


def test_wheel_installs_only_revhpo_at_the_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"revhpo"}
    for layer in ("precise", "hessian", "optimizers", "nets", "service", "service/api"):
        assert f"revhpo/{layer}/__init__.py" in names, layer
    assert "revhpo/py.typed" in names
    assert "revhpo/service/migrations/script.py.mako" in names
    assert "revhpo/service/migrations/versions/0001_initial_schema.py" in names
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]


def test_installed_wheel_imports_and_runs_from_its_own_files(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + [str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import sys, revhpo, revhpo.service.spec, revhpo.service.db as db; "
        "print(revhpo.__file__); print(revhpo.service.spec.__file__); "
        "print(db.migrations_dir()); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out[:3]), out
    assert out[3] == "False"  # the spec and the database layer need no TensorFlow
