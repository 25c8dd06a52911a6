"""Joint image/mask augmentation on tensors, for single samples or batches, on any device.

Every function takes an image ``(C, H, W)`` or ``(B, C, H, W)`` (float, or uint8 which is rounded back) and a
mask ``(H, W)`` or ``(B, H, W)`` (any integer dtype) and returns both transformed the same way. Images are
resampled bilinearly, masks with nearest neighbour, and mask pixels that come from outside the picture are set
to ``ignore_index`` (255) so the loss skips them; image pixels there get ``fill`` (0 = the dataset mean once
images are normalised). Only torch operations are used, so tensors stay on their device (CPU or CUDA), and
all randomness comes from a CPU ``torch.Generator``: the same seed gives the same result on any device.

:class:`Augment` chains the random operations and is built from a dict, e.g. a config's ``augment`` entry::

    Augment.from_config({"hflip": 0.5, "vflip": 0.5, "rot90": True, "rotate_deg": 10,
                         "scale": [0.75, 1.25], "crop": 200})

Order: horizontal flip, vertical flip, 90-degree rotation, small rotation, rescale, crop. In a batch every
sample draws its own parameters; two cases would give samples of different sizes, so they are drawn once per
batch instead: the rescale factor when there is no crop, and, for non-square images, the 90-degree turn
(limited to 0 or 180 degrees so the shape stays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from smelib.data.dataset import IGNORE_INDEX
import torch.nn.functional as F

__all__ = ["Augment", "crop", "hflip", "rescale", "rot90", "rotate", "vflip"]



def _check(image: torch.Tensor, mask: torch.Tensor) -> bool:
    """Validate shapes; return whether the pair is batched."""
    if image.ndim == 3 and mask.ndim == 2:
        batched = False
    elif image.ndim == 4 and mask.ndim == 3:
        batched = True
        if image.shape[0] != mask.shape[0]:
            raise ValueError(f"batch sizes differ: image {tuple(image.shape)}, mask {tuple(mask.shape)}")
    else:
        raise ValueError(
            f"expected image (C, H, W) + mask (H, W) or image (B, C, H, W) + mask (B, H, W); got "
            f"{tuple(image.shape)} and {tuple(mask.shape)}"
        )
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in H, W")
    return batched


def hflip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror left-right. Shapes: image ``(..., C, H, W)``, mask ``(..., H, W)``, unchanged."""
    return image.flip(-1), mask.flip(-1)


def vflip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror top-bottom. Shapes: image ``(..., C, H, W)``, mask ``(..., H, W)``, unchanged."""
    return image.flip(-2), mask.flip(-2)


def rot90(image: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``k`` x 90 degrees counter-clockwise (``torch.rot90``); odd ``k`` swaps H and W."""
    return torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))


def _as_float(image: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    return (image if image.is_floating_point() else image.float()), image.dtype


def _back(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return image.to(dtype)
    info = torch.iinfo(dtype)
    return image.round().clamp(info.min, info.max).to(dtype)


def rotate(
    image: torch.Tensor,
    mask: torch.Tensor,
    angle_deg: float,
    *,
    fill: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``angle_deg`` (counter-clockwise, about the centre), keeping the size.

    Image: bilinear; mask: nearest. Corners that come from outside the picture get ``fill`` in the image and
    ``ignore_index`` in the mask. Shapes: image ``(C, H, W)`` or ``(B, C, H, W)``, mask ``(H, W)`` or
    ``(B, H, W)``, unchanged.
    """
    batched = _check(image, mask)
    img, dtype = _as_float(image if batched else image[None])
    m = mask if batched else mask[None]
    b, _, h, w = img.shape
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    # affine_grid works in [-1, 1] coordinates; the H/W factors make the rotation rigid in pixel units.
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=img.dtype, device=img.device)
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, 1, h, w], align_corners=False)
    out = F.grid_sample(img - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    # Mask and an all-ones validity channel share one nearest-neighbour pass: exact for integer labels.
    both = torch.stack([m.to(img.dtype), torch.ones_like(m, dtype=img.dtype)], 1)
    both = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    new_mask = torch.where(both[:, 1] > 0.5, both[:, 0], torch.full_like(both[:, 0], ignore_index))
    new_mask = new_mask.round().to(mask.dtype)
    out = _back(out, dtype)
    return (out, new_mask) if batched else (out[0], new_mask[0])


def rescale(image: torch.Tensor, mask: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize by ``factor``: ``(.., H, W)`` -> ``(.., round(H * factor), round(W * factor))``.

    Image: bilinear (antialiased when shrinking); mask: nearest-exact.
    """
    batched = _check(image, mask)
    img, dtype = _as_float(image if batched else image[None])
    m = mask if batched else mask[None]
    h, w = img.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return image, mask
    out = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    new_mask = F.interpolate(m[:, None].float(), size=size, mode="nearest-exact")[:, 0].round().to(mask.dtype)
    out = _back(out, dtype)
    return (out, new_mask) if batched else (out[0], new_mask[0])


def crop(
    image: torch.Tensor,
    mask: torch.Tensor,
    top: int,
    left: int,
    height: int,
    width: int,
    *,
    fill: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the window ``[top, top + height) x [left, left + width)``; negative or overhanging windows are padded
    (image with ``fill``, mask with ``ignore_index``). Shapes: image ``(.., C, height, width)``, mask
    ``(.., height, width)``."""
    _check(image, mask)
    h, w = image.shape[-2:]
    pad_t, pad_l = max(0, -top), max(0, -left)
    pad_b, pad_r = max(0, top + height - h), max(0, left + width - w)
    if pad_t or pad_l or pad_b or pad_r:
        pads = (pad_l, pad_r, pad_t, pad_b)
        img = image if image.is_floating_point() else image.float()
        image = _back(F.pad(img, pads, value=fill), image.dtype)
        mask = F.pad(mask, pads, value=ignore_index)
        top, left = top + pad_t, left + pad_l
    return image[..., top : top + height, left : left + width], mask[..., top : top + height, left : left + width]


def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand((), generator=g))


@dataclass
class Augment:
    """A seeded random pipeline of the operations above; call it as ``aug(image, mask, generator)``.

    Attributes:
        hflip, vflip: probability of each flip.
        rot90: turn by a uniformly drawn multiple of 90 degrees.
        rotate_deg: small rotation by an angle drawn uniformly from ``[-rotate_deg, rotate_deg]``.
        scale: ``(low, high)`` rescale factor drawn uniformly, or None.
        crop: output size ``s`` or ``(h, w)``: a random window of that size (padded when the image is smaller).
        fill: image value for areas from outside the picture (0 = the mean after normalisation).
        ignore_index: mask value for those areas.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rot90: bool = False
    rotate_deg: float = 0.0
    scale: tuple[float, float] | None = None
    crop: int | tuple[int, int] | None = None
    fill: float = 0.0
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], not {p}")
        if self.rotate_deg < 0:
            raise ValueError(f"rotate_deg must be >= 0, not {self.rotate_deg}")
        if self.scale is not None:
            lo, hi = (float(v) for v in self.scale)
            if not 0 < lo <= hi:
                raise ValueError(f"scale must be (low, high) with 0 < low <= high, not {self.scale}")
            self.scale = (lo, hi)
        if self.crop is not None:
            c = self.crop
            size = (int(c), int(c)) if isinstance(c, (int, float)) else (int(c[0]), int(c[1]))
            if min(size) <= 0:
                raise ValueError(f"crop size must be positive, not {self.crop}")
            self.crop = size

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Augment:
        """Build from a dict with any of the attribute names; unknown keys raise ``ValueError`` (typos)."""
        config = dict(config or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
        if "scale" in config and config["scale"] is not None:
            config["scale"] = tuple(config["scale"])
        if "crop" in config and isinstance(config["crop"], Sequence):
            config["crop"] = tuple(config["crop"])
        return cls(**config)

    def is_identity(self) -> bool:
        """True when no operation is switched on."""
        return not (self.hflip or self.vflip or self.rot90 or self.rotate_deg or self.scale or self.crop)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample or a batch.

        Args:
            image: ``(C, H, W)`` or ``(B, C, H, W)``, float or uint8, on any device.
            mask: ``(H, W)`` or ``(B, H, W)``, integer.
            generator: CPU generator for the draws (None: the global RNG).

        Returns:
            ``(image, mask)`` with the same batch layout; H, W become the crop size when ``crop`` is set.
        """
        batched = _check(image, mask)
        if not batched:
            return self._one(image, mask, generator, None, None)
        square = image.shape[-1] == image.shape[-2]
        shared_k = None if square or not self.rot90 else 2 * int(torch.randint(2, (), generator=generator))
        shared_s = None
        if self.scale is not None and self.crop is None:
            lo, hi = self.scale
            shared_s = lo + (hi - lo) * _rand(generator)
        outs = [self._one(image[i], mask[i], generator, shared_k, shared_s) for i in range(image.shape[0])]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def _one(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        g: torch.Generator | None,
        k: int | None,
        s: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Draw every random number in a fixed order, whether or not the operation ends up applied, so the
        # stream (and so the result of later samples) does not depend on earlier outcomes.
        u_h, u_v = _rand(g), _rand(g)
        k_draw = int(torch.randint(4, (), generator=g))
        u_angle, u_scale, u_top, u_left = _rand(g), _rand(g), _rand(g), _rand(g)
        if u_h < self.hflip:
            image, mask = hflip(image, mask)
        if u_v < self.vflip:
            image, mask = vflip(image, mask)
        if self.rot90:
            if k is None:
                k = k_draw if image.shape[-1] == image.shape[-2] else 2 * (k_draw % 2)
            if k:
                image, mask = rot90(image, mask, k)
        if self.rotate_deg:
            angle = (2 * u_angle - 1) * self.rotate_deg
            image, mask = rotate(image, mask, angle, fill=self.fill, ignore_index=self.ignore_index)
        if self.scale is not None:
            lo, hi = self.scale
            factor = s if s is not None else lo + (hi - lo) * u_scale
            image, mask = rescale(image, mask, factor)
        if self.crop is not None:
            assert isinstance(self.crop, tuple)  # normalised in __post_init__
            ch, cw = self.crop
            h, w = image.shape[-2:]
            # Overhang is split at random between the two sides when padding, as when cropping.
            top = int(u_top * (h - ch + 1)) if h >= ch else -int(u_top * (ch - h + 1))
            left = int(u_left * (w - cw + 1)) if w >= cw else -int(u_left * (cw - w + 1))
            image, mask = crop(image, mask, top, left, ch, cw, fill=self.fill, ignore_index=self.ignore_index)
        return image, mask
