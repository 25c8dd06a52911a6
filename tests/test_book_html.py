"""The rendered book in a real browser: math is typeset by the bundled MathJax and every figure exists.

Needs the built HTML (`jupyter-book build .`, which `.ci/run` does before `pytest`) and Debian's `chromium`;
skips with the reason when either is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not (HTML / "index.html").is_file(), reason="the book is not built (jupyter-book build .)"),
]


def _pages() -> list[Path]:
    return sorted((HTML / "book").glob("*.html"))


def _dump_dom(page: Path, tmp_path: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_every_chapter_is_rendered() -> None:
    chapters = {p.stem for p in (ROOT / "book").glob("*.ipynb")}
    toc = (ROOT / "_toc.yml").read_text()
    listed = set(re.findall(r"file: book/(\w+)\s*$", toc, re.M))  # the chapters; book/api/... are reference pages
    assert listed and listed <= chapters
    assert {p.stem for p in _pages()} >= listed
    api = set(re.findall(r"file: book/api/(\w+)", toc))
    assert {p.stem for p in (HTML / "book" / "api").glob("*.html")} >= api


@pytest.mark.slow
def test_math_is_typeset_by_the_bundled_mathjax(tmp_path: Path) -> None:
    page = HTML / "book" / "flops.html"
    source = page.read_text()
    assert re.search(r'<script[^>]+src="\.\./_static/mathjax/tex-chtml\.js', source)
    assert "cdn.jsdelivr.net" not in source and "mathjax@3" not in source
    dom = _dump_dom(page, tmp_path)
    # MathJax replaces each formula with an <mjx-container> holding CHTML glyphs
    assert dom.count("<mjx-container") >= 5
    assert "mjx-c" in dom


def test_every_figure_file_exists() -> None:
    missing = []
    for page in _pages() + [HTML / "index.html"]:
        for src in re.findall(r'<img[^>]+src="([^"]+)"', page.read_text()):
            if src.startswith(("http:", "https:", "data:")):
                continue
            if not (page.parent / src.split("#")[0].split("?")[0]).resolve().is_file():
                missing.append(f"{page.name}: {src}")
    assert not missing, missing
