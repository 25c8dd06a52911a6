"""Near-duplicate groups, the leakage audit, and official and group-aware train/val/test splits.

NEU-Seg shows most surface patches several times: rotated by 90/180/270 degrees (a few also shifted by a
pixel, four pairs exactly duplicated), each copy re-encoded as JPEG, so copies are *not* byte-identical. Its
multi-class images are moreover composites: half of one single-class picture blended with half of another.
Many official test images therefore have a copy, or share half their content, with a training image.
:func:`find_groups` finds both kinds of link; :func:`make_split` builds the ``official`` split, a ``grouped``
one that keeps every group on one side, and a ``leaky`` one that puts the official split's leak back into the
grouped one (to measure it on fixed test pictures); :func:`audit` measures the leakage and how much the masks of copies
disagree.

Dihedral transforms are numbered ``k = 0..7``: ``k < 4`` is ``torch.rot90(x, k, (-2, -1))``, ``k >= 4`` is the
same rotation applied after a left-right flip (:func:`dihedral`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from smelib.data.dataset import DatasetError, DatasetInfo, read_mask

__all__ = [
    "COPY_THRESHOLD",
    "OVERLAP_THRESHOLD",
    "Groups",
    "Link",
    "audit",
    "dihedral",
    "dihedral_inverse",
    "find_groups",
    "groups_from_json",
    "load_groups",
    "make_split",
    "save_groups",
    "split_summary",
    "DIHEDRAL_NAMES",
]

#: The eight symmetries of the square, in the order of :func:`dihedral`'s ``k``.
DIHEDRAL_NAMES = ("identity", "rot90", "rot180", "rot270", "flip", "flip+rot90", "flip+rot180", "flip+rot270")

# Thresholds on cosine similarity of the high-passed thumbnails (see find_groups for how they were chosen).
COPY_THRESHOLD = 0.97
OVERLAP_THRESHOLD = 0.98

_COPY_SIZE = 32  # full-image descriptor: 32 x 32 cells (6.25 px each on NEU-Seg)
_COPY_LOWPASS = 4  # removed low-pass: 4 x 4-cell means (25 px on NEU-Seg), i.e. illumination gradients
_STRIP_SIZE = 40  # half-image descriptor: 40 x 40 cells, 4 strips of 14 x 32 cells along the borders
_STRIP_LOWPASS = 5


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of the dihedral group on the last two dims of ``x`` (``(..., H, W)``)."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be 0..7, not {k}")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, (-2, -1))


def dihedral_inverse(k: int) -> int:
    """The index ``j`` with ``dihedral(dihedral(x, k), j) == x``: rotations invert to the opposite turn, flips
    (reflections) are their own inverse."""
    return (4 - k) % 4 if k < 4 else k


@dataclass(frozen=True)
class Link:
    """Two images found to show the same content: ``image(a) ~ dihedral(image(b), transform)``.

    ``kind`` is ``"copy"`` (the whole image) or ``"overlap"`` (a border half of the image, as in the composites).
    """

    a: str
    b: str
    score: float
    transform: int
    kind: Literal["copy", "overlap"]


@dataclass
class Groups:
    """Result of :func:`find_groups`.

    Attributes:
        groups: the partition used by grouped splits: connected components of copy *and* overlap links
            (``overlaps=False`` leaves overlaps out). Each group sorted, groups sorted by first id; every id
            appears in exactly one group, singletons included.
        copy_groups: connected components of copy links only (the "same patch up to rotation/flip" groups).
        links: every link found (copies and overlaps).
        params: thresholds and descriptor sizes used.
    """

    ids: list[str]
    groups: list[list[str]]
    copy_groups: list[list[str]]
    links: list[Link] = field(repr=False)
    params: dict[str, Any]

    def group_of(self) -> dict[str, int]:
        """id -> index into :attr:`groups`."""
        return {sid: gi for gi, g in enumerate(self.groups) for sid in g}

    def to_json(self) -> dict[str, Any]:
        """The JSON document ``smelib data groups`` writes: ``groups`` (as above), ``copy_groups``, ``params``."""
        return {"groups": self.groups, "copy_groups": self.copy_groups, "params": self.params}


# ----------------------------------------------------------------------------------------------------------
# Descriptors


def _load_gray(info: DatasetInfo, ids: Sequence[str], draft: int | None, progress: bool) -> list[np.ndarray]:
    """Decode images as uint8 ``(H, W)`` luminance; ``draft`` lets libjpeg decode at 1/2..1/8 scale (fast)."""
    it: Iterable[str] = ids
    if progress:
        from tqdm import tqdm

        it = tqdm(ids, desc="read", unit="img")
    out = []
    for sid in it:
        path = info.image_paths[sid]
        try:
            with Image.open(path) as im:
                if draft is not None:
                    im.draft("L", (draft, draft))
                out.append(np.array(im.convert("L")))
        except OSError as err:
            raise DatasetError(f"{path}: cannot be read as an image ({err})") from None
    return out


def _thumbnails(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Area-averaged ``(N, size, size)`` float32 thumbnails (aspect ratio dropped; see find_groups)."""
    out = torch.empty((len(images), size, size))
    for i, arr in enumerate(images):
        t = torch.from_numpy(arr).float()[None, None]
        out[i] = F.adaptive_avg_pool2d(t, size)[0, 0]
    return out


def _highpass(t: torch.Tensor, cell: int) -> torch.Tensor:
    """Remove the ``cell``-block low-pass (illumination, overall brightness) from ``(N, S, S)`` thumbnails."""
    s = t.shape[-1]
    low = F.interpolate(F.avg_pool2d(t[:, None], cell), size=(s, s), mode="bilinear", align_corners=False)
    return t - low[:, 0]


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _copy_descriptors(thumbs: torch.Tensor) -> torch.Tensor:
    """``(N, S, S)`` -> ``(N, 8, S*S)``: unit, zero-mean, high-passed descriptor of each dihedral transform."""
    hp = _highpass(thumbs, _COPY_LOWPASS)
    return _unit(torch.stack([dihedral(hp, k) for k in range(8)], 1).flatten(-2))


def _strip_descriptors(thumbs: torch.Tensor) -> torch.Tensor:
    """``(N, 40, 40)`` -> ``(N, 8, 4, 448)``: the four border strips (top, bottom, left, right; 14 x 32 cells,
    away from the corners and the middle where composites blend) of each dihedral transform."""
    hp = _highpass(thumbs, _STRIP_LOWPASS)
    t = torch.stack([dihedral(hp, k) for k in range(8)], 1)
    s = _STRIP_SIZE
    a, b, lo, hi = 2, 16, 4, s - 4  # strip depth 2..16 cells, span 4..36 cells
    top = t[..., a:b, lo:hi]
    bottom = t[..., s - b : s - a, lo:hi]
    left = t[..., lo:hi, a:b].transpose(-1, -2)
    right = t[..., lo:hi, s - b : s - a].transpose(-1, -2)
    return _unit(torch.stack([top, bottom, left, right], 2).flatten(-2))


def _links_above(
    query: torch.Tensor, keys: torch.Tensor, threshold: float, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All ``(i, j)`` with ``max_k <query_i, keys_j,k> >= threshold``, ``i != j``.

    Args:
        query: ``(N, D)``; keys: ``(N, 8, D)``.

    Returns:
        ``i, j, score, k`` arrays (int64, int64, float32, int64); each unordered pair may appear twice.
    """
    n = query.shape[0]
    flat = keys.reshape(n * 8, -1).T.contiguous()  # (D, 8N)
    out_i, out_j, out_s, out_k = [], [], [], []
    for start in range(0, n, chunk):
        sims = (query[start : start + chunk] @ flat).view(-1, n, 8)
        best, arg = sims.max(-1)
        rows = torch.arange(start, start + best.shape[0])
        best[rows - start, rows] = -2.0
        ii, jj = torch.nonzero(best >= threshold, as_tuple=True)
        out_i.append((ii + start).numpy())
        out_j.append(jj.numpy())
        out_s.append(best[ii, jj].numpy())
        out_k.append(arg[ii, jj].numpy())
    i, j, s, k = (np.concatenate(a) for a in (out_i, out_j, out_s, out_k))
    return i, j, s, k


def _components(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Union-find: component label (smallest member index) for each of ``n`` items."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return int(root)

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])


def _as_groups(ids: Sequence[str], labels: np.ndarray) -> list[list[str]]:
    by: dict[int, list[str]] = {}
    for sid, lab in zip(ids, labels):
        by.setdefault(int(lab), []).append(sid)
    return sorted((sorted(g) for g in by.values()), key=lambda g: g[0])


def find_groups(
    info: DatasetInfo,
    *,
    copy_threshold: float = COPY_THRESHOLD,
    overlap_threshold: float = OVERLAP_THRESHOLD,
    overlaps: bool = True,
    progress: bool = False,
) -> Groups:
    """Group images that show the same surface content, up to rotation by 90/180/270 degrees and flips.

    Descriptors: each image is decoded as luminance and area-averaged to a 32 x 32 thumbnail; the 4 x 4-cell
    local mean is subtracted (so illumination gradients and brightness, which many unrelated steel pictures
    share, do not count), and the result is made zero-mean and unit-norm. Two images are *copies* when the
    cosine similarity of one with the best of the other's 8 dihedral transforms is >= ``copy_threshold``.
    Cells of 6 px make this insensitive to JPEG noise and to the 1-pixel shifts seen between some copies. For
    the composites, the same is done with the four border strips (14 x 32 cells of a 40 x 40 thumbnail, each
    covering a third of the image along one edge): an *overlap* is a strip similarity >= ``overlap_threshold``.
    Groups are the connected components (union-find) of the links. All similarities are computed as chunked
    matrix products (about 330 GFLOP for copies and 570 for strips on 4,470 images: 20-30 s on 2 CPU cores).

    How the thresholds were validated on the full NEU-Seg (4,470 images). Copy similarities are bimodal. With
    the threshold anywhere in 0.94-0.98, the 30 images that have no copy (all official test images; their best
    match anywhere scores <= 0.70) stay alone and every other image falls in a group of 4 (one picture at 0,
    90, 180 and 270 degrees; no flipped copies were found) or of 8 (two such groups joined); only the number of
    8s moves (21 at 0.94, 12 at 0.97, 10 at 0.98). Exact duplicates score 1.0 and copies shifted by one pixel
    score >= 0.98; composites dominated by one shared bright roll mark score 0.95-0.97 against each other. Below
    0.94 such composites join groups into 12s and 16s; from 0.985 JPEG noise splits true groups of 4 into
    3 + 1. 0.97 sits in the stable range, above most composite pairs (the overlap links handle those).

    Overlap similarities have no clean gap. Of the strip links >= 0.98, ~93 % were confirmed at full resolution
    (high-passed correlation >= 0.8 with a +-2 px shift search), and most of a dozen random ones checked by
    eye showed shared content (one was unclear). Many true overlaps score below 0.98 (composites whose blend
    reaches into the border strips; about a thousand pairs at 0.85-0.98 also correlate >= 0.9 at full
    resolution), so overlap counts are a lower bound. The largest group this makes on NEU-Seg has 40 images: a
    chain of composites sharing one inclusion streak, one patch and one scratch, checked by eye.

    Non-square images are squeezed to square thumbnails: rotating then squeezing equals squeezing then
    rotating, so the descriptor still matches rotated copies.

    Args:
        info: the dataset.
        copy_threshold, overlap_threshold: see above.
        overlaps: also link half-image overlaps (composites); False gives ``groups == copy_groups``.
        progress: show a bar while reading.

    Returns:
        :class:`Groups`.
    """
    ids = list(info.ids)
    n = len(ids)
    # libjpeg's draft mode decodes at the smallest 1/2^k scale still >= 2x the largest thumbnail, far faster than
    # decoding at full size and shrinking.
    images = _load_gray(info, ids, draft=2 * _STRIP_SIZE, progress=progress)
    copy_desc = _copy_descriptors(_thumbnails(images, _COPY_SIZE))
    ci, cj, cs, ck = _links_above(copy_desc[:, 0], copy_desc, copy_threshold)
    links = [
        Link(ids[i], ids[j], float(s), int(k), "copy") for i, j, s, k in zip(ci, cj, cs, ck) if i < j
    ]
    copy_labels = _components(n, zip(ci, cj))
    pairs = list(zip(ci, cj))
    if overlaps:
        strips = _strip_descriptors(_thumbnails(images, _STRIP_SIZE))
        best: dict[tuple[int, int], tuple[float, int]] = {}
        for s in range(4):
            oi, oj, os_, ok = _links_above(strips[:, 0, s], strips[:, :, s], overlap_threshold)
            for i, j, sc, k in zip(oi, oj, os_, ok):
                if copy_labels[i] == copy_labels[j]:
                    continue
                key = (int(min(i, j)), int(max(i, j)))
                # Direction matters for the transform: store it as image(a) ~ T_k(image(b)) with a < b.
                kk = int(k) if i < j else dihedral_inverse(int(k))
                if key not in best or sc > best[key][0]:
                    best[key] = (float(sc), kk)
        for (i, j), (sc, k) in sorted(best.items()):
            links.append(Link(ids[i], ids[j], sc, k, "overlap"))
            pairs.append((i, j))
    labels = _components(n, pairs)
    params = {
        "copy_threshold": copy_threshold,
        "overlap_threshold": overlap_threshold if overlaps else None,
        "copy_descriptor": f"{_COPY_SIZE}x{_COPY_SIZE} thumbnail minus {_COPY_LOWPASS}x{_COPY_LOWPASS}-cell mean",
        "overlap_descriptor": f"4 border strips of a {_STRIP_SIZE}x{_STRIP_SIZE} thumbnail minus "
        f"{_STRIP_LOWPASS}x{_STRIP_LOWPASS}-cell mean",
        "n_copy_links": sum(1 for lk in links if lk.kind == "copy"),
        "n_overlap_links": sum(1 for lk in links if lk.kind == "overlap"),
    }
    return Groups(ids, _as_groups(ids, labels), _as_groups(ids, copy_labels), links, params)


def save_groups(groups: Groups, path: str | os.PathLike[str]) -> None:
    """Write :meth:`Groups.to_json` to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = groups.to_json()

    # One group per line: diffable and still small (the full NEU-Seg file is about 1,100 lines).
    def block(gs: list[list[str]]) -> str:
        return "[\n  " + ",\n  ".join(json.dumps(g) for g in gs) + "\n ]"

    text = "{\n " + ",\n ".join(
        [f'"groups": {block(doc["groups"])}', f'"copy_groups": {block(doc["copy_groups"])}',
         f'"params": {json.dumps(doc["params"])}']
    ) + "\n}\n"
    path.write_text(text, encoding="utf-8")


def groups_from_json(doc: Mapping[str, Any], key: str = "groups") -> list[list[str]]:
    """The ``key`` list (``"groups"`` or ``"copy_groups"``) of a groups document, checked to be a list of lists of
    ids with no repeats."""
    groups = doc.get(key)
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise DatasetError(f"groups JSON: expected {{{key!r}: [[id, ...], ...]}}")
    seen: set[str] = set()
    for g in groups:
        for sid in g:
            if sid in seen:
                raise DatasetError(f"groups JSON: {sid!r} is in more than one group of its {key!r}")
            seen.add(sid)
    return [list(map(str, g)) for g in groups]


def load_groups(path: str | os.PathLike[str], key: str = "groups") -> list[list[str]]:
    """Read the ``groups`` (or, with ``key="copy_groups"``, the copy-only groups) of a JSON file written by
    ``smelib data groups``; the error names the file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read groups JSON ({err})") from None
    try:
        return groups_from_json(doc, key)
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------------------------------------
# Splits


def _class_presence(info: DatasetInfo, ids: Sequence[str], num_classes: int) -> np.ndarray:
    """``(N, K)`` bool: does image i contain class c (any pixel)."""
    out = np.zeros((len(ids), max(num_classes, 1)), dtype=bool)
    for n, sid in enumerate(ids):
        m = read_mask(info.mask_paths[sid]).numpy()
        vals = np.unique(m)
        vals = vals[vals < out.shape[1]]
        out[n, vals] = True
    return out


def _train_val(ids: Sequence[str], seed: int, val_fraction: float) -> tuple[list[str], list[str]]:
    ids = sorted(ids)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    val = sorted(ids[i] for i in perm[:n_val])
    train = sorted(ids[i] for i in perm[n_val:])
    return train, val


def _official(info: DatasetInfo, seed: int, val_fraction: float, test_fraction: float | None) -> dict[str, list[str]]:
    lists = info.split_lists
    if info.layout == "native":
        test = sorted(lists.get("test", ()))
        train, val = _train_val(lists.get("training", ()), seed, val_fraction)
        return {"train": train, "val": val, "test": test}
    test = sorted(lists.get("test", ()))
    if "train" in lists and "val" in lists:
        return {"train": sorted(lists["train"]), "val": sorted(lists["val"]), "test": test}
    if "trainval" in lists or "train" in lists:
        pool = lists.get("trainval", lists.get("train", ()))
        train, val = _train_val(pool, seed, val_fraction)
        return {"train": train, "val": val, "test": test}
    # No lists at all: a seeded random split, said out loud because "official" then means nothing upstream.
    tf = 0.1 if test_fraction is None else test_fraction
    warnings.warn(
        f"{info.root}: no ImageSets/Segmentation lists; 'official' split is a seeded random "
        f"{1 - tf:.0%}/{tf:.0%} train+val/test split",
        UserWarning,
        stacklevel=3,
    )
    rng = np.random.default_rng(seed)
    ids = sorted(info.ids)
    perm = rng.permutation(len(ids))
    n_test = int(round(tf * len(ids)))
    test = sorted(ids[i] for i in perm[:n_test])
    train, val = _train_val([ids[i] for i in perm[n_test:]], seed, val_fraction)
    return {"train": train, "val": val, "test": test}


def _pick_groups(
    features: np.ndarray, target: np.ndarray, weights: np.ndarray, order: Sequence[int], max_rounds: int = 500
) -> list[int]:
    """Choose groups (among ``order``) whose summed features come close to ``target``.

    A greedy pass in ``order`` (take a group when it brings the sum closer), then local search: the best single
    move (add one group, drop one, or swap one in for one out) while it lowers the cost. The cost is the weighted
    sum of squared relative errors. Deterministic given ``order``.

    Args:
        features: ``(G, D)`` per-group sums; target, weights: ``(D,)``; order: candidate group indices.

    Returns:
        Chosen group indices.
    """
    scale = np.maximum(target, 1.0)
    w = weights / scale**2

    def cost(v: np.ndarray) -> np.ndarray:
        return ((v - target) ** 2 * w).sum(-1)

    cand = np.asarray(list(order), dtype=np.int64)
    if cand.size == 0:
        return []
    f = features[cand]
    inside = np.zeros(cand.size, dtype=bool)
    acc = np.zeros_like(target, dtype=np.float64)
    current = float(cost(acc))
    for n in range(cand.size):
        c = float(cost(acc + f[n]))
        if c < current:
            acc, current = acc + f[n], c
            inside[n] = True
    for _ in range(max_rounds):
        ins, outs = np.nonzero(inside)[0], np.nonzero(~inside)[0]
        add = cost(acc + f[outs]) if outs.size else np.zeros(0)
        drop = cost(acc - f[ins]) if ins.size else np.zeros(0)
        swap = cost(acc - f[ins][:, None] + f[outs][None, :]) if ins.size and outs.size else np.zeros((0, 0))
        best = current
        move: tuple[int, ...] = ()
        if add.size and add.min() < best:
            best, move = float(add.min()), (int(outs[add.argmin()]),)
        if drop.size and drop.min() < best:
            best, move = float(drop.min()), (int(ins[drop.argmin()]), -1)
        if swap.size and swap.min() < best - 1e-12:
            a, b = np.unravel_index(int(swap.argmin()), swap.shape)
            best, move = float(swap.min()), (int(ins[a]), int(outs[b]))
        if not move:
            break
        if len(move) == 1:
            inside[move[0]] = True
        elif move[1] == -1:
            inside[move[0]] = False
        else:
            inside[move[0]], inside[move[1]] = False, True
        acc = f[inside].sum(0)
        current = best
    return [int(g) for g in cand[inside]]


def _grouped(
    info: DatasetInfo,
    seed: int,
    val_fraction: float,
    test_fraction: float | None,
    groups: Sequence[Sequence[str]] | None,
) -> dict[str, list[str]]:
    ids = list(info.ids)
    if groups is None:
        groups = find_groups(info).groups
    index = {sid: n for n, sid in enumerate(ids)}
    covered = [sid for g in groups for sid in g]
    unknown = [sid for sid in covered if sid not in index]
    if unknown:
        raise DatasetError(f"groups name ids that {info.root} does not have, e.g. {unknown[:3]}")
    if len(covered) != len(set(covered)):
        raise DatasetError("groups overlap: an id is in more than one group")
    groups = [list(g) for g in groups] + [[sid] for sid in sorted(set(ids) - set(covered))]
    if all(len(g) == 1 for g in groups):
        warnings.warn(
            f"{info.root}: no near-duplicate groups found; the 'grouped' split is a seeded random split balanced "
            "over classes (it keeps nothing together because nothing needs to be)",
            UserWarning,
            stacklevel=3,
        )
    official_test = [sid for sid in info.split_lists.get("test", ()) if sid in index]
    k = info.num_classes or 1
    presence = _class_presence(info, ids, k)
    # Balance: number of images, images containing each foreground class, and multi-class images.
    per_image = np.concatenate(
        [np.ones((len(ids), 1)), presence[:, 1:], (presence[:, 1:].sum(1, keepdims=True) > 1)], 1
    ).astype(np.float64)
    feats = np.stack([per_image[[index[s] for s in g]].sum(0) for g in groups])
    weights = np.ones(feats.shape[1])
    weights[0] = 4.0  # the split size matters most
    rng = np.random.default_rng(seed)
    # Large groups first (like bin packing), random order among equal sizes.
    order = sorted(rng.permutation(len(groups)).tolist(), key=lambda g: -len(groups[g]))
    if test_fraction is None and official_test:
        # Aim at the official test set's own size and class make-up, so scores stay comparable.
        test_target = per_image[[index[s] for s in official_test]].sum(0)
    else:
        test_target = feats.sum(0) * (0.1 if test_fraction is None else test_fraction)
    test_g = set(_pick_groups(feats, test_target, weights, order))
    rest = [g for g in order if g not in test_g]
    val_g = set(_pick_groups(feats, feats[rest].sum(0) * val_fraction, weights, rest))
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for gi, g in enumerate(groups):
        side = "test" if gi in test_g else "val" if gi in val_g else "train"
        out[side].extend(g)
    return {key: sorted(v) for key, v in out.items()}


def _leaky(
    info: DatasetInfo,
    seed: int,
    val_fraction: float,
    test_fraction: float | None,
    groups: Sequence[Sequence[str]] | None,
    copy_groups: Sequence[Sequence[str]] | None,
) -> dict[str, list[str]]:
    if (groups is None) != (copy_groups is None):
        raise DatasetError("the leaky split needs both the groups and the copy groups (the groups JSON's "
                           "'groups' and 'copy_groups'), or neither to detect them now")
    if groups is None:
        found = find_groups(info)
        groups, copy_groups = found.groups, found.copy_groups
    base = _grouped(info, seed, val_fraction, test_fraction, groups)
    test = set(base["test"])
    copy_of = {sid: n for n, g in enumerate(copy_groups or ()) for sid in g}
    members: dict[int | str, list[str]] = {}
    for sid in base["test"]:
        members.setdefault(copy_of.get(sid, sid), []).append(sid)
    for key in members:
        if isinstance(key, int) and not set(copy_groups[key]) <= test:  # type: ignore[index]
            raise DatasetError(f"copy group of {members[key][0]!r} reaches outside the grouped test set: the copy "
                               "groups do not nest in the groups")
    # A stream of its own, so the grouped sides above stay exactly the grouped split's.
    rng = np.random.default_rng([seed, 1])
    kept, moved = [], []
    for key in sorted(members, key=lambda m: members[m][0]):
        ids = sorted(members[key])
        keep = int(rng.integers(len(ids)))
        kept.append(ids[keep])
        moved.extend(ids[:keep] + ids[keep + 1:])
    # Hold the training set's size: drop whole training groups (never linked to test) worth as many images.
    train = set(base["train"])
    train_groups = [sorted(set(g) & train) for g in groups]
    train_groups = [g for g in train_groups if g] + [[sid] for sid in sorted(train - {s for g in groups for s in g})]
    dropped: list[str] = []
    for gi in rng.permutation(len(train_groups)).tolist():
        if len(dropped) + len(train_groups[gi]) <= len(moved):
            dropped.extend(train_groups[gi])
        if len(dropped) == len(moved):
            break
    return {"train": sorted((train - set(dropped)) | set(moved)), "val": base["val"], "test": sorted(kept),
            "unused": sorted(dropped)}


def make_split(
    info: DatasetInfo,
    kind: Literal["official", "grouped", "leaky"] = "official",
    seed: int = 0,
    val_fraction: float = 0.1,
    *,
    groups: Sequence[Sequence[str]] | None = None,
    copy_groups: Sequence[Sequence[str]] | None = None,
    test_fraction: float | None = None,
) -> dict[str, list[str]]:
    """Train/val/test id lists.

    ``official``: native NEU-Seg: test = the 840 official test images; the 3,630 training images are split
    ``1 - val_fraction : val_fraction`` (the paper's 9:1) by a seeded permutation. VOC: the
    ``ImageSets/Segmentation`` lists (``train``/``val``/``test``; a lone ``trainval`` or ``train`` is split as
    above; missing ``test`` gives an empty test list; no lists at all: a seeded random split, with a warning).

    ``grouped``: whole groups (:func:`find_groups`, or ``groups``) go to one side. Test aims at the official
    test set's number of images, of images containing each class and of multi-class images (NEU-Seg: 840,
    364/360/353, 232); without a test list, or with ``test_fraction``, at that share of the totals (default
    0.1). Val then aims at ``val_fraction`` of what is left. Each side is filled greedily (largest groups
    first, in a seeded random order) and improved by single add/drop/swap moves. Datasets without duplicates
    (typical user data) have only singleton groups, so this falls back to a class-balanced seeded random
    split, with a warning.

    ``leaky``: the grouped split with the official split's leak put back, to measure what the leak is worth on
    fixed test pictures. Of each copy group of the grouped test set (the same picture rotated or flipped,
    ``copy_groups``), one image, drawn by ``seed``, stays in test; the others move to training, as the official
    split has them. So that the training set keeps its size, whole training groups worth as many images (none of
    them linked to a test image; as close to that count as whole groups allow, exact on NEU-Seg) are dropped,
    listed under ``"unused"``. Validation is the grouped split's. Scored
    on the leaky test images, a grouped-split run and a leaky-split run differ only in whether training held
    rotated copies of those pictures (and in the dropped groups).

    Args:
        info: from :func:`smelib.data.dataset.open_dataset`.
        kind: ``"official"``, ``"grouped"`` or ``"leaky"``.
        seed: the same seed gives the same split.
        val_fraction: share of the non-test images used for validation.
        groups: precomputed groups (grouped and leaky); ids not in any group become singletons.
        copy_groups: precomputed copy-only groups (leaky; with ``groups``, or neither to detect both now).
        test_fraction: overrides the test share (grouped, and VOC without lists).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted; together every id once (VOC lists
        that leave images out or overlap are passed through as they are; ``leaky`` adds ``"unused"``, the
        dropped training images, so that every id is still listed once).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    if kind == "official":
        return _official(info, seed, val_fraction, test_fraction)
    if kind == "grouped":
        return _grouped(info, seed, val_fraction, test_fraction, groups)
    if kind == "leaky":
        return _leaky(info, seed, val_fraction, test_fraction, groups, copy_groups)
    raise ValueError(f"split kind must be 'official', 'grouped' or 'leaky', not {kind!r}")


def split_summary(info: DatasetInfo, split: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Size and class presence (images containing each class, fraction) of each side of a split."""
    k = info.num_classes or 1
    names = list(info.class_names) or [f"class_{i}" for i in range(k)]
    out: dict[str, Any] = {}
    for side, ids in split.items():
        p = _class_presence(info, list(ids), k) if ids else np.zeros((0, k), dtype=bool)
        out[side] = {
            "images": len(ids),
            "images_containing": {names[c]: int(p[:, c].sum()) for c in range(1, k)},
            "fraction_containing": {
                names[c]: round(float(p[:, c].mean()), 4) if len(ids) else 0.0 for c in range(1, k)
            },
            "multi_class": int((p[:, 1:].sum(1) > 1).sum()),
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# Audit


def _hist(sizes: Iterable[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(sizes).items())}


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {}
    qs = np.quantile(x, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
    names = ["min", "p10", "q1", "median", "q3", "p90", "p99", "max"]
    return {n: round(float(v), 6) for n, v in zip(names, qs)}


def audit(info: DatasetInfo, groups: Groups, *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Leakage and label-consistency numbers for a dataset and its groups.

    Measures: group counts and size histograms (copies only, and with overlaps); official test images with a
    copy (or any link) in the official training set; exact duplicates (identical decoded pixels) and whether
    they share a group; which dihedral transforms relate copies; how the masks of copies disagree: for every
    pair of images in one copy group, the second mask is brought into the first's frame with the best
    transform of the images, and the fraction of pixels with different labels is measured (pairs that differ
    in image size are skipped); and the official and grouped split summaries with a check that no group
    crosses sides.

    Args:
        info: the dataset.
        groups: from :func:`find_groups` on the same dataset.
        seed: for the splits.
        progress: show bars.

    Returns:
        A JSON-ready dict.
    """
    ids = groups.ids
    index = {sid: n for n, sid in enumerate(ids)}
    images = _load_gray(info, ids, draft=None, progress=progress)
    masks = [read_mask(info.mask_paths[sid]).numpy() for sid in ids]
    desc = _copy_descriptors(_thumbnails(images, _COPY_SIZE))

    # Exact duplicates: identical decoded pixels.
    by_hash: dict[str, list[str]] = {}
    for sid, arr in zip(ids, images):
        by_hash.setdefault(hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest(), []).append(sid)
    exact = [sorted(v) for v in by_hash.values() if len(v) > 1]
    copy_of = {sid: gi for gi, g in enumerate(groups.copy_groups) for sid in g}
    group_of = groups.group_of()
    exact_info = []
    for dup in sorted(exact):
        a, b = dup[0], dup[1]
        ma, mb = masks[index[a]], masks[index[b]]
        diff = int((ma != mb).sum()) if ma.shape == mb.shape else None
        exact_info.append(
            {"ids": dup, "same_copy_group": len({copy_of[s] for s in dup}) == 1, "mask_pixels_differing": diff}
        )

    # Mask disagreement between copies.
    transforms: Counter[str] = Counter()
    fractions = []
    for g in groups.copy_groups:
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                i, j = index[g[x]], index[g[y]]
                k = int((desc[j] @ desc[i, 0]).argmax())  # image(i) ~ T_k(image(j))
                transforms[DIHEDRAL_NAMES[k]] += 1
                mj = dihedral(torch.from_numpy(masks[j]), k).numpy()
                if mj.shape != masks[i].shape:
                    continue
                fractions.append(float((mj != masks[i]).mean()))
    frac = np.asarray(fractions)
    disagreeing = frac[frac > 0]

    training = set(info.split_lists.get("training", info.split_lists.get("train", ())))
    if info.layout == "voc" and "trainval" in info.split_lists:
        training = set(info.split_lists["trainval"])
    test = list(info.split_lists.get("test", ()))
    copy_members = {gi: set(g) for gi, g in enumerate(groups.copy_groups)}
    all_members = {gi: set(g) for gi, g in enumerate(groups.groups)}
    test_copy = sum(1 for s in test if copy_members[copy_of[s]] & training)
    test_any = sum(1 for s in test if all_members[group_of[s]] & training)

    official = make_split(info, "official", seed=seed)
    grouped = make_split(info, "grouped", seed=seed, groups=groups.groups)
    side = {sid: name for name, lst in grouped.items() for sid in lst}
    crossing = sum(1 for g in groups.groups if len({side[s] for s in g}) > 1)
    side_off = {sid: name for name, lst in official.items() for sid in lst}
    crossing_official = sum(1 for g in groups.groups if len({side_off[s] for s in g}) > 1)

    return {
        "dataset": {"root": str(info.root), "layout": info.layout, "images": len(ids)},
        "params": groups.params,
        "copy_groups": {
            "count": len(groups.copy_groups),
            "size_histogram": _hist(len(g) for g in groups.copy_groups),
            "images_in_a_group_of_2_or_more": sum(len(g) for g in groups.copy_groups if len(g) > 1),
            "transforms_between_copies": dict(sorted(transforms.items())),
        },
        "groups_with_overlaps": {
            "count": len(groups.groups),
            "size_histogram": _hist(len(g) for g in groups.groups),
            "overlap_links": groups.params.get("n_overlap_links", 0),
        },
        "official_test_leakage": {
            "test_images": len(test),
            "with_a_copy_in_training": test_copy,
            "with_a_copy_or_overlap_in_training": test_any,
            "fraction_with_a_copy_in_training": round(test_copy / max(len(test), 1), 4),
            "fraction_with_a_copy_or_overlap_in_training": round(test_any / max(len(test), 1), 4),
            "groups_crossing_official_train_val_test": crossing_official,
        },
        "exact_duplicates": exact_info,
        "mask_disagreement_between_copies": {
            "pairs": int(frac.size),
            "fraction_of_pairs_disagreeing": round(float((frac > 0).mean()), 4) if frac.size else None,
            "pixel_fraction_disagreeing_all_pairs": _quantiles(frac),
            "pixel_fraction_disagreeing_mean": round(float(frac.mean()), 6) if frac.size else None,
            "pixel_fraction_disagreeing_among_disagreeing_pairs": _quantiles(disagreeing),
        },
        "splits": {
            "official": split_summary(info, official),
            "grouped": split_summary(info, grouped),
            "grouped_groups_crossing_sides": crossing,
            "seed": seed,
        },
    }
