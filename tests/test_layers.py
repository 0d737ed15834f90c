"""The package's layering (pyproject.toml, [tool.importlinter]) holds: no module imports a
layer above its own, and sibling modules import each other without a cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: install the dev extras (pip install -e '.[dev]')")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(exe).parent)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 0 broken" in done.stdout


def test_config_is_a_leaf() -> None:
    """Loading the config module pulls in no task, model or training code."""
    code = ("import sys, soundry.config; "
            "print(sorted(m for m in sys.modules if m.startswith('soundry.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert set(eval(out)) <= {"soundry.config", "soundry.errors", "soundry.registry"}, out
