"""The rendered book in a real browser: math is typeset by the bundled MathJax, every figure exists and loads, and
no output is wider than the page at 1280 px.

Needs the built HTML (`jupyter-book build .`, which `.ci/run` does before `pytest`) and Debian's `chromium`;
skips with the reason when either is missing.
"""

from __future__ import annotations

import html
import json
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


# Run inside a page loaded in a 1280 px wide frame: opens every collapsed block (a reader may), then reports each
# cell output (and each table) that scrolls sideways or reaches past the text column, and every image that did not
# load. One entry per cell: its outermost offending element.
_PROBE = r"""
(() => {
  const doc = document.getElementById('page').contentDocument;
  doc.querySelectorAll('details').forEach(d => { d.open = true; });
  doc.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  const article = doc.querySelector('article.bd-article') || doc.querySelector('main') || doc.body;
  const edge = article.getBoundingClientRect().right;
  const cells = Array.from(doc.querySelectorAll('.cell'));
  const wide = [], flagged = [];
  doc.querySelectorAll('.cell_output, .cell_output *, article table').forEach(el => {
    if (el.closest('mjx-container') || flagged.some(f => f.contains(el))) return;
    const box = el.getBoundingClientRect();
    if (box.width === 0) return;
    const clips = ['auto', 'scroll', 'hidden'].includes(doc.defaultView.getComputedStyle(el).overflowX);
    let why = null;
    const over = el.scrollWidth - el.clientWidth;
    if (clips && over > 2) why = `scrolls sideways (${el.scrollWidth} > ${el.clientWidth} px)`;
    else if (box.right > edge + 2) why = `reaches ${Math.round(box.right - edge)} px past the text column`;
    if (why) {
      flagged.push(el);
      const cell = el.closest('.cell');
      const where = cell ? `cell ${cells.indexOf(cell) + 1} of ${cells.length}` : 'text';
      wide.push(`${where}: <${el.tagName.toLowerCase()}> ${why}`);
    }
  });
  const broken = Array.from(doc.images).filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => (i.getAttribute('src') || '').slice(0, 60));
  return JSON.stringify({wide, broken, images: doc.images.length});
})()
"""


def _measure(page: Path, tmp_path: Path) -> dict:
    """The probe's findings for one built page, shown in a 1280 px wide frame."""
    wrapper = tmp_path / "frame.html"
    wrapper.write_text(f"""<!doctype html><html><body style="margin:0">
<iframe id="page" src="{page.as_uri()}" style="width:1280px;height:1000px;border:0"></iframe>
<pre id="result">not measured</pre>
<script>
document.getElementById('page').addEventListener('load', () => setTimeout(() => {{
  document.getElementById('result').textContent = {_PROBE.strip()};
}}, 4000));
</script></body></html>""")
    # file:// pages are separate origins unless files may read files: the frame's DOM is then the wrapper's to read
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--window-size=1300,1100", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--dump-dom", wrapper.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found, f"{page.name}: the probe page did not render"
    text = html.unescape(found.group(1))
    assert text != "not measured", f"{page.name}: the page did not load within the time budget"
    return json.loads(text)


@pytest.mark.slow
def test_no_output_is_wider_than_the_page_and_every_figure_loads(tmp_path: Path) -> None:
    problems = []
    for page in [HTML / "index.html", *_pages()]:
        found = _measure(page, tmp_path)
        problems += [f"{page.name}: {w}" for w in found["wide"]]
        problems += [f"{page.name}: image {src} did not load" for src in found["broken"]]
    assert not problems, "\n".join(problems)


def test_the_probe_sees_a_wide_output_and_a_missing_image(tmp_path: Path) -> None:
    """The probe itself can fail: a page with one over-wide output and one missing image is reported twice."""
    page = tmp_path / "site" / "wide.html"
    page.parent.mkdir()
    page.write_text("""<!doctype html><html><body><main><article class="bd-article" style="width:600px">
<div class="cell"><div class="cell_output" style="overflow-x:auto"><pre>""" + "x" * 400 + """</pre></div></div>
<div class="cell"><div class="cell_output"><img src="missing.png"></div></div>
<div class="cell"><div class="cell_output"><pre>short</pre></div></div>
</article></main></body></html>""")
    found = _measure(page, tmp_path)
    assert len(found["wide"]) == 1 and found["wide"][0].startswith("cell 1 of 3")
    assert found["broken"] == ["missing.png"] and found["images"] == 1
