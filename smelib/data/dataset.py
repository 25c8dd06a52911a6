"""NEU-Seg and Pascal-VOC-style segmentation datasets: opening, reading, checking, and the Dataset classes.

Converting the native layout to VOC is :mod:`smelib.data.convert`; downloading NEU-Seg, :mod:`smelib.data.download`.

Two on-disk layouts are understood:

* **native** NEU-Seg, as published at github.com/DHW-Master/NEU_Seg::

      ROOT/images/{training,test}/<stem>.jpg
      ROOT/annotations/{training,test}/<stem>.png

  Sample ids are ``"<split>/<stem>"`` (``"training/000201"``, ``"test/000001"``), because the two folders reuse
  stems (``000201``-``000840`` exist in both).
* **voc**, the layout the SME-DeepLabV3+ paper trained from, and the one any user dataset should use::

      ROOT/VOCdevkit/VOC2007/JPEGImages/<id>.jpg          (also .jpeg/.png/.bmp/.tif; gray or RGB; any size)
      ROOT/VOCdevkit/VOC2007/SegmentationClass/<id>.png   (8-bit index PNG, mode 'L' or 'P'; 255 = ignore)
      ROOT/VOCdevkit/VOC2007/ImageSets/Segmentation/{train,val,test}.txt   (optional)
      ROOT/VOCdevkit/VOC2007/class_names.txt              (optional, one name per line, index order)

  ``ROOT`` may also be the ``VOC2007`` folder itself (any folder that directly holds ``JPEGImages/``).
  Sample ids are the file stems.

Masks hold class indices. An RGB *colour* mask (R, G, B not all equal) is refused with a :class:`DatasetError`
that explains the conversion; :func:`colour_mask_to_index` does it given the palette. RGB masks whose three
channels are equal are read as their first channel.

Datasets return a tuple ``(image, mask, sample_id)``: ``image`` float32 ``(C, H, W)`` normalised with
``(x / 255 - mean) / std``, ``mask`` int64 ``(H, W)`` with 255 = ignore, ``sample_id`` a ``str``.
:func:`smelib.data.loading.load_data` builds the datasets a training config asks for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "defect_class",
    "IGNORE_INDEX",
    "NEU_SEG_CLASSES",
    "NEU_SEG_MEAN",
    "NEU_SEG_STD",
    "DatasetError",
    "DatasetInfo",
    "InMemorySegDataset",
    "StreamingSegDataset",
    "check_dataset",
    "colour_mask_to_index",
    "open_dataset",
    "read_image",
    "read_mask",
    "validate_mask_values",
]

IGNORE_INDEX = 255
NEU_SEG_CLASSES: tuple[str, ...] = ("background", "inclusion", "patches", "scratches")
#: NEU-Seg's normalisation, the pixel mean and std of the 3,630 official training images, x / 255 (R = G = B, so one
#: number serves all three channels); ``smelib data check --json`` recomputes them (``pixel_mean``/``pixel_std``).
NEU_SEG_MEAN: tuple[float, float, float] = (0.4455, 0.4455, 0.4455)
#: See :data:`NEU_SEG_MEAN`.
NEU_SEG_STD: tuple[float, float, float] = (0.2057, 0.2057, 0.2057)

NATIVE_SPLITS = ("training", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
Layout = Literal["native", "voc"]


class DatasetError(ValueError):
    """A dataset on disk is not usable; the message names the file (or folder) and the problem."""


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`open_dataset` found: where the files are, the classes, the sample ids and any split lists.

    Attributes:
        root: the folder the user named.
        layout: ``"native"`` (NEU-Seg as published) or ``"voc"``.
        class_names: one name per class index; empty when unknown (a VOC folder with no ``class_names.txt``
            and no ``num_classes`` given; :func:`check_dataset` can then infer the count).
        ids: every sample id, sorted; ``"<split>/<stem>"`` for native, the stem for VOC.
        image_paths, mask_paths: id -> file.
        split_lists: named id lists found on disk: native ``{"training": ..., "test": ...}``; VOC one entry per
            ``ImageSets/Segmentation/*.txt`` file (``train``, ``val``, ``test``, ``trainval``...).
    """

    root: Path
    layout: Layout
    class_names: tuple[str, ...]
    ids: tuple[str, ...]
    image_paths: Mapping[str, Path] = field(repr=False)
    mask_paths: Mapping[str, Path] = field(repr=False)
    split_lists: Mapping[str, tuple[str, ...]] = field(repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes including background; 0 when unknown."""
        return len(self.class_names)

    @property
    def is_neu_seg(self) -> bool:
        """Whether this looks like NEU-Seg (its four class names), so NEU-Seg defaults (mean/std) apply."""
        return self.class_names == NEU_SEG_CLASSES

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------------------------------------
# Opening a dataset


def _voc_dir(root: Path) -> Path | None:
    """The folder holding JPEGImages/ for a VOC root, or None when ``root`` is not VOC-shaped."""
    if (root / "JPEGImages").is_dir():
        return root
    devkit = root / "VOCdevkit"
    if devkit.is_dir():
        if (devkit / "VOC2007" / "JPEGImages").is_dir():
            return devkit / "VOC2007"
        found = sorted(p for p in devkit.iterdir() if (p / "JPEGImages").is_dir())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DatasetError(f"{devkit}: several VOC folders ({names}); pass the one to use as ROOT")
    return None


def _read_class_names(path: Path) -> tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise DatasetError(f"{path}: empty class_names.txt (expected one class name per line)")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: class names repeat")
    return names


def _resolve_names(
    found: tuple[str, ...] | None, num_classes: int | None, class_names: Sequence[str] | None, where: Path
) -> tuple[str, ...]:
    if class_names is not None:
        names = tuple(class_names)
    elif found is not None:
        names = found
    elif num_classes is not None:
        names = tuple(f"class_{i}" for i in range(num_classes))
    else:
        names = ()
    if num_classes is not None and names and len(names) != num_classes:
        raise DatasetError(f"{where}: {len(names)} class names but num_classes={num_classes}")
    return names


def open_dataset(
    root: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> DatasetInfo:
    """Find the layout, files, ids and classes of a dataset folder (reads no pixels).

    Args:
        root: a native NEU-Seg folder (``images/``, ``annotations/``), a VOC root (``VOCdevkit/VOC2007`` below
            it) or a folder directly holding ``JPEGImages/``.
        num_classes: number of classes including background, when there is no ``class_names.txt``; checked
            against the names when both are known.
        class_names: names to use instead of ``class_names.txt`` / the built-in NEU-Seg names.

    Returns:
        A :class:`DatasetInfo`.

    Raises:
        DatasetError: the folder is missing, has neither layout, holds no images, or an image has no mask.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return _open_native(root, num_classes, class_names)
    voc = _voc_dir(root)
    if voc is not None:
        return _open_voc(root, voc, num_classes, class_names)
    raise DatasetError(
        f"{root}: not a dataset folder; expected images/ and annotations/ (native NEU-Seg) or "
        "VOCdevkit/VOC2007/JPEGImages + SegmentationClass (VOC)"
    )


def _list_images(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in out:
                raise DatasetError(f"{p}: two images share the stem {p.stem!r} ({out[p.stem].name})")
            out[p.stem] = p
    return out


def _open_native(root: Path, num_classes: int | None, class_names: Sequence[str] | None) -> DatasetInfo:
    image_paths: dict[str, Path] = {}
    mask_paths: dict[str, Path] = {}
    split_lists: dict[str, tuple[str, ...]] = {}
    for split in NATIVE_SPLITS:
        img_dir = root / "images" / split
        ann_dir = root / "annotations" / split
        if not img_dir.is_dir():
            continue
        ids = []
        for stem, path in _list_images(img_dir).items():
            mask = ann_dir / f"{stem}.png"
            if not mask.is_file():
                raise DatasetError(f"{path}: no mask (expected {mask})")
            sid = f"{split}/{stem}"
            image_paths[sid] = path
            mask_paths[sid] = mask
            ids.append(sid)
        split_lists[split] = tuple(ids)
    if not image_paths:
        raise DatasetError(f"{root}: no images under images/training or images/test")
    found = _read_class_names(root / "class_names.txt") if (root / "class_names.txt").is_file() else None
    names = _resolve_names(found if found is not None else NEU_SEG_CLASSES, num_classes, class_names, root)
    return DatasetInfo(root, "native", names, tuple(sorted(image_paths)), image_paths, mask_paths, split_lists)


def _read_id_list(path: Path) -> tuple[str, ...]:
    # VOC list files may carry a second column (the detection sets do); the id is the first token.
    return tuple(line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _open_voc(
    root: Path, voc: Path, num_classes: int | None, class_names: Sequence[str] | None
) -> DatasetInfo:
    images = _list_images(voc / "JPEGImages")
    seg_dir = voc / "SegmentationClass"
    if not seg_dir.is_dir():
        raise DatasetError(f"{voc}: no SegmentationClass/ folder beside JPEGImages/")
    split_lists: dict[str, tuple[str, ...]] = {}
    sets_dir = voc / "ImageSets" / "Segmentation"
    if sets_dir.is_dir():
        for p in sorted(sets_dir.glob("*.txt")):
            split_lists[p.stem] = _read_id_list(p)
    if split_lists:
        # Real VOC releases hold many detection-only images without masks: the lists say which are segmented.
        wanted = sorted({i for ids in split_lists.values() for i in ids})
        for sid in wanted:
            if sid not in images:
                raise DatasetError(f"{sets_dir}: id {sid!r} is listed but {voc / 'JPEGImages'} has no such image")
    else:
        wanted = sorted(images)
    if not wanted:
        raise DatasetError(f"{voc / 'JPEGImages'}: no images")
    image_paths: dict[str, Path] = {}
    mask_paths: dict[str, Path] = {}
    for sid in wanted:
        mask = seg_dir / f"{sid}.png"
        if not mask.is_file():
            raise DatasetError(f"{images[sid]}: no mask (expected {mask})")
        image_paths[sid] = images[sid]
        mask_paths[sid] = mask
    found = None
    for candidate in (voc / "class_names.txt", root / "class_names.txt"):
        if candidate.is_file():
            found = _read_class_names(candidate)
            break
    names = _resolve_names(found, num_classes, class_names, voc)
    return DatasetInfo(root, "voc", names, tuple(wanted), image_paths, mask_paths, split_lists)


# ----------------------------------------------------------------------------------------------------------
# Reading files


def _open_pil(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except Image.DecompressionBombError as err:
        # Pillow's guard against decompression bombs: too many pixels to decode safely
        raise DatasetError(f"{path}: too large to decode safely ({str(err).split('.')[0]}); "
                           "downscale or tile it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot be read as an image ({err})") from None
    return im


def _image_array(path: Path) -> np.ndarray:
    """Pixels as uint8 ``(H, W)`` for gray images (incl. RGB with R = G = B) or ``(H, W, 3)`` for colour."""
    im = _open_pil(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DatasetError(f"{path}: {im.mode} (16/32-bit) images are not supported; save them as 8-bit")
    if im.mode in ("1", "L", "LA"):
        return np.array(im.convert("L"))
    arr = np.array(im.convert("RGB"))
    # NEU-Seg stores gray pictures as RGB: keeping one channel halves memory and is exact.
    if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return np.ascontiguousarray(arr[..., 0])
    return arr


def read_image(path: str | os.PathLike[str], channels: int = 3) -> torch.Tensor:
    """Read an image file as a uint8 tensor.

    Args:
        path: any format PIL reads (8-bit gray, RGB, RGBA, palette).
        channels: 3 replicates gray images to three channels (what the ImageNet-style backbones expect);
            1 keeps gray as is and converts colour to luminance (ITU-R 601-2, PIL's ``convert('L')``).

    Returns:
        uint8 tensor ``(channels, H, W)``.

    Raises:
        DatasetError: unreadable, corrupt or unsupported file.
    """
    arr = _image_array(Path(path))
    return _to_channels(torch.from_numpy(np.ascontiguousarray(arr)), channels, Path(path))


def _to_channels(t: torch.Tensor, channels: int, path: Path | None = None) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> ``(channels, H, W)``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
        return t.expand(3, -1, -1).contiguous() if channels == 3 else t
    t = t.permute(2, 0, 1)
    if channels == 3:
        return t.contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (t.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)


_COLOUR_HINT = (
    "it is an RGB colour mask, but smelib needs one class index per pixel (0..K-1, 255 = ignore). "
    "Convert it once with smelib.data.colour_mask_to_index(np.asarray(Image.open(path).convert('RGB')), palette) "
    "where palette[k] is the (r, g, b) colour of class k, and save the result as an 8-bit PNG "
    "(Image.fromarray(index.astype('uint8')).save(path)), or save the mask as a palette ('P') PNG"
)


def defect_class(mask: torch.Tensor | np.ndarray, ignore_index: int = IGNORE_INDEX) -> int:
    """The most frequent defect class of a mask (0 when it has no defect pixel; ties: the lower class id).

    Args:
        mask: ``(H, W)`` class indices; 0 is background, ``ignore_index`` is skipped.
        ignore_index: the label of unlabelled pixels.
    """
    v = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    v = v[(v > 0) & (v != ignore_index)]
    return int(v.mode().values) if v.numel() else 0


def read_mask(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read a segmentation mask of class indices.

    Accepted: 8-bit gray ('L'), palette ('P', the palette index is the class, as in Pascal VOC), 1-bit, 16/32-bit
    integer masks whose values fit in 0..255, and RGB/RGBA masks whose three channels are equal. Values are
    not range-checked here (see :func:`validate_mask_values`).

    Args:
        path: PNG (or any lossless format PIL reads).

    Returns:
        uint8 tensor ``(H, W)``.

    Raises:
        DatasetError: unreadable file, values outside 0..255, or an RGB colour mask (the message explains how to
            convert it).
    """
    path = Path(path)
    im = _open_pil(path)
    if im.mode in ("L", "P"):
        arr = np.array(im)
    elif im.mode == "1":
        arr = np.asarray(im).astype(np.uint8)
    elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
        wide = np.asarray(im).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 255):
            raise DatasetError(f"{path}: mask values {int(wide.min())}..{int(wide.max())} do not fit in 0..255")
        arr = wide.astype(np.uint8)
    elif im.mode in ("RGB", "RGBA", "LA", "PA"):
        rgb = np.asarray(im.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DatasetError(f"{path}: {_COLOUR_HINT}")
        arr = rgb[..., 0]
    else:
        raise DatasetError(f"{path}: mask mode {im.mode!r} is not supported; use an 8-bit 'L' or 'P' PNG")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))


def validate_mask_values(mask: torch.Tensor, num_classes: int, path: str | os.PathLike[str]) -> None:
    """Raise :class:`DatasetError` unless every value of ``mask`` (any shape) is < ``num_classes`` or 255."""
    if num_classes <= 0:
        return
    # numpy: elementwise torch ops on small uint8 CPU tensors pay a thread start-up each, which dominates here.
    m = mask.numpy() if mask.device.type == "cpu" else mask.cpu().numpy()
    bad = (m >= num_classes) & (m != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(m[bad]))
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise DatasetError(
            f"{path}: mask values {shown} are >= num_classes={num_classes} (allowed: 0..{num_classes - 1}, "
            f"and {IGNORE_INDEX} = ignore)"
        )


def colour_mask_to_index(
    rgb: np.ndarray, palette: Sequence[Sequence[int]], ignore: Sequence[int] | None = None
) -> np.ndarray:
    """Convert an RGB colour mask to class indices.

    Args:
        rgb: uint8 ``(H, W, 3)``.
        palette: ``palette[k]`` is the ``(r, g, b)`` colour of class ``k``.
        ignore: an optional colour mapped to 255 (Pascal VOC's boundary colour is ``(224, 224, 192)``).

    Returns:
        uint8 ``(H, W)`` of class indices.

    Raises:
        DatasetError: a pixel has a colour that is neither in the palette nor the ignore colour.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DatasetError(f"expected an (H, W, 3) colour mask, got shape {rgb.shape}")
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    out = np.full(code.shape, -1, dtype=np.int64)
    for k, (r, g, b) in enumerate(palette):
        out[code == ((r << 16) | (g << 8) | b)] = k
    if ignore is not None:
        r, g, b = ignore
        out[code == ((r << 16) | (g << 8) | b)] = IGNORE_INDEX
    if (out < 0).any():
        ys, xs = np.nonzero(out < 0)
        colour = tuple(int(c) for c in rgb[ys[0], xs[0]])
        raise DatasetError(f"colour {colour} at pixel (y={ys[0]}, x={xs[0]}) is not in the palette")
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Checking


def _quantiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"n_images": 0}
    q1, med, q3 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.5, 0.75])
    return {
        "n_images": len(values),
        "min": int(min(values)),
        "q1": float(q1),
        "median": float(med),
        "q3": float(q3),
        "max": int(max(values)),
    }


def check_dataset(
    info: DatasetInfo, num_classes: int | None = None, *, max_problems: int = 20, progress: bool = False
) -> dict[str, Any]:
    """Read every image and mask, check them, and describe the labels.

    Checks: every file decodes; image and mask sizes match; mask values are < ``num_classes`` or 255.

    Args:
        info: from :func:`open_dataset`.
        num_classes: overrides ``info.num_classes``; when both are unknown the count is inferred as the largest
            mask value (other than 255) + 1, and the report says so.
        max_problems: how many problems to list in the error before stopping the list.
        progress: show a tqdm bar.

    Returns:
        A JSON-ready dict: counts, image sizes and colour kinds, ``pixel_mean``/``pixel_std`` of ``x / 255``
        over all channels and pixels, ``class_pixel_fraction`` (over labelled
        pixels, i.e. 255 excluded), ``images_containing`` per class and ``defect_pixels_per_image`` per
        foreground class (over the images that contain it: n_images, min, q1, median, q3, max).

    Raises:
        DatasetError: listing every problem found (up to ``max_problems``), the first one first.
    """
    k = num_classes if num_classes is not None else (info.num_classes or None)
    problems: list[str] = []
    sizes: dict[str, int] = {}
    kinds = {"gray": 0, "colour": 0}
    counts = np.zeros(256, dtype=np.int64)
    per_image: list[np.ndarray] = []
    pix_sum = pix_sq = 0.0
    pix_n = 0
    ids: Iterable[str] = info.ids
    if progress:
        from tqdm import tqdm

        ids = tqdm(ids, desc="check", unit="img")
    for sid in ids:
        try:
            arr = _image_array(info.image_paths[sid])
            mask = read_mask(info.mask_paths[sid])
        except DatasetError as err:
            problems.append(str(err))
            continue
        h, w = arr.shape[:2]
        if tuple(mask.shape) != (h, w):
            problems.append(
                f"{info.mask_paths[sid]}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image "
                f"{info.image_paths[sid].name} is {w}x{h}"
            )
            continue
        if k is not None:
            try:
                validate_mask_values(mask, k, info.mask_paths[sid])
            except DatasetError as err:
                problems.append(str(err))
                continue
        sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
        kinds["gray" if arr.ndim == 2 else "colour"] += 1
        a64 = arr.astype(np.float64) / 255.0
        pix_sum += float(a64.sum())
        pix_sq += float((a64 * a64).sum())
        pix_n += a64.size
        c = np.bincount(mask.numpy().ravel(), minlength=256)
        counts += c
        per_image.append(c)
    if problems:
        shown = problems[:max_problems]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        head = f"{len(problems)} problem(s) in {info.root}:\n  " if len(problems) > 1 else ""
        raise DatasetError(head + "\n  ".join(shown) + more)
    inferred = k is None
    if k is None:
        used = np.nonzero(counts[:IGNORE_INDEX])[0]
        k = int(used.max()) + 1 if used.size else 1
    names = list(info.class_names) if len(info.class_names) == k else [f"class_{i}" for i in range(k)]
    labelled = counts[:k].sum()
    table = np.stack(per_image) if per_image else np.zeros((0, 256), dtype=np.int64)
    return {
        "root": str(info.root),
        "layout": info.layout,
        "num_images": len(info.ids),
        "splits": {name: len(ids) for name, ids in info.split_lists.items()},
        "num_classes": k,
        "num_classes_inferred": inferred,
        "class_names": names,
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "image_kinds": kinds,
        "pixel_mean": round(pix_sum / max(pix_n, 1), 5),
        "pixel_std": round(float(np.sqrt(max(pix_sq / max(pix_n, 1) - (pix_sum / max(pix_n, 1)) ** 2, 0.0))), 5),
        "ignore_pixels": int(counts[IGNORE_INDEX]),
        "class_pixels": {names[i]: int(counts[i]) for i in range(k)},
        "class_pixel_fraction": {names[i]: float(counts[i] / max(labelled, 1)) for i in range(k)},
        "images_containing": {names[i]: int((table[:, i] > 0).sum()) for i in range(k)},
        "defect_pixels_per_image": {
            names[i]: _quantiles([int(v) for v in table[:, i] if v > 0]) for i in range(1, k)
        },
    }


# ----------------------------------------------------------------------------------------------------------
# Datasets and loaders

Sample = tuple[torch.Tensor, torch.Tensor, str]
Transform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _norm_stats(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    # One default for every dataset, the one inference uses too; other data can pass its own (the
    # `pixel_mean`/`pixel_std` that `smelib data check` prints).
    m = torch.tensor(NEU_SEG_MEAN if mean is None else mean, dtype=torch.float32).reshape(-1)
    s = torch.tensor(NEU_SEG_STD if std is None else std, dtype=torch.float32).reshape(-1)
    if m.numel() not in (1, 3) or s.numel() not in (1, 3):
        raise ValueError(f"mean and std need 1 or 3 values, got {m.numel()} and {s.numel()}")
    if bool((s <= 0).any()):
        raise ValueError(f"std must be positive, got {s.tolist()}")
    return m.expand(3).clone() if m.numel() == 1 else m, s.expand(3).clone() if s.numel() == 1 else s


class _SegDatasetBase(torch.utils.data.Dataset[Sample]):
    """Shared normalisation, augmentation and seeding; subclasses provide :meth:`_raw`."""

    def __init__(
        self,
        info: DatasetInfo,
        ids: Sequence[str] | None,
        *,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {channels}")
        self.info = info
        self.ids: list[str] = list(info.ids if ids is None else ids)
        unknown = [i for i in self.ids if i not in info.image_paths]
        if unknown:
            raise DatasetError(f"{info.root}: unknown sample ids {unknown[:5]}")
        self.channels = channels
        self.num_classes = num_classes if num_classes is not None else info.num_classes
        m, s = _norm_stats(mean, std)
        # One value per output channel: a 3-value mean serves channels=1 through its average.
        self.mean = (m if channels == 3 else m.mean().view(1)).view(-1, 1, 1)
        self.std = (s if channels == 3 else s.mean().view(1)).view(-1, 1, 1)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw; sample ``i`` of epoch ``e`` is always augmented the same way."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def _raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Undecorated sample: uint8 image ``(channels, H, W)`` and uint8 mask ``(H, W)``."""
        img, mask = self._raw(index)
        return _expand(img, self.channels), mask

    def __getitem__(self, index: int) -> Sample:
        img, mask = self.raw(index)
        x = (img.float() / 255.0 - self.mean) / self.std
        y = mask.long()
        if self.transform is not None:
            g = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, index))
            x, y = self.transform(x, y, g)
        return x, y, self.ids[index]


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    # Independent of worker count and order: each (seed, epoch, index) always gets the same stream.
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _expand(img: torch.Tensor, channels: int) -> torch.Tensor:
    if img.shape[0] == channels:
        return img
    if img.shape[0] == 1:
        return img.expand(3, -1, -1)
    return _to_channels(img.permute(1, 2, 0), channels)


def _read_pair(info: DatasetInfo, sid: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    arr = _image_array(info.image_paths[sid])
    mask = read_mask(info.mask_paths[sid])
    if tuple(mask.shape) != arr.shape[:2]:
        raise DatasetError(
            f"{info.mask_paths[sid]}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image "
            f"{info.image_paths[sid].name} is {arr.shape[1]}x{arr.shape[0]}"
        )
    validate_mask_values(mask, num_classes, info.mask_paths[sid])
    t = torch.from_numpy(arr)
    img = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    return img, mask


class InMemorySegDataset(_SegDatasetBase):
    """Every image and mask decoded once into uint8 tensors (NEU-Seg: 4,470 x 200 x 200, about 180 MB + 180 MB).

    Gray images are kept with one channel and replicated on access, so ``channels=3`` costs no memory.
    Items are ``(image float32 (C, H, W) normalised, mask int64 (H, W), sample_id)``.

    Args:
        info: from :func:`open_dataset`.
        ids: the sample ids to hold (default: all), e.g. ``make_split(info, ...)["train"]``.
        channels: 3 (gray replicated) or 1.
        mean, std: normalisation of ``x / 255``, 1 or 3 values; default
            :data:`~smelib.data.dataset.NEU_SEG_MEAN`/:data:`~smelib.data.dataset.NEU_SEG_STD`
            (0.4455/0.2057) for every dataset; with ``channels=1`` the average of 3 values is used.
        transform: ``f(image, mask, generator) -> (image, mask)`` applied after normalisation, e.g. an
            :class:`smelib.data.augment.Augment`; its generator is seeded from ``(seed, epoch, index)``.
        seed: base of the augmentation seeds.
        num_classes: for the value check (default ``info.num_classes``).
        progress: show a tqdm bar while loading.
    """

    def __init__(
        self, info: DatasetInfo, ids: Sequence[str] | None = None, *, progress: bool = False, **kw: Any
    ) -> None:
        super().__init__(info, ids, **kw)
        it: Iterable[str] = self.ids
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="load", unit="img")
        pairs = [_read_pair(info, sid, self.num_classes) for sid in it]
        self.images: list[torch.Tensor] = [p[0] for p in pairs]
        self.masks: list[torch.Tensor] = [p[1] for p in pairs]

    def _raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.masks[index]


class StreamingSegDataset(_SegDatasetBase):
    """Reads each image and mask from disk on access (for datasets too big to hold); same items and arguments
    as :class:`InMemorySegDataset`. Use DataLoader workers (``data.workers``) to hide the decoding time."""

    def _raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _read_pair(self.info, self.ids[index], self.num_classes)
