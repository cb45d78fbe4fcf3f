"""The Python examples under ``examples/`` run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_library_example_tunes_without_the_service(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "library_tuning.py"), "--iterations", "3", "--steps", "30"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [f"meta-iteration {i}" for i in range(3)]
    before, after = lines[-1].split("val loss ")[1].split(";")[0].split(" -> ")
    assert float(after) < float(before)  # three steps on per-layer rates help on digits
