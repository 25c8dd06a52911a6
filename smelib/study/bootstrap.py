"""Paired bootstrap over test images: is one run's mIoU above another's beyond the luck of the test set?

Two runs scored on the same test images differ for two reasons: the models differ (seed, architecture) and the
test set is a sample of images. Seed-to-seed spread (:func:`smelib.study.conclusions.pooled_seed_std`) measures the
first; this module measures the second. It resamples the test set with replacement, ``n_boot`` times, and
recomputes both runs' dataset-level mIoU on each resample from per-image confusion matrices, *the same images for
both runs* (paired), so that images that are hard for every model do not widen the interval.

The unit resampled is the one that is independent. NEU-Seg shows most pictures several times (rotated copies, and
composites sharing half a picture; :func:`smelib.data.splits.find_groups`): a grouped test set of 839 images holds
only about two hundred independent pictures, and resampling its images one by one as if they were independent
gives an interval too narrow. When test images share the groups of the split's groups file (the run config's
``data.groups``, the same groups the grouped split keeps together), whole groups are resampled (a cluster
bootstrap: a group's images enter or leave a resample together); the record names the unit and how many there
were. A test set of singletons (the official split, nearly) gives the image bootstrap back exactly.

The interval answers "would these two trained models rank the same way on another test set drawn like this
one?"; it does not answer "would another training run rank the same way?". A difference can be well outside
test-set noise and still inside seed noise (a single run per model), so the book reads both.

The mIoU of a resample is the one :func:`smelib.metrics.metrics_from_confusion` gives: per-class IoU of the summed
confusion matrix, averaged over the classes present (background included).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BootstrapError", "PairedBootstrap", "bootstrap_class_table", "bootstrap_record", "bootstrap_table",
           "image_confusions", "iou_of_confusions", "load_bootstrap_records", "miou_of_confusions", "paired_bootstrap",
           "paired_bootstrap_runs", "image_groups", "UNITS", "write_bootstrap_record"]

BOOTSTRAP_FORMAT = 2  # 2: the resampled unit (image or group) and the groups file are recorded


class BootstrapError(ValueError):
    """A bootstrap cannot be computed or read; the message names the run or file and the problem."""


def image_confusions(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """Per-image confusion matrices.

    Args:
        preds: N ``(H, W)`` predicted class ids; gts: N ``(H, W)`` ground-truth class ids (``ignore_index``
            pixels are not counted). Sizes may differ between images, not within a pair.

    Returns:
        ``(N, K, K)`` int64, rows ground truth, columns prediction; summed over images it is the dataset's
        confusion matrix.
    """
    if len(preds) != len(gts):
        raise BootstrapError(f"{len(preds)} predictions for {len(gts)} ground-truth maps")
    k = num_classes
    out = np.zeros((len(gts), k, k), dtype=np.int64)
    for i, (p, g) in enumerate(zip(preds, gts)):
        if p.shape != g.shape:
            raise BootstrapError(f"image {i}: prediction {p.shape} and ground truth {g.shape} differ in shape")
        keep = g != ignore_index
        gi, pi = g[keep].astype(np.int64), p[keep].astype(np.int64)
        if gi.size and (gi.max() >= k or pi.max() >= k or pi.min() < 0):
            raise BootstrapError(f"image {i}: a class id outside 0..{k - 1}")
        out[i] = np.bincount(gi * k + pi, minlength=k * k).reshape(k, k)
    return out


def iou_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Per-class IoU of each of a stack of confusion matrices.

    Args:
        confusions: ``(..., K, K)`` counts, rows ground truth.

    Returns:
        ``(..., K)`` float64 IoU in [0, 1]; NaN for a class with an empty union (absent from truth and prediction).
    """
    c = np.asarray(confusions, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(axis=-1) + c.sum(axis=-2) - tp
    return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def miou_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """mIoU of each of a stack of confusion matrices.

    Args:
        confusions: ``(..., K, K)`` counts.

    Returns:
        ``(...)`` float64 mIoU in [0, 1], averaged over the classes whose union is non-empty (NaN if none).
    """
    iou = iou_of_confusions(confusions)
    present = np.isfinite(iou).sum(axis=-1)
    return np.where(present > 0, np.nansum(iou, axis=-1) / np.maximum(present, 1), np.nan)


@dataclass(frozen=True)
class PairedBootstrap:
    """The outcome of :func:`paired_bootstrap`; mIoU values are fractions in [0, 1].

    Attributes:
        better, worse: the labels, in the order of the claim "``better`` beats ``worse``".
        miou_better, miou_worse: each run's mIoU on the whole test set.
        difference: ``miou_better - miou_worse`` on the whole test set.
        low, high: the central ``level`` percentile interval of the resampled differences.
        p_not_better: the fraction of resamples where ``better`` does not beat ``worse`` (difference <= 0).
        std: the resampled differences' standard deviation (the test set's standard error of the difference).
        n_images, n_boot, seed, level: how many test images, how many resamples, the generator seed, the coverage.
        unit, n_units: what was resampled, ``"image"`` or ``"group"`` (whole groups of near-duplicate images),
            and how many of them the test set holds (``n_units == n_images`` for images).
        class_iou_better, class_iou_worse, class_difference, class_low, class_high: the same per class (K values
            each, class order of the confusion matrices; NaN for a class absent from the test set), from the same
            resamples. They say which classes a difference of mIoU comes from; several intervals read together
            are not a test of any one claim.
        class_low_joint, class_high_joint: per-class intervals that hold *together*: Bonferroni over the ``m``
            classes present in the test set, each the central ``1 - (1 - level) / m`` percentile interval of the
            same resamples, so that the chance that any of them misses its class's true difference is at most
            ``1 - level``. A class whose joint interval excludes zero is a finding even after looking at all of
            them; one whose plain interval alone excludes zero is not.
    """

    better: str
    worse: str
    miou_better: float
    miou_worse: float
    difference: float
    low: float
    high: float
    p_not_better: float
    std: float
    n_images: int
    n_boot: int
    seed: int
    level: float
    class_iou_better: tuple[float, ...] = ()
    class_iou_worse: tuple[float, ...] = ()
    class_difference: tuple[float, ...] = ()
    class_low: tuple[float, ...] = ()
    class_high: tuple[float, ...] = ()
    class_low_joint: tuple[float, ...] = ()
    class_high_joint: tuple[float, ...] = ()
    unit: str = "image"
    n_units: int = 0

    @property
    def verdict(self) -> str:
        """``"supported"`` when the interval lies above 0, ``"reversed"`` below 0, else ``"within test-set noise"``."""
        if self.low > 0:
            return "supported"
        if self.high < 0:
            return "reversed"
        return "within test-set noise"


def paired_bootstrap(conf_better: np.ndarray, conf_worse: np.ndarray, better: str = "better", worse: str = "worse",
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     groups: Sequence[Any] | np.ndarray | None = None, unit: str = "group") -> PairedBootstrap:
    """Resample the test set (with replacement, the same draws for both runs) and compare the two runs' mIoU.

    Args:
        conf_better, conf_worse: ``(N, K, K)`` per-image confusion matrices of the two runs on the same N images
            (:func:`image_confusions`), in the same image order.
        n_boot: resamples; seed: the generator's seed (the outcome is a function of the inputs and these).
        level: the interval's coverage, in (0, 1).
        groups: ``(N,)`` labels (any hashable values), equal for images that are not independent (copies of one
            picture, :func:`smelib.study.bootstrap.image_groups`); whole groups are resampled (a cluster
            bootstrap). None, or N distinct labels: images are resampled, exactly the image bootstrap.
        unit: what a group is called in the outcome (``"group"``, ``"copy-group"``).

    Returns:
        A :class:`PairedBootstrap`; its ``unit`` is ``unit`` when some group holds two or more images, else
        ``"image"``.
    """
    a, b = np.asarray(conf_better), np.asarray(conf_worse)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise BootstrapError(f"per-image confusions must both be (N, K, K), got {a.shape} and {b.shape}")
    n_images = a.shape[0]
    if n_boot < 100:
        raise BootstrapError(f"n_boot={n_boot}: use at least 100 resamples for a percentile interval")
    if not 0 < level < 1:
        raise BootstrapError(f"level={level}: must lie in (0, 1)")
    k2 = a.shape[1] * a.shape[2]
    flat = np.concatenate([a.reshape(n_images, k2), b.reshape(n_images, k2)], axis=1).astype(np.float64)
    resampled = "image"
    if groups is not None:
        if len(groups) != n_images:
            raise BootstrapError(f"{len(groups)} group labels for {n_images} images")
        first: dict[Any, int] = {}  # groups numbered in order of first appearance, so the draws do not depend
        label = np.array([first.setdefault(g, len(first)) for g in groups], dtype=np.int64)  # on how labels sort
        if len(first) < n_images:
            resampled = unit
            # a group's confusions summed: resampling the sums resamples the group's images together
            summed = np.zeros((int(label.max()) + 1, flat.shape[1]), dtype=np.float64)
            np.add.at(summed, label, flat)
            flat = summed
    n = flat.shape[0]
    if n < 2:
        raise BootstrapError(f"{n} test {resampled}(s): a bootstrap needs at least 2")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot, dtype=np.float64)
    class_diffs = np.empty((n_boot, a.shape[1]), dtype=np.float64)
    chunk = 500  # (chunk, N) multiplicities at a time keeps memory flat for large test sets
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        draws = rng.integers(0, n, size=(m, n))
        counts = np.bincount((draws + n * np.arange(m)[:, None]).ravel(), minlength=m * n).reshape(m, n)
        sums = counts.astype(np.float64) @ flat
        shape = (m, a.shape[1], a.shape[2])
        ca, cb = sums[:, :k2].reshape(shape), sums[:, k2:].reshape(shape)
        diffs[start:start + m] = miou_of_confusions(ca) - miou_of_confusions(cb)
        class_diffs[start:start + m] = iou_of_confusions(ca) - iou_of_confusions(cb)
    mb, mw = float(miou_of_confusions(a.sum(axis=0))), float(miou_of_confusions(b.sum(axis=0)))
    ib, iw = iou_of_confusions(a.sum(axis=0)), iou_of_confusions(b.sum(axis=0))
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    # a class can vanish from a resample (NaN there); a class absent from the whole test set stays NaN
    with warnings.catch_warnings():  # the all-NaN column of an absent class is expected, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        c_low, c_high = np.nanquantile(class_diffs, [tail, 1 - tail], axis=0)
        # Bonferroni over the classes that can be compared at all (present in the whole test set)
        joint_tail = tail / max(int(np.isfinite(ib - iw).sum()), 1)
        j_low, j_high = np.nanquantile(class_diffs, [joint_tail, 1 - joint_tail], axis=0)

    def floats(x: np.ndarray) -> tuple[float, ...]:
        return tuple(float(v) for v in x)

    return PairedBootstrap(better, worse, mb, mw, mb - mw, float(low), float(high),
                           float(np.mean(diffs <= 0)), float(np.std(diffs, ddof=1)), n_images, n_boot, seed, level,
                           floats(ib), floats(iw), floats(ib - iw), floats(c_low), floats(c_high),
                           floats(j_low), floats(j_high), resampled, n)


#: What :func:`paired_bootstrap_runs` can resample: the groups file's key, or None for images.
UNITS = {"group": "groups", "copy-group": "copy_groups", "image": None}


def image_groups(ids: Sequence[str], groups_file: str | os.PathLike, key: str = "groups") -> list[int]:
    """The group of each test image, from a groups file written by ``smelib data groups``.

    Args:
        ids: the N test image ids, in the order of the per-image confusions.
        groups_file: the JSON file (a relative path is read from the working directory, else from the repository).
        key: ``"groups"``, the partition the grouped split keeps on one side (rotated copies, and composites that
            share half a picture: both are dependent), or ``"copy_groups"`` (rotated copies only; composites count
            as independent, which they are not quite).

    Returns:
        N group indices; an id the file does not list is a group of its own.
    """
    from smelib.data.splits import load_groups
    from smelib.settings import repo_root

    path = Path(groups_file)
    if not path.is_absolute() and not path.exists() and (repo_root() / path).exists():
        path = repo_root() / path
    listed = load_groups(path, key)
    group_of = {sid: gi for gi, g in enumerate(listed) for sid in g}
    alone = len(listed)
    out = []
    for sid in ids:
        if sid not in group_of:
            group_of[sid], alone = alone, alone + 1
        out.append(group_of[sid])
    return out


def paired_bootstrap_runs(better: tuple[str, str | os.PathLike], worse: tuple[str, str | os.PathLike],
                          data_root: str | None = None, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                          device: str = "cpu", shared_images: bool = False, groups: str | os.PathLike | None = None,
                          unit: str = "group") -> tuple[PairedBootstrap, dict[str, Any]]:
    """:func:`paired_bootstrap` of two runs' test predictions (stored in their run folders, else predicted).

    Args:
        better, worse: ``(label, run folder or checkpoint)``; both trained on the same split, unless
            ``shared_images``.
        groups: the groups file whose groups are resampled whole (:func:`smelib.study.bootstrap.image_groups`);
            None: the one ``better``'s run config names (``data.groups``), if any (none: images are resampled).
        unit: a key of :data:`smelib.study.bootstrap.UNITS`: ``"group"`` (default: the split's groups, the
            independent unit), ``"copy-group"`` (rotated copies only) or ``"image"`` (one by one, ignoring the
            groups: too narrow when test images are copies of each other; for comparison only).
        shared_images: the runs may come from different splits (e.g. a ``leaky`` and a ``grouped`` run, see
            :func:`smelib.data.splits.make_split`); both are scored on the test images their test sets share, in
            ``better``'s order. The record's split kind names both (``"leaky vs grouped"``) and ``shared_images``
            says how many there are.

    Returns:
        The outcome and a committable record (:func:`bootstrap_record`).

    Raises:
        BootstrapError: the same label twice; with ``shared_images``, no shared test image, or a shared image whose
            ground truth differs between the two runs' datasets.
    """
    from smelib.study.qualitative import load_run_predictions

    if better[0] == worse[0]:
        raise BootstrapError(f"both runs are labelled {better[0]!r}")
    if not shared_images:
        sp = load_run_predictions({better[0]: better[1], worse[0]: worse[1]}, data_root, "test", device)
        k, ignore = sp.num_classes, sp.ignore_index
        ca = image_confusions(sp.preds[better[0]], sp.gts, k, ignore)
        cb = image_confusions(sp.preds[worse[0]], sp.gts, k, ignore)
        sources, bundle, names = sp.sources, sp.bundle, sp.class_names
        split = {**bundle.split, "kind": sources[0].config["data"]["split"]}
    else:
        a = load_run_predictions({better[0]: better[1]}, data_root, "test", device)
        b = load_run_predictions({worse[0]: worse[1]}, data_root, "test", device)
        if a.class_names != b.class_names:
            raise BootstrapError(f"{better[1]}: classes {a.class_names} differ from {worse[1]}'s {b.class_names}")
        at = {sid: i for i, sid in enumerate(b.ids)}
        pairs = [(i, at[sid]) for i, sid in enumerate(a.ids) if sid in at]
        if not pairs:
            raise BootstrapError(f"{better[1]} and {worse[1]}: their test sets share no image")
        for i, j in pairs:
            if not np.array_equal(a.gts[i], b.gts[j]):
                raise BootstrapError(f"test image {a.ids[i]!r}: its ground truth differs between {better[1]} and "
                                     f"{worse[1]} (different datasets?)")
        k, ignore = a.num_classes, a.ignore_index
        gts = [a.gts[i] for i, _ in pairs]
        ca = image_confusions([a.preds[better[0]][i] for i, _ in pairs], gts, k, ignore)
        cb = image_confusions([b.preds[worse[0]][j] for _, j in pairs], gts, k, ignore)
        sources, names = a.sources + b.sources, a.class_names
        kinds = [src.config["data"]["split"] for src in sources]
        split = {**a.bundle.split, "kind": kinds[0] if kinds[0] == kinds[1] else f"{kinds[0]} vs {kinds[1]}"}
    test_ids = [a.ids[i] for i, _ in pairs] if shared_images else sp.ids
    if unit not in UNITS:
        raise BootstrapError(f"unit {unit!r}: must be one of {sorted(UNITS)}")
    key = UNITS[unit]
    groups_file = None if key is None else groups if groups is not None else sources[0].config["data"].get("groups")
    labels = image_groups(test_ids, groups_file, key) if key and groups_file else None
    outcome = paired_bootstrap(ca, cb, better[0], worse[0], n_boot=n_boot, seed=seed, level=level, groups=labels,
                               unit=unit)
    runs = []
    for src in sources:
        rec = src.record or {}
        runs.append({"label": src.label, "run_id": rec.get("run_id"), "model": src.model_name, "source": src.kind,
                     "where": src.where, "miou_record": ((rec.get("final") or {}).get("test") or {}).get("miou")})
    record = bootstrap_record(outcome, runs, split, names)
    record["groups_file"] = None if groups_file is None else {"path": str(groups_file), "key": key}
    if shared_images:
        record["split"]["shared_images"] = len(ca)
    return outcome, record


def bootstrap_record(outcome: PairedBootstrap, runs: Sequence[Mapping[str, Any]], split: Mapping[str, Any],
                     class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON-ready record of one bootstrap: outcome, verdict, the two runs, split facts, class names (if
    given), git commit, time."""
    from smelib.records import git_info, to_jsonable, utc_iso

    facts = {key: split.get(key) for key in ("kind", "seed", "val_fraction", "root") if key in split}
    rec = {"format": BOOTSTRAP_FORMAT, "kind": "paired_bootstrap", "outcome": asdict(outcome),
           "verdict": outcome.verdict,
           "runs": list(runs), "split": facts, "git": git_info(), "created_utc": utc_iso()}
    if class_names is not None:
        if outcome.class_difference and len(class_names) != len(outcome.class_difference):
            raise BootstrapError(f"{len(class_names)} class names for {len(outcome.class_difference)} classes")
        rec["class_names"] = list(class_names)
    return to_jsonable(rec)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    if not slug:
        raise BootstrapError(f"label {text!r} gives an empty file name")
    return slug


def write_bootstrap_record(record: Mapping[str, Any], out_dir: str | os.PathLike = "results/bootstrap",
                           force: bool = False) -> Path:
    """Write ``<split>_<better>_vs_<worse>.json`` under ``out_dir``; an existing file is kept unless ``force``."""
    from smelib.records import write_json

    o = record["outcome"]
    path = Path(out_dir) / f"{_slug(str(record['split'].get('kind')))}_{_slug(o['better'])}_vs_{_slug(o['worse'])}.json"
    if path.exists() and not force:
        raise BootstrapError(f"{path} exists; pass force=True (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, record)


def load_bootstrap_records(folder: str | os.PathLike = "results/bootstrap") -> list[dict[str, Any]]:
    """Every ``*.json`` bootstrap record in ``folder`` (sorted by name); a missing folder gives ``[]``."""
    root = Path(folder)
    out = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BootstrapError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(rec, dict) or rec.get("kind") != "paired_bootstrap" or "outcome" not in rec:
            raise BootstrapError(f"{path}: not a paired-bootstrap record (no kind 'paired_bootstrap' or outcome)")
        rec["path"] = str(path)
        out.append(rec)
    return out


def _resampled(outcome: Mapping[str, Any]) -> str:
    """``"204 groups of 839 images"`` or ``"840 images"``; records written before the unit was recorded resampled
    images."""
    n = outcome["n_images"]
    if outcome.get("unit", "image") == "image":
        return f"{n} images"
    return f"{outcome['n_units']} {outcome['unit']}s of {n} images"


def bootstrap_table(records: Sequence[Mapping[str, Any]], split: str | None = None) -> Any:
    """One row per bootstrap record (points, not fractions): the claim, what was resampled (images, or groups of
    near-duplicate images), both mIoUs, the difference, its interval, its test-set standard error, the share of
    resamples against the claim, and the verdict.

    Args:
        records: from :func:`load_bootstrap_records`.
        split: keep only records of this split kind (None: all).

    Returns:
        A :class:`smelib.study.tables.Table`.
    """
    from smelib.study.tables import Table

    rows = []
    for rec in records:
        kind = rec.get("split", {}).get("kind")
        if split is not None and kind != split:
            continue
        o = rec["outcome"]
        rows.append([kind, f"{o['better']} > {o['worse']}", _resampled(o), 100 * o["miou_better"],
                     100 * o["miou_worse"],
                     100 * o["difference"], f"[{100 * o['low']:+.2f}, {100 * o['high']:+.2f}]", 100 * o["std"],
                     f"{100 * o['p_not_better']:.1f} %", rec["verdict"]])
    level = f"{100 * records[0]['outcome']['level']:.0f} %" if records else "95 %"
    return Table(["split", "claim", "resampled", "mIoU A", "mIoU B", "A − B", f"{level} interval", "test-set s.e.",
                  "resamples A ≤ B", "verdict"], rows, decimals=2)


def bootstrap_class_table(record: Mapping[str, Any]) -> Any:
    """One row per class of one bootstrap record (points): both runs' IoU, the difference, its interval, the
    joint (Bonferroni) interval, and which side of zero the joint interval lies on.

    Args:
        record: one of :func:`load_bootstrap_records`, written with per-class and joint figures.

    Returns:
        A :class:`smelib.study.tables.Table` titled with the record's claim and split.
    """
    from smelib.study.tables import Table

    o = record["outcome"]
    if not o.get("class_difference") or not o.get("class_low_joint"):
        raise BootstrapError(f"{record.get('path', 'record')}: no per-class or joint figures (written before they "
                             "were recorded); rerun `smelib bootstrap ... --force` to add them")
    names = record.get("class_names") or [f"class {i}" for i in range(len(o["class_difference"]))]
    rows = []
    for i, name in enumerate(names):
        lo, hi = o["class_low"][i], o["class_high"][i]
        if lo is None or hi is None or not np.isfinite([lo, hi]).all():
            rows.append([name, None, None, None, "–", "–", "absent from the test set"])
            continue
        jlo, jhi = o["class_low_joint"][i], o["class_high_joint"][i]
        side = "above 0" if jlo > 0 else "below 0" if jhi < 0 else "spans 0"
        rows.append([name, 100 * o["class_iou_better"][i], 100 * o["class_iou_worse"][i],
                     100 * o["class_difference"][i], f"[{100 * lo:+.2f}, {100 * hi:+.2f}]",
                     f"[{100 * jlo:+.2f}, {100 * jhi:+.2f}]", side])
    level = f"{100 * o['level']:.0f} %"
    return Table(["class", f"IoU {o['better']}", f"IoU {o['worse']}", "difference", f"{level} interval",
                  f"joint {level} interval", "joint interval"], rows, decimals=2,
                 title=f"{o['better']} > {o['worse']}, per class ({record.get('split', {}).get('kind')} split, "
                       f"{_resampled(o)} resampled; joint: Bonferroni over the classes)")
