"""Presentation helpers shared by the CLI and the book: class colours, overlays and small tables.

One colour per class across the whole project (figures, overlays, predictions), so a reader learns them once.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

#: NEU-Seg's classes in label order.
NEU_SEG_CLASSES = ("background", "inclusion", "patches", "scratches")

#: RGB colour per class index (background black; then colour-blind-safe Okabe-Ito hues, chosen so that
#: NEU-Seg's three defect classes — orange, sky blue, bluish green — stay apart in overlays); cycled for K > 8.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0), (240, 228, 66), (0, 114, 178),
    (204, 121, 167),
)


def class_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index`` (cycled after the palette's end, never black again)."""
    if index < len(CLASS_COLORS):
        return CLASS_COLORS[index]
    return CLASS_COLORS[1 + (index - 1) % (len(CLASS_COLORS) - 1)]


def colorize(mask: np.ndarray) -> np.ndarray:
    """Index mask ``(H, W)`` → RGB image ``(H, W, 3)`` uint8; 255 (ignore) is white."""
    out = np.full((*mask.shape, 3), 255, dtype=np.uint8)
    for k in np.unique(mask):
        if k != 255:
            out[mask == k] = class_color(int(k))
    return out


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image: ``image (H, W)`` or ``(H, W, 3)`` uint8, ``mask (H, W)`` → ``(H, W, 3)``.

    Background pixels keep the image; defect pixels mix ``alpha`` of their class colour.
    """
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    rgb = rgb.astype(np.float32)
    colors = colorize(mask).astype(np.float32)
    blend = np.where((mask > 0)[..., None] & (mask != 255)[..., None], (1 - alpha) * rgb + alpha * colors, rgb)
    return blend.round().clip(0, 255).astype(np.uint8)


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
