"""Tables the book displays hold the numbers their headers name.

"Counting FLOPs" once showed Table 2 with its cells in the order of a row dict's values, which differs from the
headers' order, so the "ours" GFLOPs column read 11.161 (a parameter count). These tests check the table-building
function the chapter calls and the output stored in the chapter itself.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from smelib.study.table2 import TABLE2, TABLE2_COLUMNS, table2, table2_display

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "book" / "flops.ipynb"

class _Cells(HTMLParser):
    """Header and body cells of the first HTML table in a string."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self.header.append(self._cell or "")
            self._cell = None
        elif tag == "td":
            self.rows[-1].append(self._cell or "")
            self._cell = None


def _stored_table2() -> _Cells:
    nb = json.loads(CHAPTER.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "table2_display" not in "".join(cell["source"]):
            continue
        for out in cell.get("outputs", []):
            html = "".join(out.get("data", {}).get("text/html", ""))
            if "our GFLOPs" in html:
                parser = _Cells()
                parser.feed(html)
                parser.rows = [r for r in parser.rows if r]
                return parser
    raise AssertionError("the chapter stores no output of table2_display(...)")


def test_display_columns_name_the_keys_they_show() -> None:
    rows = [{key: f"{key}#{i}" for _, key in TABLE2_COLUMNS} for i in range(3)]
    shown = table2_display(rows).to_dicts()
    for i, row in enumerate(shown):
        for header, key in TABLE2_COLUMNS:
            assert row[header] == f"{key}#{i}", header
    assert len({h for h, _ in TABLE2_COLUMNS}) == len(TABLE2_COLUMNS), "two columns share a header"


@pytest.fixture(scope="module")
def ours() -> list[dict]:
    return table2()


@pytest.mark.slow
def test_displayed_table2_holds_our_counts(ours: list[dict]) -> None:
    shown = table2_display(ours).to_dicts()
    assert len(shown) == len(TABLE2)
    for row, cells in zip(ours, shown):
        assert cells["our GFLOPs"] == row["gflops_paper_convention"]
        assert cells["our params (M)"] == row["params_m_paper_convention"]
        assert cells["paper GFLOPs"] == row["paper_gflops"]
        assert cells["paper params (M)"] == row["paper_params_m"]


@pytest.mark.slow
def test_chapter_shows_our_counts_under_our_headers(ours: list[dict]) -> None:
    """The output stored in the chapter (a full run), cell by cell, against table2() counted now."""
    stored = _stored_table2()
    assert stored.header == [h for h, _ in TABLE2_COLUMNS]
    assert len(stored.rows) == len(ours)
    for cells, row in zip(stored.rows, ours):
        for header, key in TABLE2_COLUMNS:
            shown = cells[stored.header.index(header)]
            value = row[key]
            if isinstance(value, float):
                assert float(shown) == pytest.approx(value, abs=5e-4), (row["config"], header, shown)
            else:
                assert shown == str(value), (row["config"], header, shown)
