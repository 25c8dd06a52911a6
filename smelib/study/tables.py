"""Small tables that print as fixed-width text and render as padded HTML in the book."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


class Table:
    """A small table that prints as fixed-width text and renders as HTML in notebooks.

    Args:
        columns: header names.
        rows: one sequence of cells per row; floats are shown with ``decimals`` decimals.
        decimals: decimals for float cells.
        title: an optional caption.
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], decimals: int = 3,
                 title: str | None = None) -> None:
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        self.decimals = decimals
        self.title = title

    def _cell(self, value: Any) -> str:
        if isinstance(value, float):
            return "–" if value != value else f"{value:.{self.decimals}f}"
        return "–" if value is None else str(value)

    def __str__(self) -> str:
        cells = [[self._cell(c) for c in r] for r in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(h.ljust(w) for h, w in zip(self.columns, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for r in cells:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(self._cell(c))}</td>" for c in r) + "</tr>" for r in self.rows
        )
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def to_dicts(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        return [dict(zip(self.columns, r)) for r in self.rows]
