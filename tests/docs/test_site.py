"""The manual builds as a site with every warning an error: no broken link, anchor or nav entry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mkdocs", reason="mkdocs is in the docs extra, which the test extra pulls")


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` exits 0, so every page is in the nav and every link resolves."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_in_docs_is_in_the_nav() -> None:
    """A page left out of mkdocs.yml's nav would be unreachable from the site's menu."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages
    missing = [page for page in pages if f": {page}" not in nav]
    assert not missing


def test_the_readme_stays_short_and_points_into_the_site() -> None:
    """The README says what and why and the two commands; the manual lives in docs/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12_000
    assert "python3 -m streamproc lab" in readme
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest" in readme
    linked = {part.split(")")[0] for part in readme.split("](docs/")[1:]}
    assert linked
    for page in linked:
        assert (ROOT / "docs" / page.split("#")[0]).is_file(), page


def test_every_file_the_docs_name_exists() -> None:
    """A test, fuzzer, benchmark or module a page cites by path is where the page says."""
    pattern = re.compile(r"`((?:tests|fuzz|bench|streamproc|deploy|k8s|examples)/[\w./-]+\.\w+)`")
    missing = [
        f"{page.name}: {path}"
        for page in sorted((ROOT / "docs").glob("*.md"))
        for path in pattern.findall(page.read_text(encoding="utf-8"))
        # what a benchmark writes is output, not a source
        if not path.startswith("bench/results/") and not (ROOT / path).exists()
    ]
    assert not missing


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    """.ci/run and the README give one test command: what a person runs is what CI runs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    [command] = [line for line in readme if line.startswith("python3 -m pip install -e '.[test]'")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci
