"""The house's walls, checked on every run: the lint rule set (ruff) and the import contracts (import-linter).

Rules and contracts live in pyproject.toml ([tool.ruff], [tool.importlinter]); DESIGN.md says why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: it is part of the [test] extra"
    return found


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    result = _run(_tool("ruff"), "check", "--no-cache", "cryocloud", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept():
    result = _run(_tool("lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_types_check():
    """mypy over the files [tool.mypy] names (the data model, the pure core and the store)."""
    result = _run(_tool("mypy"))
    assert result.returncode == 0, result.stdout + result.stderr
