"""Class colours and prediction overlays, shared by ``smelib predict``, the figures and the book.

One colour per class across the whole project (figures, overlays, predictions), so a reader learns them once.
"""

from __future__ import annotations


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
