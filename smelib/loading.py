"""Data plumbing between :mod:`smelib.data` and the training loop: the datasets of a config, the
epoch-and-index-seeded training view, the deterministic batch order, padding collation, image normalisation.

Everything that touches the data module's API is in :func:`load_data`, :func:`normalize_image` and
:func:`read_image`, so a change there is absorbed here.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DataBundle",
    "TrainView",
    "derive_seed",
    "resize_pair",
    "size_tuple",
    "unpack",
    "worker_init",
    "epoch_batches",
    "load_data",
    "normalize_image",
    "pad_collate",
    "read_image",
    "seeded",
]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (``numpy.random.SeedSequence``), e.g. ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with python/numpy/torch global generators seeded from ``seed``, restoring them afterwards."""
    py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(th)


def unpack(sample: Any) -> tuple[Tensor, Tensor]:
    """``(image (C, H, W) float, mask (H, W) int64)`` from a dataset item (tuple/list or dict)."""
    if isinstance(sample, Mapping):
        image, mask = sample["image"], sample["mask"]
    else:
        image, mask = sample[0], sample[1]
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    return image.float(), mask.long()


def resize_pair(image: Tensor, mask: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


def size_tuple(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


class TrainView(torch.utils.data.Dataset):
    """A training dataset indexed by ``(epoch, index)``: the base sample, augmented with generators seeded from
    ``(seed, epoch, index)`` (so the result does not depend on the worker, the rank or anything run before),
    resized to ``size`` when one is set."""

    def __init__(self, base: Any, augment: Callable[..., Any] | None, seed: int, size: tuple[int, int] | None):
        self.base, self.augment, self.seed, self.size = base, augment, seed, size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        with seeded(derive_seed(self.seed, epoch, index)):
            image, mask = unpack(self.base[index])
            if self.augment is not None:
                image, mask = self.augment(image, mask)
        if self.size is not None:
            image, mask = resize_pair(image, mask, self.size)
        return image, mask


def pad_collate(ignore_index: int) -> Callable[[list[tuple[Tensor, Tensor]]], tuple[Tensor, Tensor]]:
    """Stack a batch; images of different sizes are padded at the bottom/right (image 0, mask ``ignore_index``),
    so the padding never counts in losses or metrics."""

    def collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        h = max(img.shape[-2] for img, _ in batch)
        w = max(img.shape[-1] for img, _ in batch)
        images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
        masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
        for i, (img, msk) in enumerate(batch):
            images[i, :, : img.shape[-2], : img.shape[-1]] = img
            masks[i, : msk.shape[-2], : msk.shape[-1]] = msk
        return images, masks

    return collate


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches: a permutation of ``range(n)`` drawn from ``(seed, epoch)``, cut into full
    batches (the incomplete last batch is dropped, as the template does)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x5EED))
    order = torch.randperm(n, generator=g).tolist()
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n // batch_size)]


def worker_init(worker_id: int) -> None:
    # Per-worker seeds: the augmentation reseeds per sample anyway; this keeps anything else reproducible.
    info = torch.utils.data.get_worker_info()
    seed = int(info.seed) % 2**32 if info is not None else worker_id
    random.seed(seed)
    np.random.seed(seed)




# ---------------------------------------------------------------------------------------------------------------
# The data module's API, adapted
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """The datasets of one config.

    Attributes:
        train, val, test: datasets of ``(image (C, H, W) float normalised, mask (H, W) int64)`` items, without
            augmentation (``val``/``test`` may be None or empty).
        augment: ``(image, mask) -> (image, mask)`` drawing from the global python/numpy/torch generators (the
            training view seeds them per sample), or None.
        class_names: names of the dataset's classes, background first.
        num_classes: K.
        split: ``{"kind", "root", ...}`` facts about the split for the run record.
        input_size: ``(H, W)`` of the first training image (the FLOP count's input size at native resolution).
    """

    train: Any
    val: Any
    test: Any
    augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None
    class_names: list[str]
    num_classes: int
    split: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (200, 200)


_MEAN, _STD = 0.5, 0.25  # placeholder until smelib.data provides the normalisation


def normalize_image(item: Any, in_channels: int = 3) -> Tensor:
    """An image (path, PIL image or uint8 array) as a normalised ``(C, H, W)`` float tensor.

    Raises:
        ValueError: the file cannot be read as an image (the message names it).
    """
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        item = read_image(item)
    if isinstance(item, Image.Image):
        item = np.asarray(item.convert("L" if in_channels == 1 else "RGB"))
    arr = np.asarray(item)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], in_channels, axis=2)
    x = torch.from_numpy(np.array(arr[..., :in_channels])).permute(2, 0, 1).float() / 255.0
    return (x - _MEAN) / _STD


def read_image(path: str | os.PathLike) -> Any:
    """Open an image file (PIL), with one clear error naming the file when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}") from None


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, pairs: list[tuple[Path, Path]], in_channels: int) -> None:
        self.pairs, self.in_channels = pairs, in_channels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img, msk = self.pairs[i]
        return normalize_image(img, self.in_channels), torch.from_numpy(np.array(read_image(msk))).long()


def _flip_rot_augment(spec: Mapping[str, Any]) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    def aug(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if spec.get("hflip") and torch.rand(()) < float(spec["hflip"]):
            image, mask = image.flip(-1), mask.flip(-1)
        if spec.get("vflip") and torch.rand(()) < float(spec["vflip"]):
            image, mask = image.flip(-2), mask.flip(-2)
        if spec.get("rot90"):
            k = int(torch.randint(0, 4, ()))
            image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
        return image.contiguous(), mask.contiguous()

    return aug


def load_data(cfg: Mapping[str, Any], seed: int = 0) -> DataBundle:
    """The train/val/test datasets, augmentation and class names a config asks for."""
    from smelib.settings import data_root

    dc = cfg["data"]
    root = data_root(dc["root"])
    in_ch = int(cfg["model"]["in_channels"])
    limit = dc["limit"]

    def pairs(img_dir: Path, ann_dir: Path, stems: list[str] | None = None) -> list[tuple[Path, Path]]:
        if stems is None:
            stems = sorted(p.stem for p in img_dir.glob("*.jpg"))
        return [(img_dir / f"{s}.jpg", ann_dir / f"{s}.png") for s in stems]

    if (root / "images" / "training").is_dir():
        train_all = pairs(root / "images" / "training", root / "annotations" / "training")
        test = pairs(root / "images" / "test", root / "annotations" / "test")
        names = ["background", "inclusion", "patches", "scratches"]
    elif (root / "JPEGImages").is_dir():
        sets = root / "ImageSets" / "Segmentation"
        read = lambda n: (sets / f"{n}.txt").read_text().split() if (sets / f"{n}.txt").is_file() else []  # noqa
        train_all = pairs(root / "JPEGImages", root / "SegmentationClass", read("train"))
        test = pairs(root / "JPEGImages", root / "SegmentationClass", read("test") or read("val"))
        k = int(dc["num_classes"] or 4)
        names = ["background"] + [f"class {i}" for i in range(1, k)]
    else:
        raise FileNotFoundError(f"no NEU-Seg or VOC layout under {root}")
    g = torch.Generator().manual_seed(int(dc["seed"]))
    order = torch.randperm(len(train_all), generator=g).tolist()
    n_val = int(round(dc["val_fraction"] * len(train_all)))
    val = [train_all[i] for i in sorted(order[:n_val])]
    train = [train_all[i] for i in sorted(order[n_val:])]
    if limit:
        train, val, test = train[:limit], val[:limit], test[:limit]
    augment = _flip_rot_augment(dc["augment"]) if dc["augment"] else None
    first = np.array(read_image(train[0][0])).shape[:2]
    return DataBundle(_Pairs(train, in_ch), _Pairs(val, in_ch), _Pairs(test, in_ch), augment, names, len(names),
                      {"root": str(root)}, (int(first[0]), int(first[1])))
