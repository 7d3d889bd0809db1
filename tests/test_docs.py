"""The documentation site builds without warnings, every page the README and the index link to exists, and every
Python code block of the README and the docs runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
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


# -- every ```python block of the README and the docs runs as written, in a fresh process -----------------

DOC_PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^\s*```python\s*$")  # also inside a list item (indented, dedented before running)
_FRAGMENT = re.compile(r"^<!--.*\bfragment\b.*-->\s*$")
MAX_FRAGMENTS = 5
BLOCK_TIMEOUT_S = 120


def _python_blocks(page: str) -> list[tuple[int, str, bool]]:
    """``(fence line, code, marked fragment)`` of each ```python block of ``page``, in order.

    A block is marked fragment by an HTML comment holding the word ``fragment`` on the line just above its
    fence, e.g. ``<!-- fragment: needs your own data loader -->``.
    """
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if _FENCE.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"{page}:{i + 1}: ```python block is never closed"
            fragment = i > 0 and bool(_FRAGMENT.match(lines[i - 1].strip()))
            blocks.append((i + 1, textwrap.dedent("\n".join(lines[i + 1:end])) + "\n", fragment))
            i = end
        i += 1
    return blocks


_BLOCKS = [(page, line, code, fragment) for page in DOC_PAGES for line, code, fragment in _python_blocks(page)]


def test_fragment_markers_are_rare_and_sit_on_a_fence():
    fragments = [f"{page}:{line}" for page, line, _, fragment in _BLOCKS if fragment]
    assert len(fragments) <= MAX_FRAGMENTS, f"too many blocks marked fragment: {fragments}"
    misplaced = []
    for page in DOC_PAGES:
        lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if "<!--" in line and re.search(r"\bfragment\b", line) and not (
                    _FRAGMENT.match(line.strip()) and i + 1 < len(lines) and _FENCE.match(lines[i + 1])):
                misplaced.append(f"{page}:{i + 1}")
    assert not misplaced, f"a fragment marker must be one HTML comment on the line just above a ```python fence: {misplaced}"
    assert _BLOCKS, "no ```python block found"


@pytest.mark.parametrize(
    "page, line, code, fragment", _BLOCKS, ids=[f"{page}:{line}" for page, line, _, _ in _BLOCKS])
def test_python_block_runs(page, line, code, fragment, tmp_path):
    if fragment:
        pytest.skip(f"{page}:{line} is marked as a fragment")
    # a fresh interpreter in an empty folder: the block sees the installed packages and nothing else
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"the ```python block at {page}:{line} fails as written:\n{result.stderr}", pytrace=False)
