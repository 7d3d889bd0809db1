"""The documentation site builds without warnings, and every page the README and the index link to exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _linked_pages(markdown: Path) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)#]+\.md)\)", markdown.read_text()) if "://" not in m]


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_linked_pages_exist(page):
    source = ROOT / page
    missing = [link for link in _linked_pages(source) if not (source.parent / link).is_file()]
    assert not missing, f"{page} links to missing pages: {missing}"


def test_mkdocs_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()
