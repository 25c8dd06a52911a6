"""Data plumbing between :mod:`smelib.data` and the training loop: the datasets of a config, the
epoch-and-index-seeded training view, the deterministic batch order, padding collation, image normalisation.

Everything that touches the data module's API is in :func:`load_data`, :func:`normalize_image` and
:func:`~smelib.data.dataset.read_image`, so a change there is absorbed here.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from smelib.errors import ConfigError
from smelib.data.augment import Augment
from smelib.data.dataset import (
    IGNORE_INDEX,
    NEU_SEG_MEAN,
    NEU_SEG_STD,
    DatasetError,
    InMemorySegDataset,
    StreamingSegDataset,
    open_dataset,
    read_image,
)
from smelib.data.splits import load_groups, make_split
from smelib.settings import data_root, repo_root

__all__ = [
    "DataBundle",
    "TrainView",
    "derive_seed",
    "resize_pair",
    "size_tuple",
    "unpack",
    "worker_init",
    "checkpoint_data",
    "epoch_batches",
    "load_data",
    "normalize_image",
    "pad_collate",
    "seeded",
]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (``numpy.random.SeedSequence``), e.g. ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with python/numpy/torch CPU global generators seeded from ``seed``, restoring them afterwards.

    Only torch's CPU generator: ``torch.manual_seed`` would also reseed every CUDA generator, which this block
    does not restore, so per-sample seeding would overwrite the GPU dropout/drop-path stream (making GPU results
    depend on the worker count and a checkpoint's saved CUDA state meaningless). The CPU stream is the same as
    ``torch.manual_seed``'s.
    """
    py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
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
    """Resize ``image`` (C, H, W) float bilinearly and ``mask`` (H, W) int64 by nearest neighbour to ``size``."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    # antialias: a downscale (progressive resizing's small epochs) averages instead of skipping pixels
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
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
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)  # the data module seeds its transform from (seed, epoch, index)
        with seeded(derive_seed(self.seed, epoch, index)):
            image, mask = unpack(self.base[index])
            if self.augment is not None:
                image, mask = self.augment(image, mask)
        if self.size is not None:
            image, mask = resize_pair(image, mask, self.size)
        return image, mask


def pad_collate(batch: Sequence[tuple[Tensor, ...]], ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Stack ``(image (C, H_i, W_i), mask (H_i, W_i), ...)`` items (a dataset's sample id, if any, is dropped)
    into ``images (B, C, H, W)`` and ``masks (B, H, W)``
    int64, padding smaller ones at the bottom/right (image 0, mask ``ignore_index``), so the padding never counts in
    losses or metrics. Use ``functools.partial(pad_collate, ignore_index=...)`` as a DataLoader's ``collate_fn``."""
    h = max(item[0].shape[-2] for item in batch)
    w = max(item[0].shape[-1] for item in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for i, (img, msk, *_) in enumerate(batch):
        images[i, :, : img.shape[-2], : img.shape[-1]] = img
        masks[i, : msk.shape[-2], : msk.shape[-1]] = msk
    return images, masks


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
        mean, std: the normalisation of the images (stored in checkpoints so that prediction matches training).
    """

    train: Any
    val: Any
    test: Any
    augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None
    class_names: list[str]
    num_classes: int
    split: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (200, 200)
    mean: list[float] | None = None
    std: list[float] | None = None


def _as_uint8_chw(item: Any, in_channels: int) -> Tensor:
    """A path, PIL image, ``(H, W)``/``(H, W, 3)`` uint8 array or ``(C, H, W)`` uint8 tensor → uint8 ``(C, H, W)``."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        return read_image(item, channels=in_channels)
    if isinstance(item, Image.Image):
        item = np.array(item.convert("L" if in_channels == 1 else "RGB"))
    t = torch.as_tensor(np.array(item) if not isinstance(item, Tensor) else item)
    if t.dim() == 2:
        t = t[None]
    elif t.dim() == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3, 4):
        t = t.permute(2, 0, 1)[:3]
    if t.shape[0] == 1 and in_channels == 3:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 3 and in_channels == 1:
        t = (t.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True).round()
    return t.to(torch.uint8).contiguous()


def normalize_image(item: Any, in_channels: int = 3, mean: Any = None, std: Any = None) -> Tensor:
    """An image as the float ``(C, H, W)`` tensor a model takes: ``(x / 255 - mean) / std``.

    Args:
        item: a file path, PIL image, uint8 ``(H, W)``/``(H, W, 3)`` array or uint8 ``(C, H, W)`` tensor.
        in_channels: 3 (gray replicated) or 1.
        mean, std: per-channel statistics (a checkpoint's ``normalization``); default NEU-Seg's.

    Raises:
        smelib.data.dataset.DatasetError: a file that cannot be read as an image (the message names it).
    """
    x = _as_uint8_chw(item, in_channels).float() / 255.0
    m = torch.tensor(mean if mean is not None else NEU_SEG_MEAN, dtype=torch.float32).reshape(-1)
    s = torch.tensor(std if std is not None else NEU_SEG_STD, dtype=torch.float32).reshape(-1)
    if m.numel() != x.shape[0]:
        m, s = m.mean().expand(x.shape[0]), s.mean().expand(x.shape[0])
    return (x - m.view(-1, 1, 1)) / s.view(-1, 1, 1)


def _resolve_root(root: Any) -> Path:
    path = data_root(root)
    if root is not None and not path.is_absolute() and not path.exists() and (repo_root() / path).exists():
        return repo_root() / path
    return path


def build_augment(spec: Any) -> Callable[..., Any] | None:
    """The data module's augmentation pipeline for a ``data.augment`` spec (None: no augmentation)."""
    if not spec:
        return None
    try:
        aug = Augment.from_config(spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.augment: {err}") from None
    return None if aug.is_identity() else aug


def load_data(cfg: Mapping[str, Any], seed: int = 0) -> DataBundle:
    """The train/val/test datasets, augmentation and class names a config asks for.

    The split comes from :func:`smelib.data.splits.make_split` (``data.split``, ``data.seed``, ``data.val_fraction``,
    ``data.groups``);
    the datasets from :mod:`smelib.data` (decoded into memory when small, streamed otherwise), normalised with the
    dataset's statistics; ``data.limit`` keeps the first N ids of each subset. The training set carries the
    augmentation (seeded per sample from ``(train.seed, epoch, index)``); validation and test sets do not.
    """
    dc = cfg["data"]
    in_ch = int(cfg["model"]["in_channels"])
    info = open_dataset(_resolve_root(dc["root"]), num_classes=dc["num_classes"])
    num_classes = int(dc["num_classes"] or info.num_classes)
    if num_classes < 2:
        raise DatasetError(f"{info.root}: number of classes unknown; add class_names.txt or set data.num_classes")
    groups = copy_groups = None
    if dc.get("groups") and dc["split"] in ("grouped", "leaky"):
        groups = load_groups(_resolve_root(dc["groups"]))
        if dc["split"] == "leaky":
            copy_groups = load_groups(_resolve_root(dc["groups"]), key="copy_groups")
    split = make_split(info, dc["split"], seed=int(dc["seed"]), val_fraction=float(dc["val_fraction"]),
                       groups=groups, copy_groups=copy_groups)
    ids = {name: list(split.get(name) or []) for name in ("train", "val", "test")}
    if dc["limit"]:
        ids = {name: v[: int(dc["limit"])] for name, v in ids.items()}
    if not ids["train"]:
        raise DatasetError(f"{info.root}: the {dc['split']} split has no training images")
    from PIL import Image

    with Image.open(info.image_paths[ids["train"][0]]) as im:
        w, h = im.size
    total = sum(len(v) for v in ids.values())
    cls = InMemorySegDataset if w * h * total < 600_000_000 else StreamingSegDataset
    kw = dict(channels=in_ch, num_classes=num_classes)

    def make(names: list[str], transform: Any = None) -> Any:
        return cls(info, names, transform=transform, seed=seed, **kw) if names else None

    train = make(ids["train"], build_augment(dc["augment"]))
    names = list(info.class_names) or [f"class_{i}" for i in range(num_classes)]
    facts = {"root": str(info.root), "layout": info.layout, **{k: v for k, v in split.items()
                                                              if k not in ("train", "val", "test", "unused")
                                                              and isinstance(v, (int, float, str, bool))}}
    return DataBundle(train, make(ids["val"]), make(ids["test"]), None, names, num_classes, facts, (h, w),
                      mean=train.mean.reshape(-1).tolist(), std=train.std.reshape(-1).tolist())


def checkpoint_data(meta: Mapping[str, Any], data_root: str | None = None, limit: int | None = None) -> DataBundle:
    """The datasets a checkpoint was trained and evaluated on: its config's split, validation carve-out and seed,
    optionally re-rooted at ``data_root`` and cut to the first ``limit`` ids of each subset.

    Args:
        meta: a checkpoint's meta (:func:`smelib.checkpoint.load_checkpoint`), with its ``config``.
    """
    import copy

    cfg = copy.deepcopy(dict(meta["config"]))
    if data_root is not None:
        cfg["data"]["root"] = data_root
    if limit is not None:
        cfg["data"]["limit"] = limit
    return load_data(cfg, seed=int(cfg["train"]["seed"]))

