"""Convert the native NEU-Seg layout to the Pascal-VOC layout the paper trained from (``smelib data convert``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from smelib.data.dataset import DatasetError, open_dataset
from smelib.data.splits import make_split

__all__ = ["convert_to_voc", "native_to_voc_id"]


def native_to_voc_id(sample_id: str) -> str:
    """``"training/000201"`` -> ``"training_000201"`` (stems repeat across the native splits, so keep both)."""
    return sample_id.replace("/", "_")


def convert_to_voc(
    root: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.1
) -> Path:
    """Write a native NEU-Seg folder in the Pascal VOC layout the paper used.

    Files are copied byte for byte to ``OUT/VOCdevkit/VOC2007/{JPEGImages,SegmentationClass}`` as
    ``<split>_<stem>.{jpg,png}``. ``ImageSets/Segmentation`` gets ``train.txt``/``val.txt`` (the official
    training images split ``1 - val_fraction : val_fraction`` by :func:`smelib.data.splits.make_split` with ``seed``,
    i.e. the paper's 9:1), ``trainval.txt`` and ``test.txt`` (the official test images); ``class_names.txt`` is
    written beside them.

    Args:
        root: native NEU-Seg folder.
        out: destination; must not exist or be an empty folder.
        seed, val_fraction: of the train/val split.

    Returns:
        The ``VOC2007`` folder written.

    Raises:
        DatasetError: ``root`` is not native, or ``out`` is not empty.
    """
    info = open_dataset(root)
    if info.layout != "native":
        raise DatasetError(f"{root}: is already in the VOC layout; convert reads the native NEU-Seg layout")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; refusing to write into it")
    split = make_split(info, "official", seed=seed, val_fraction=val_fraction)
    voc = out / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for sid in info.ids:
        vid = native_to_voc_id(sid)
        shutil.copyfile(info.image_paths[sid], voc / "JPEGImages" / f"{vid}{info.image_paths[sid].suffix}")
        shutil.copyfile(info.mask_paths[sid], voc / "SegmentationClass" / f"{vid}.png")
    lists = {
        "train": split["train"],
        "val": split["val"],
        "trainval": sorted(split["train"] + split["val"]),
        "test": split["test"],
    }
    for name, ids in lists.items():
        text = "".join(f"{native_to_voc_id(i)}\n" for i in ids)
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text(text, encoding="utf-8")
    (voc / "class_names.txt").write_text("".join(f"{n}\n" for n in info.class_names), encoding="utf-8")
    return voc
