"""The project's own checks: lint, format and types are part of the suite, not an afterthought."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_finds_nothing() -> None:
    """ruff check with the rule set in pyproject.toml is clean."""
    result = run("ruff", "check", "streamproc", "tests", "bench", "deploy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted() -> None:
    """ruff format would change nothing."""
    result = run("ruff", "format", "--check", "streamproc", "tests", "bench", "deploy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_layering_contracts_hold() -> None:
    """import-linter: one-way flow, independent stages, one importer per third-party client."""
    result = subprocess.run(  # the console script sits next to this interpreter
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) reports no errors."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
