"""Dataset figures and statistics for the book's NEU-Seg chapter (and any dataset :mod:`smelib.data` opens).

Three kinds of helpers:

* **statistics**: per-image class pixel counts (:func:`mask_class_counts`), the kind of each image (one defect
  class or ``"mixed"``, :func:`image_kinds`), a seeded choice of examples per kind (:func:`pick_examples`);
* **copies**: find the dihedral transform that relates two copies of one picture (:func:`best_dihedral`), bring
  copies back into one frame and measure how their masks disagree (:func:`align_copies`,
  :func:`pair_disagreements`), find the half that a composite shares with another picture (:func:`shared_half`),
  and group bookkeeping for splits (:func:`restrict_groups`, :func:`groups_crossing`, :func:`with_copy_in`);
* **figures** (matplotlib, class colours from :data:`smelib.palette.CLASS_COLORS`): :func:`sample_grid`,
  :func:`class_fraction_figure`, :func:`defect_size_figure`, :func:`rotated_copies_figure`,
  :func:`composite_figure`.

Transforms follow :func:`smelib.data.splits.dihedral`: ``k`` in ``0..7``; a copy found with transform ``k`` satisfies
``copy ~ dihedral(reference, k)``, and ``dihedral(copy, dihedral_inverse(k))`` brings it back to the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from smelib.data import DatasetInfo, read_image, read_mask
from smelib.data.splits import DIHEDRAL_NAMES, dihedral, dihedral_inverse
from smelib.palette import class_color, overlay

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

__all__ = [
    "BACKGROUND_ONLY",
    "HALVES",
    "SPLIT_COLORS",
    "MIXED",
    "AlignedCopy",
    "PairDisagreement",
    "align_copies",
    "best_dihedral",
    "class_fraction_figure",
    "class_patches",
    "composite_figure",
    "defect_size_figure",
    "dihedral_descriptors",
    "groups_crossing",
    "image_kinds",
    "mask_class_counts",
    "pair_disagreements",
    "pick_examples",
    "read_gray",
    "restrict_groups",
    "rgb01",
    "split_color",
    "rotated_copies_figure",
    "sample_grid",
    "shared_half",
    "with_copy_in",
]

#: The kind of an image whose mask holds more than one foreground class.
MIXED = "mixed"
#: The kind of an image whose mask holds no foreground class.
BACKGROUND_ONLY = "background only"

#: The halves :func:`shared_half` compares.
HALVES = ("top", "bottom", "left", "right")


# ----------------------------------------------------------------------------------------------------------
# Statistics


def mask_class_counts(
    info: DatasetInfo, ids: Sequence[str] | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Pixels of each class in each mask.

    Args:
        info: the dataset.
        ids: which samples (default: all of ``info.ids``, in that order).
        num_classes: ``K``; default ``info.num_classes``. Values ``>= K`` (255 = ignore included) are not counted.

    Returns:
        int64 ``(N, K)``: row ``n`` counts the pixels of class ``0..K-1`` in the mask of ``ids[n]``.
    """
    ids = list(info.ids) if ids is None else list(ids)
    k = num_classes if num_classes is not None else info.num_classes
    if k <= 0:
        raise ValueError("num_classes is unknown for this dataset; pass it")
    out = np.zeros((len(ids), k), dtype=np.int64)
    for n, sid in enumerate(ids):
        out[n] = np.bincount(read_mask(info.mask_paths[sid]).numpy().ravel(), minlength=256)[:k]
    return out


def image_kinds(counts: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Name each image by the foreground classes its mask holds.

    Args:
        counts: ``(N, K)`` pixel counts (:func:`mask_class_counts`); class 0 is background.
        class_names: ``K`` names.

    Returns:
        ``N`` strings: the class name when exactly one foreground class occurs, :data:`MIXED` when several do,
        :data:`BACKGROUND_ONLY` when none does.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(class_names):
        raise ValueError(f"counts must be (N, {len(class_names)}), got {counts.shape}")
    present = counts[:, 1:] > 0
    out = []
    for row in present:
        n = int(row.sum())
        out.append(BACKGROUND_ONLY if n == 0 else MIXED if n > 1 else class_names[1 + int(row.argmax())])
    return out


def pick_examples(
    ids: Sequence[str],
    kinds: Sequence[str],
    order: Sequence[str],
    per_kind: int,
    seed: int = 0,
    groups: Sequence[Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """A seeded random choice of ``per_kind`` ids of each kind (fewer when fewer exist), sorted.

    Args:
        ids, kinds: parallel sequences (``kinds`` from :func:`image_kinds`).
        order: the kinds to pick, in the order of the returned dict.
        per_kind: how many of each.
        seed: for ``numpy.random.default_rng``.
        groups: optional groups of copies; at most one member of each group is picked (over all kinds), so the
            examples show different pictures.

    Returns:
        ``{kind: [id, ...]}`` for each kind in ``order``.
    """
    if len(ids) != len(kinds):
        raise ValueError(f"{len(ids)} ids but {len(kinds)} kinds")
    group_of = {sid: gi for gi, g in enumerate(groups or ()) for sid in g}
    rng = np.random.default_rng(seed)
    used: set[object] = set()
    out: dict[str, list[str]] = {}
    for kind in order:
        cand = sorted(s for s, k in zip(ids, kinds) if k == kind)
        chosen: list[str] = []
        for i in rng.permutation(len(cand)):
            sid = cand[int(i)]
            key = group_of.get(sid, sid)
            if key in used:
                continue
            used.add(key)
            chosen.append(sid)
            if len(chosen) == per_kind:
                break
        out[kind] = sorted(chosen)
    return out


# ----------------------------------------------------------------------------------------------------------
# Copies and transforms


def _gray(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W)`` or ``(C, H, W)`` -> float32 ``(H, W)`` (channel mean)."""
    t = torch.as_tensor(np.asarray(image)).float()
    if t.ndim == 3:
        t = t.mean(0)
    if t.ndim != 2:
        raise ValueError(f"expected an image (H, W) or (C, H, W), got shape {tuple(t.shape)}")
    return t


def _descriptor(t: torch.Tensor, cell: int, region: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-mean, unit-norm vector of a ``cell``-pooled, high-passed ``(H, W)`` image (within ``region``)."""
    pooled = F.avg_pool2d(t[None, None], cell)
    low = F.avg_pool2d(pooled, 5, stride=1, padding=2, count_include_pad=False)
    hp = (pooled - low)[0, 0]
    v = hp[region] if region is not None else hp.flatten()
    v = v - v.mean()
    return v / v.norm().clamp_min(1e-6)


def dihedral_descriptors(image: np.ndarray | torch.Tensor, cell: int = 4) -> torch.Tensor:
    """Descriptors of the 8 dihedral transforms of an image, for matching copies.

    The image is average-pooled in ``cell x cell`` blocks (insensitive to JPEG noise and 1-pixel shifts), its
    5 x 5-block local mean (illumination) is subtracted, and the result is made zero-mean and unit-norm.

    Args:
        image: ``(H, W)`` or ``(C, H, W)``, square (every transform must have the same shape).
        cell: pooling block in pixels.

    Returns:
        float32 ``(8, D)`` with ``D = (H // cell) * (W // cell)``; row ``j`` describes ``dihedral(image, j)``.
    """
    t = _gray(image)
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"dihedral descriptors need a square image, got {tuple(t.shape)}")
    return torch.stack([_descriptor(dihedral(t, j), cell) for j in range(8)])


def best_dihedral(
    reference: np.ndarray | torch.Tensor, other: np.ndarray | torch.Tensor, cell: int = 4
) -> tuple[int, float]:
    """The transform ``k`` with ``other ~ dihedral(reference, k)``, and its score.

    Args:
        reference, other: square images ``(H, W)`` or ``(C, H, W)`` of one size.
        cell: pooling block (see :func:`dihedral_descriptors`).

    Returns:
        ``(k, score)``: ``k`` in ``0..7`` and the cosine similarity (1 for identical pictures; copies of NEU-Seg
        score about 0.99, unrelated pictures below 0.7).
    """
    ref = dihedral_descriptors(reference, cell)[0]
    sims = dihedral_descriptors(other, cell) @ ref  # sims[j]: dihedral(other, j) ~ reference
    j = int(sims.argmax())
    return dihedral_inverse(j), float(sims[j])


def _half_region(shape: tuple[int, int], half: str, depth: float) -> torch.Tensor:
    """Bool ``shape`` selecting the outer ``depth`` share of one half (away from the middle, where composites
    blend)."""
    h, w = shape
    r = torch.zeros(shape, dtype=torch.bool)
    dh, dw = max(1, int(round(depth * h))), max(1, int(round(depth * w)))
    if half == "top":
        r[:dh] = True
    elif half == "bottom":
        r[h - dh :] = True
    elif half == "left":
        r[:, :dw] = True
    elif half == "right":
        r[:, w - dw :] = True
    else:
        raise ValueError(f"half must be one of {HALVES}, not {half!r}")
    return r


def shared_half(
    composite: np.ndarray | torch.Tensor, source: np.ndarray | torch.Tensor, cell: int = 4, depth: float = 0.4
) -> tuple[int, str, float]:
    """Which half of ``composite`` shows ``source``, and in which orientation.

    Compares the outer ``depth`` share of each half of ``composite`` (top, bottom, left, right) with the same
    region of each dihedral transform of ``source``.

    Args:
        composite, source: square images ``(H, W)`` or ``(C, H, W)`` of one size.
        cell: pooling block in pixels.
        depth: share of the image height (or width) compared, measured from the edge.

    Returns:
        ``(j, half, score)``: ``dihedral(source, j)`` matches ``composite`` on ``half`` with cosine ``score``.
    """
    a, b = _gray(composite), _gray(source)
    pooled_shape = (a.shape[0] // cell, a.shape[1] // cell)
    best = (0, HALVES[0], -2.0)
    for half in HALVES:
        region = _half_region(pooled_shape, half, depth)
        ref = _descriptor(a, cell, region)
        for j in range(8):
            s = float(_descriptor(dihedral(b, j), cell, region) @ ref)
            if s > best[2]:
                best = (j, half, s)
    return best


@dataclass(frozen=True)
class AlignedCopy:
    """One copy of a reference picture, as stored and brought back into the reference's frame.

    Attributes:
        sample_id: the copy's id.
        transform: ``k`` with ``copy ~ dihedral(reference, k)``.
        score: cosine similarity of the match (:func:`best_dihedral`).
        image, mask: uint8 ``(H, W)`` as stored.
        image_back, mask_back: uint8 ``(H, W)``, ``dihedral(., dihedral_inverse(transform))`` of the above.
        disagreement: fraction of pixels where ``mask_back`` differs from the reference's mask.
    """

    sample_id: str
    transform: int
    score: float
    image: np.ndarray
    mask: np.ndarray
    image_back: np.ndarray
    mask_back: np.ndarray
    disagreement: float

    @property
    def transform_name(self) -> str:
        """``"rot90"``, ``"rot180"``... (:data:`smelib.data.splits.DIHEDRAL_NAMES`)."""
        return DIHEDRAL_NAMES[self.transform]


def read_gray(info: DatasetInfo, sample_id: str) -> np.ndarray:
    """The picture of ``sample_id`` as uint8 ``(H, W)`` (gray; colour pictures converted to luminance)."""
    return read_image(info.image_paths[sample_id], channels=1)[0].numpy()


def _undo(x: np.ndarray, k: int) -> np.ndarray:
    return dihedral(torch.from_numpy(np.ascontiguousarray(x)), dihedral_inverse(k)).numpy()


def align_copies(
    info: DatasetInfo, reference_id: str, copy_ids: Sequence[str], cell: int = 4
) -> tuple[np.ndarray, np.ndarray, list[AlignedCopy]]:
    """Read a reference picture and its copies, and rotate each copy (image and mask) back onto the reference.

    Args:
        info: the dataset.
        reference_id: the picture whose frame is used.
        copy_ids: its copies (any order; the reference itself is skipped if listed).
        cell: pooling block for matching.

    Returns:
        ``(image, mask, copies)``: the reference's uint8 ``(H, W)`` image and mask, and one :class:`AlignedCopy`
        per copy, in the order given.
    """
    ref_img = read_gray(info, reference_id)
    ref_mask = read_mask(info.mask_paths[reference_id]).numpy()
    out = []
    for sid in copy_ids:
        if sid == reference_id:
            continue
        img = read_gray(info, sid)
        mask = read_mask(info.mask_paths[sid]).numpy()
        k, score = best_dihedral(ref_img, img, cell)
        img_back, mask_back = _undo(img, k), _undo(mask, k)
        dis = float((mask_back != ref_mask).mean()) if mask_back.shape == ref_mask.shape else float("nan")
        out.append(AlignedCopy(sid, k, score, img, mask, img_back, mask_back, dis))
    return ref_img, ref_mask, out


@dataclass(frozen=True)
class PairDisagreement:
    """Two copies ``a``, ``b`` with ``b ~ dihedral(a, transform)``; ``fraction`` of pixels whose labels differ
    once ``b``'s mask is brought into ``a``'s frame (NaN when the shapes differ)."""

    a: str
    b: str
    transform: int
    score: float
    fraction: float


def pair_disagreements(
    info: DatasetInfo, groups: Sequence[Sequence[str]], cell: int = 4
) -> list[PairDisagreement]:
    """Mask disagreement for every pair of images within each group (all ``n (n - 1) / 2`` pairs).

    Each image and mask is read once; groups of one contribute nothing.

    Args:
        info: the dataset.
        groups: copy groups (e.g. ``copy_groups`` of ``smelib data groups``, restricted with
            :func:`restrict_groups`), ids of ``info``.
        cell: pooling block for matching.

    Returns:
        One :class:`PairDisagreement` per pair, groups in the order given, pairs ``(g[x], g[y])`` with ``x < y``.
    """
    out = []
    for g in groups:
        if len(g) < 2:
            continue
        masks = [read_mask(info.mask_paths[s]).numpy() for s in g]
        desc = [dihedral_descriptors(read_gray(info, s), cell) for s in g]
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                sims = desc[y] @ desc[x][0]
                j = int(sims.argmax())
                back = _undo(masks[y], dihedral_inverse(j))
                frac = float((back != masks[x]).mean()) if back.shape == masks[x].shape else float("nan")
                out.append(PairDisagreement(g[x], g[y], dihedral_inverse(j), float(sims[j]), frac))
    return out


def restrict_groups(groups: Sequence[Sequence[str]], ids: Sequence[str] | set[str]) -> list[list[str]]:
    """Keep only the members in ``ids`` (e.g. a sample of the dataset the groups were found on); drop groups
    left empty. Order is kept."""
    keep = set(ids)
    out = [[s for s in g if s in keep] for g in groups]
    return [g for g in out if g]


def groups_crossing(groups: Sequence[Sequence[str]], split: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The groups whose members lie on more than one side of ``split`` (``{side: ids}``); ids on no side are
    ignored."""
    side = {sid: name for name, lst in split.items() for sid in lst}
    return [list(g) for g in groups if len({side[s] for s in g if s in side}) > 1]


def with_copy_in(groups: Sequence[Sequence[str]], queries: Sequence[str], pool: Sequence[str]) -> list[str]:
    """The ids of ``queries`` whose group holds another id that is in ``pool`` (e.g. test images with a copy
    in training), in the order of ``queries``."""
    group_of = {sid: gi for gi, g in enumerate(groups) for sid in g}
    members = [set(g) for g in groups]
    pool_set = set(pool)
    return [q for q in queries if q in group_of and (members[group_of[q]] - {q}) & pool_set]


# ----------------------------------------------------------------------------------------------------------
# Figures


def rgb01(index: int) -> tuple[float, float, float]:
    """Class ``index``'s colour (:func:`smelib.palette.class_color`) as matplotlib RGB in ``[0, 1]``."""
    r, g, b = class_color(index)
    return (r / 255, g / 255, b / 255)


#: Each split's colour as Matplotlib RGB, the same in every figure of the book, palette blue for official and
#: vermillion for grouped (hues no NEU-Seg class takes).
SPLIT_COLORS: dict[str, tuple[float, float, float]] = {"official": rgb01(6), "grouped": rgb01(4)}


def split_color(split: str) -> tuple[float, float, float]:
    """:data:`SPLIT_COLORS` of ``split``; grey for any other split (e.g. ``leaky``)."""
    return SPLIT_COLORS.get(split, (0.3, 0.3, 0.3))


def class_patches(class_names: Sequence[str], include_background: bool = False) -> list[Patch]:
    """Legend handles: one coloured square per class (foreground classes only unless asked)."""
    from matplotlib.patches import Patch

    start = 0 if include_background else 1
    return [Patch(facecolor=rgb01(k), edgecolor="0.3", label=class_names[k]) for k in range(start, len(class_names))]


def _plain(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(
    info: DatasetInfo,
    examples: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
    alpha: float = 0.55,
    figsize: tuple[float, float] = (6.5, 4.8),
    dpi: int = 110,
) -> Figure:
    """One row per kind: each example as picture and as mask overlay, side by side.

    Args:
        info: the dataset.
        examples: ``{row label: ids}`` (e.g. :func:`pick_examples`); rows may differ in length.
        class_names: for the legend.
        alpha: overlay opacity of the class colours.
        figsize, dpi: of the figure.

    Returns:
        The figure (``len(examples)`` rows, ``2 * max(len(ids))`` columns).
    """
    import matplotlib.pyplot as plt

    rows = list(examples.items())
    n = max((len(v) for _, v in rows), default=1)
    fig, axes = plt.subplots(len(rows), 2 * n, figsize=figsize, dpi=dpi, squeeze=False)
    for r, (label, ids) in enumerate(rows):
        for c in range(n):
            a_img, a_ov = axes[r, 2 * c], axes[r, 2 * c + 1]
            for ax in (a_img, a_ov):
                _plain(ax)
            if c >= len(ids):
                a_img.axis("off")
                a_ov.axis("off")
                continue
            sid = ids[c]
            img = read_gray(info, sid)
            mask = read_mask(info.mask_paths[sid]).numpy()
            a_img.imshow(img, cmap="gray", vmin=0, vmax=255)
            a_ov.imshow(overlay(img, mask, alpha))
            a_img.text(0.02, 0.02, sid, transform=a_img.transAxes, fontsize=5.5, color="white", va="bottom",
                       ha="left", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "lw": 0})
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.legend(handles=class_patches(class_names), loc="lower center", ncol=len(class_names), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1), h_pad=0.2, w_pad=0.2)
    return fig


def class_fraction_figure(
    counts_by_split: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    figsize: tuple[float, float] = (6.5, 3.0),
    dpi: int = 110,
) -> Figure:
    """Share of pixels per class, and share of images containing each defect class, one bar group per class.

    Args:
        counts_by_split: ``{split name: (N, K) pixel counts}`` (:func:`mask_class_counts`); one bar per split,
            told apart by hatching.
        class_names: ``K`` names; bars take the class colours.
        figsize, dpi: of the figure.

    Returns:
        The figure (two panels).
    """
    import matplotlib.pyplot as plt

    k = len(class_names)
    splits = list(counts_by_split.items())
    width = 0.8 / max(len(splits), 1)
    hatches = ["", "///", "...", "xx"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=figsize, dpi=dpi, gridspec_kw={"width_ratios": [4, 3]})
    for s, (name, counts) in enumerate(splits):
        counts = np.asarray(counts)
        frac = 100 * counts.sum(0) / max(int(counts.sum()), 1)
        share = 100 * (counts[:, 1:] > 0).mean(0) if len(counts) else np.zeros(k - 1)
        off = (s - (len(splits) - 1) / 2) * width
        h = hatches[s % len(hatches)]
        bars = a1.bar(np.arange(k) + off, frac, width, color=[rgb01(c) for c in range(k)], edgecolor="0.5",
                      hatch=h, label=name)
        a1.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        bars = a2.bar(np.arange(1, k) + off, share, width, color=[rgb01(c) for c in range(1, k)],
                      edgecolor="0.5", hatch=h, label=name)
        a2.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    a1.set_xticks(range(k), class_names, fontsize=7)
    a1.set_ylabel("share of all pixels (%)")
    a1.set_title("pixels per class", fontsize=9)
    a1.set_ylim(0, 100)
    a2.set_xticks(range(1, k), class_names[1:], fontsize=7)
    a2.set_ylabel("images containing the class (%)")
    a2.set_title("images per defect class", fontsize=9)
    a2.set_ylim(0, 100)
    for ax in (a1, a2):
        leg = ax.legend(fontsize=7, frameon=False)
        for patch in leg.get_patches():
            patch.set_facecolor("white")
    fig.tight_layout()
    return fig


def defect_size_figure(
    counts: np.ndarray,
    class_names: Sequence[str],
    image_pixels: int,
    bins: int = 30,
    figsize: tuple[float, float] = (6.5, 3.2),
    dpi: int = 110,
) -> Figure:
    """Distribution of defect area per image and class: step histograms on a log scale of pixels.

    Args:
        counts: ``(N, K)`` pixel counts; only images containing a class count towards its histogram.
        class_names: ``K`` names.
        image_pixels: pixels per image (``H * W``), for the second axis in % of the image area.
        bins: log-spaced bins between the smallest and largest non-zero count.
        figsize, dpi: of the figure.

    Returns:
        The figure (one panel, with a top axis in % of the image).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    counts = np.asarray(counts)
    fg = counts[:, 1:][counts[:, 1:] > 0]
    lo, hi = (max(1, int(fg.min())), int(fg.max())) if fg.size else (1, image_pixels)
    edges = np.geomspace(lo * 0.9, hi * 1.1, bins + 1)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    for c in range(1, counts.shape[1]):
        v = counts[:, c][counts[:, c] > 0]
        if v.size == 0:
            continue
        ax.hist(v, bins=edges, histtype="step", lw=1.6, color=rgb01(c),
                label=f"{class_names[c]} (n = {v.size}, median {int(np.median(v)):,} px)")
    ax.set_xscale("log")
    ax.set_xlabel("defect pixels in the image (px, log scale)")
    ax.set_ylabel("images")
    top = ax.secondary_xaxis("top", functions=(lambda p: 100 * p / image_pixels, lambda q: q * image_pixels / 100))
    top.set_xlabel("share of the image area (%)", fontsize=8)
    top.xaxis.set_major_formatter(FuncFormatter(lambda q, _: f"{q:g}"))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda p, _: f"{p:,.0f}"))
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def _disagreement_rgb(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: white background, light grey where both masks agree on a defect, black where the
    labels differ."""
    out = np.full((*reference.shape, 3), 255, dtype=np.uint8)
    out[(reference > 0) & (reference == other)] = 200
    out[reference != other] = 0
    return out


def rotated_copies_figure(
    info: DatasetInfo,
    reference_id: str,
    copy_ids: Sequence[str],
    class_names: Sequence[str],
    alpha: float = 0.55,
    figsize: tuple[float, float] = (6.5, 5.0),
    dpi: int = 110,
) -> Figure:
    """A picture and its copies: as stored, rotated back onto the reference, and where their masks disagree.

    Rows: (1) each image as stored with its mask overlaid; (2) the copies rotated back with
    ``dihedral(., dihedral_inverse(k))`` (first column: the reference); (3) the disagreement between each copy's
    rotated-back mask and the reference's mask (black: different labels; grey: agreeing defect pixels).

    Args:
        info: the dataset.
        reference_id: e.g. an official test image.
        copy_ids: its copies (e.g. the training members of its copy group).
        class_names: for the legend.
        alpha: overlay opacity.
        figsize, dpi: of the figure.

    Returns:
        The figure (3 rows, ``1 + len(copy_ids)`` columns).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ref_img, ref_mask, copies = align_copies(info, reference_id, copy_ids)
    n = 1 + len(copies)
    fig, axes = plt.subplots(3, n, figsize=figsize, dpi=dpi, squeeze=False)
    axes[0, 0].imshow(overlay(ref_img, ref_mask, alpha))
    axes[0, 0].set_title(f"{reference_id}\n(reference)", fontsize=7)
    axes[1, 0].imshow(overlay(ref_img, ref_mask, alpha))
    axes[1, 0].set_title("reference", fontsize=7)
    axes[2, 0].imshow(_disagreement_rgb(ref_mask, ref_mask))
    axes[2, 0].set_title("0.00 % differ", fontsize=7)
    for c, cp in enumerate(copies, start=1):
        axes[0, c].imshow(overlay(cp.image, cp.mask, alpha))
        axes[0, c].set_title(f"{cp.sample_id}\n= {cp.transform_name} of reference", fontsize=7)
        axes[1, c].imshow(overlay(cp.image_back, cp.mask_back, alpha))
        axes[1, c].set_title(f"rotated back ({DIHEDRAL_NAMES[dihedral_inverse(cp.transform)]})", fontsize=7)
        axes[2, c].imshow(_disagreement_rgb(ref_mask, cp.mask_back))
        axes[2, c].set_title(f"{100 * cp.disagreement:.2f} % differ", fontsize=7)
    for ax in axes.flat:
        _plain(ax)
    axes[0, 0].set_ylabel("as stored", fontsize=8)
    axes[1, 0].set_ylabel("in reference frame", fontsize=8)
    axes[2, 0].set_ylabel("mask vs reference", fontsize=8)
    handles = class_patches(class_names) + [
        Patch(facecolor=(0.78, 0.78, 0.78), edgecolor="0.3", label="same label"),
        Patch(facecolor="black", label="labels differ"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1), h_pad=0.4, w_pad=0.3)
    return fig


def composite_figure(
    info: DatasetInfo,
    composite_id: str,
    source_id: str,
    class_names: Sequence[str],
    alpha: float = 0.55,
    figsize: tuple[float, float] = (6.5, 4.4),
    dpi: int = 110,
) -> Figure:
    """A composite picture next to the single-class picture it shares a half with.

    Columns: the composite, the source as stored, and the source turned by the transform that matches the shared
    half (:func:`shared_half`), which is outlined in the composite and the turned source. Rows: picture, mask
    overlay.

    Args:
        info: the dataset.
        composite_id: the multi-class picture.
        source_id: the picture one of its halves comes from.
        class_names: for the legend.
        alpha: overlay opacity.
        figsize, dpi: of the figure.

    Returns:
        The figure (2 rows, 3 columns).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    comp, src = read_gray(info, composite_id), read_gray(info, source_id)
    mc = read_mask(info.mask_paths[composite_id]).numpy()
    ms = read_mask(info.mask_paths[source_id]).numpy()
    j, half, score = shared_half(comp, src)

    def turn(x: np.ndarray) -> np.ndarray:
        return dihedral(torch.from_numpy(np.ascontiguousarray(x)), j).numpy()

    h, w = comp.shape
    box = {"top": (0, 0, w, h / 2), "bottom": (0, h / 2, w, h / 2), "left": (0, 0, w / 2, h),
           "right": (w / 2, 0, w / 2, h)}[half]
    x0, y0, bw, bh = (int(v) for v in box)
    differ = float((mc[y0 : y0 + bh, x0 : x0 + bw] != turn(ms)[y0 : y0 + bh, x0 : x0 + bw]).mean())
    fig, axes = plt.subplots(2, 3, figsize=figsize, dpi=dpi)
    cols = [(comp, mc, f"{composite_id}\n(composite)"), (src, ms, f"{source_id}\n(as stored)"),
            (turn(src), turn(ms), f"{source_id}, {DIHEDRAL_NAMES[j]}\n{half} half matches")]
    for c, (img, mask, title) in enumerate(cols):
        axes[0, c].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[1, c].imshow(overlay(img, mask, alpha))
        axes[0, c].set_title(title, fontsize=7)
        if c != 1:
            for r in range(2):
                axes[r, c].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), bw, bh, fill=False, ec="white", lw=1.5,
                                               ls="--"))
    for ax in axes.flat:
        _plain(ax)
    axes[0, 0].set_ylabel(f"picture ({w} × {h} px)", fontsize=8)
    axes[1, 0].set_ylabel("mask overlay", fontsize=8)
    fig.legend(handles=class_patches(class_names), loc="lower center", ncol=len(class_names), fontsize=8,
               frameon=False)
    axes[1, 2].set_xlabel(f"labels differ on {100 * differ:.1f} % of the {half} half", fontsize=7)
    axes[0, 2].set_xlabel(f"cosine similarity {score:.3f}", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
