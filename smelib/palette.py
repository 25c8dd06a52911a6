"""Class colours and prediction overlays, shared by ``smelib predict``, the figures and the book.

One colour per class across the whole project (figures, overlays, predictions), so a reader learns them once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


#: Plain names of :data:`CLASS_COLORS`, for the key that ``smelib predict`` prints.
CLASS_COLOR_NAMES: tuple[str, ...] = ("black", "orange", "sky blue", "bluish green", "vermillion", "yellow", "blue",
                                      "reddish purple")


def class_color_name(index: int) -> str:
    """The plain name of :func:`class_color` ``(index)``."""
    rgb = class_color(index)
    return CLASS_COLOR_NAMES[CLASS_COLORS.index(rgb)]


def palette_image(mask: np.ndarray) -> Any:
    """An index mask ``(H, W)`` uint8 as a palette ("P" mode) PIL image: the same class indices, shown in
    :data:`CLASS_COLORS` by any viewer (255, ignore, in white)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    table = [255] * (256 * 3)
    for k in range(255):
        table[3 * k: 3 * k + 3] = class_color(k)
    img.putpalette(table)
    return img


def write_legend(path: str | os.PathLike, class_names: Sequence[str]) -> Path:
    """A small PNG colour key of the defect classes (background is left as the image), written to ``path``."""
    from PIL import Image, ImageDraw

    rows = [(i, n) for i, n in enumerate(class_names) if i > 0]
    row_h, width = 22, 220
    img = Image.new("RGB", (width, row_h * max(len(rows), 1) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, (i, name) in enumerate(rows):
        y = 4 + r * row_h
        draw.rectangle([6, y + 3, 26, y + 17], fill=class_color(i), outline=(0, 0, 0))
        draw.text((34, y + 4), f"{i}  {name}", fill=(0, 0, 0))
    path = Path(path)
    img.save(path)
    return path
