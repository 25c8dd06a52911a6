"""Qualitative comparison (the paper's Fig. 9): several trained runs on the same test images.

:func:`build_comparison` predicts every test image with each run, scores each image, and picks the examples to
show: for every defect class the image whose score under the reference run (the first one) is that class's median
(a *typical* case, not a hand-picked one), the reference run's worst images (failures), and the image where the
reference run trails a baseline the most. A run is read from its checkpoint, or from the test predictions its
run folder stores (``train.save_predictions``), which outlive the checkpoint (checkpoints are not committed).
:func:`save_comparison` writes a small, committable folder (the chosen
images, their ground truth and predictions as PNG, and ``comparison.json`` with every test image's score), so the
book can draw the figure without checkpoints or the full dataset; :func:`plot_comparison` draws it.

The per-image score is the mean IoU over the classes present in the ground truth or the prediction of that
image (background included): a class absent from both is not a success to average in.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Comparison", "ComparisonError", "Example", "build_comparison", "image_miou", "load_comparison",
           "plot_comparison",
           "load_run_predictions", "plot_score_differences", "plot_score_scatter", "save_comparison",
           "score_difference_rows", "select_examples", "SubsetPredictions"]

COMPARISON_FORMAT = 1


class ComparisonError(ValueError):
    """A comparison cannot be built or read; the message names the run, checkpoint or file and the problem."""


@dataclass
class Example:
    """One image shown in the figure.

    Attributes:
        id: the dataset's sample id.
        reason: why it was picked (e.g. ``"typical scratches"``).
        image: ``(H, W)`` uint8 gray image.
        gt: ``(H, W)`` uint8 ground-truth class ids (255: ignored).
        preds: label → ``(H, W)`` uint8 predicted class ids.
    """

    id: str
    reason: str
    image: np.ndarray
    gt: np.ndarray
    preds: dict[str, np.ndarray]


@dataclass
class Comparison:
    """Several runs' predictions on one test subset.

    Attributes:
        models: one dict per run, in display order (the first is the reference): ``label``, ``run_id``, ``model``,
            ``checkpoint_sha256``, ``miou_record`` (the run record's test mIoU, or None), ``miou_here`` (the
            mIoU of the confusion matrix over this comparison's predictions).
        class_names: K names, background first.
        ids: every test sample id, in dataset order.
        dominant: per test image, the defect class with most ground-truth pixels (0 when it has none).
        scores: label → per-image score (:func:`image_miou`), aligned with ``ids``.
        examples: the images to draw.
        meta: split facts, git commit, creation time.
    """

    models: list[dict[str, Any]]
    class_names: list[str]
    ids: list[str]
    dominant: list[int]
    scores: dict[str, list[float]]
    examples: list[Example]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The runs' display labels, reference first."""
        return [m["label"] for m in self.models]


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> float:
    """Mean IoU of one image over the classes present in its ground truth or prediction.

    Args:
        pred: ``(H, W)`` predicted class ids.
        gt: ``(H, W)`` ground-truth class ids; ``ignore_index`` pixels are not counted.
        num_classes: K.

    Returns:
        A value in [0, 1]; NaN when every pixel is ignored.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    keep = gt != ignore_index
    p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    if p.size == 0:
        return float("nan")
    ious = []
    for k in range(num_classes):
        pk, gk = p == k, g == k
        union = np.count_nonzero(pk | gk)
        if union:
            ious.append(np.count_nonzero(pk & gk) / union)
    return float(np.mean(ious))


def select_examples(
    ids: Sequence[str],
    dominant: Sequence[int],
    scores: Mapping[str, Sequence[float]],
    reference: str,
    class_names: Sequence[str],
    per_class: int = 1,
    failures: int = 2,
    deficit: bool = True,
) -> list[tuple[int, str]]:
    """Which test images to show, and why; deterministic (ties broken by sample id).

    Args:
        ids: sample ids; dominant: their dominant defect class; scores: label → per-image scores.
        reference: the label whose scores pick the examples (the model the figure is about).
        per_class: typical images per defect class: those whose reference score is nearest the class median.
        failures: the reference's lowest-scoring images (not already picked).
        deficit: also the image where the reference trails the best other run by the widest margin.

    Returns:
        ``[(index into ids, reason), ...]`` in display order.
    """
    ref = np.asarray(scores[reference], dtype=np.float64)
    order_key = np.asarray([str(i) for i in ids])
    picked: list[tuple[int, str]] = []
    taken: set[int] = set()

    def take(candidates: np.ndarray, key: np.ndarray, reason: str, n: int) -> None:
        cand = [int(i) for i in candidates if int(i) not in taken and np.isfinite(key[i])]
        cand.sort(key=lambda i: (key[i], order_key[i]))
        for i in cand[:n]:
            picked.append((i, reason))
            taken.add(i)

    dom = np.asarray(dominant)
    for k in range(1, len(class_names)):
        members = np.flatnonzero(dom == k)
        if members.size:
            median = np.nanmedian(ref[members])
            take(members, np.abs(ref - median), f"typical {class_names[k]}", per_class)
    take(np.arange(len(ids)), ref, f"{reference}: a failure", failures)
    others = [label for label in scores if label != reference]
    if deficit and others:
        best_other = np.nanmax(np.stack([np.asarray(scores[o], dtype=np.float64) for o in others]), axis=0)
        gap = best_other - ref
        if np.nanmax(gap) > 0:
            take(np.arange(len(ids)), -gap, f"{reference} trails another run most", 1)
    return picked


def _split_key(cfg: Mapping[str, Any]) -> tuple[Any, ...]:
    d = cfg["data"]
    return d["split"], d["seed"], d.get("groups"), d["val_fraction"], d.get("limit")


@dataclass
class _Source:
    """Where one run's predictions come from: its stored test predictions, else its checkpoint."""

    label: str
    where: str
    kind: str  # "stored predictions" or "checkpoint"
    config: dict[str, Any]
    class_names: list[str]
    model_name: str | None
    record: dict[str, Any] | None
    model: Any = None
    stored: Path | None = None
    device: str = "cpu"

    def predictions(self, dataset: Any, ids: list[str], gts: list[np.ndarray]) -> list[np.ndarray]:
        """``(H, W)`` uint8 label maps of ``dataset``, aligned with ``ids``."""
        if self.model is not None:
            from smelib.inference import predict_dataset

            data = self.config["data"]
            return predict_dataset(self.model, dataset, size=data.get("size"),
                                   batch_size=int(data["eval_batch_size"]), device=self.device)
        from smelib.records import read_predictions

        assert self.stored is not None
        stored_ids, maps = read_predictions(self.stored)
        if stored_ids != ids:
            raise ComparisonError(f"{self.stored}: its {len(stored_ids)} sample ids are not the test subset's "
                                  f"{len(ids)} ids of this dataset, in order")
        for sid, m, g in zip(ids, maps, gts):
            if m.shape != g.shape:
                raise ComparisonError(f"{self.stored}: {sid} is {m.shape}, its ground truth {g.shape}")
        return maps


def _load_source(label: str, spec: str | os.PathLike, subset: str, device: str) -> _Source:
    """A run folder with stored test predictions (and ``subset == "test"``), else a checkpoint to predict with."""
    from smelib.checkpoint import load_checkpoint, sha256_file
    from smelib.records import RunDirError, resolve_run

    path = Path(spec)
    record_path = path / "record.json"
    if path.is_dir() and record_path.is_file() and subset == "test":
        record = json.loads(record_path.read_text())
        info = record.get("predictions") or {}
        stored = path / info["relpath"] if info.get("relpath") else None
        if stored is not None and stored.is_file():
            if info.get("sha256") and sha256_file(stored) != info["sha256"]:
                raise ComparisonError(f"{stored}: SHA256 differs from the one in {record_path}; the file was changed")
            return _Source(label, str(stored), "stored predictions", record["config"], list(record["class_names"]),
                           record.get("model"), record, stored=stored)
    try:
        ckpt, record = resolve_run(spec)
    except RunDirError as err:
        raise ComparisonError(str(err)) from None
    model, meta = load_checkpoint(ckpt, device=device)
    return _Source(label, str(ckpt), "checkpoint", meta["config"], list(meta["class_names"]), meta["model_name"],
                   record, model=model, device=device)


@dataclass
class SubsetPredictions:
    """Several runs' label maps of one subset, with its ground truth, in dataset order.

    Attributes:
        sources: where each run's maps came from (display order; the first is the reference).
        ids: sample ids; gts: ``(H, W)`` uint8 ground-truth maps; raws: the stored ``(image, mask)`` pairs.
        preds: label → ``(H, W)`` uint8 predicted maps, aligned with ``ids``.
        class_names, num_classes, ignore_index: the dataset's.
        bundle: the data bundle (split facts in ``bundle.split``).
    """

    sources: list[_Source]
    ids: list[str]
    gts: list[np.ndarray]
    raws: list[Any]
    preds: dict[str, list[np.ndarray]]
    class_names: list[str]
    num_classes: int
    ignore_index: int
    bundle: Any


def load_run_predictions(runs: Mapping[str, str | os.PathLike], data_root: str | None = None, subset: str = "test",
                         device: str = "cpu") -> SubsetPredictions:
    """Every run's label maps of one subset, checked to be of one split and one class list.

    Args:
        runs: display label → run folder (its stored test predictions when it has them) or checkpoint.
        data_root: dataset folder (default: the one the first run was trained on).
        subset: ``"test"`` or ``"val"``.

    Raises:
        ComparisonError: no runs, runs on different splits or classes, an empty subset, stored predictions of other
            images or with a changed hash, or a missing checkpoint.
    """
    from smelib.data.loading import checkpoint_data

    if not runs:
        raise ComparisonError("no runs to compare")
    if subset not in ("test", "val"):
        raise ComparisonError(f"subset must be 'test' or 'val', not {subset!r}")
    loaded = [_load_source(label, spec, subset, device) for label, spec in runs.items()]
    first = loaded[0]
    for src in loaded[1:]:
        if _split_key(src.config) != _split_key(first.config):
            raise ComparisonError(f"{src.where}: trained on split {_split_key(src.config)}, but {first.where} on "
                                  f"{_split_key(first.config)}; compare runs of one split only")
        if src.class_names != first.class_names:
            raise ComparisonError(f"{src.where}: classes {src.class_names} differ from {first.class_names}")
    cfg = first.config
    bundle = checkpoint_data({"config": cfg}, data_root)
    dataset = bundle.test if subset == "test" else bundle.val
    if dataset is None or len(dataset) == 0:
        raise ComparisonError(f"{bundle.split.get('root')}: the {subset} subset is empty")
    raws = [dataset._raw(i) for i in range(len(dataset))]  # uint8 (C, H, W) image and (H, W) mask, as stored
    gts = [np.asarray(m, dtype=np.uint8) for _, m in raws]
    ids = [str(sid) for sid in dataset.ids]
    preds = {src.label: src.predictions(dataset, ids, gts) for src in loaded}
    return SubsetPredictions(loaded, ids, gts, raws, preds, list(bundle.class_names), bundle.num_classes,
                             int(cfg["data"]["ignore_index"]), bundle)


def build_comparison(
    runs: Mapping[str, str | os.PathLike],
    data_root: str | None = None,
    subset: str = "test",
    per_class: int = 1,
    failures: int = 2,
    device: str = "cpu",
    progress: bool = False,
) -> Comparison:
    """Predict one test subset with several runs and pick the examples to show.

    Args:
        runs: display label → run folder (``results/runs/<id>``) or checkpoint; the first is the reference. All
            must have been trained on the same split (same kind, seed, groups and validation fraction). A run
            folder's stored test predictions (``train.save_predictions``) are used when it has them, so the run's
            checkpoint need not exist; otherwise its checkpoint predicts.
        data_root: dataset folder (default: the one the first run was trained on).
        subset: ``"test"`` or ``"val"``.
        per_class, failures: see :func:`select_examples`.

    Returns:
        A :class:`Comparison`.

    Raises:
        ComparisonError: fewer than one run, runs on different splits, missing checkpoints (and no stored
            predictions), stored predictions of other images or with a changed hash, or a mismatch in class names.
    """
    import torch

    from smelib.data import defect_class
    from smelib.metrics import ConfusionMatrix
    from smelib.records import git_info, utc_iso

    subset_preds = load_run_predictions(runs, data_root, subset, device)
    raws, gts, ids, k, ignore = (subset_preds.raws, subset_preds.gts, subset_preds.ids, subset_preds.num_classes,
                                 subset_preds.ignore_index)
    dominant = [defect_class(g, ignore) for g in gts]
    preds = subset_preds.preds
    scores: dict[str, list[float]] = {}
    models = []
    for src in subset_preds.sources:
        scores[src.label] = [image_miou(p, g, k, ignore) for p, g in zip(preds[src.label], gts)]
        cm = ConfusionMatrix(k, ignore_index=ignore)
        for p, g in zip(preds[src.label], gts):
            cm.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64)))
        record = src.record or {}
        final = (record.get("final") or {}).get(subset) or {}
        models.append({"label": src.label, "run_id": record.get("run_id"), "model": src.model_name,
                       "checkpoint_sha256": record.get("checkpoint", {}).get("sha256"), "source": src.kind,
                       "miou_record": final.get("miou"), "miou_here": cm.compute().miou})
        if progress:
            print(f"{src.label}: {subset} mIoU {100 * models[-1]['miou_here']:.2f} % ({src.kind})")
    first = subset_preds.sources[0]
    bundle = subset_preds.bundle
    cfg = first.config
    reference = first.label
    chosen = select_examples(ids, dominant, scores, reference, bundle.class_names, per_class, failures)
    examples = []
    for i, reason in chosen:
        image = np.asarray(raws[i][0], dtype=np.uint8)
        image = image[0] if image.ndim == 3 else image
        examples.append(Example(ids[i], reason, image, gts[i], {lab: preds[lab][i] for lab in preds}))
    meta = {"subset": subset, "split": {**bundle.split, "kind": cfg["data"]["split"]}, "git": git_info(),
            "created_utc": utc_iso()}
    return Comparison(models, list(bundle.class_names), ids, dominant, scores, examples, meta)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    if not slug:
        raise ComparisonError(f"label {text!r} gives an empty file name")
    return slug


def save_comparison(comp: Comparison, out: str | os.PathLike, force: bool = False) -> Path:
    """Write ``comparison.json`` and ``examples/<id>/{image,gt,<label>}.png`` under ``out``.

    Raises:
        ComparisonError: ``out`` already holds a comparison and ``force`` is False, or two labels share a file name.
    """
    from PIL import Image

    from smelib.records import write_json

    out = Path(out)
    if (out / "comparison.json").exists() and not force:
        raise ComparisonError(f"{out / 'comparison.json'} exists; pass force=True (--force) to overwrite it")
    slugs = [_slug(m["label"]) for m in comp.models]
    if len(set(slugs)) != len(slugs) or {"image", "gt"} & set(slugs):
        raise ComparisonError(f"labels {comp.labels} do not give distinct file names")
    if force and (out / "examples").is_dir():
        import shutil

        shutil.rmtree(out / "examples")  # the old comparison's examples: replaced, not mixed with the new ones
    for ex in comp.examples:
        folder = out / "examples" / _slug(ex.id)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ex.image).save(folder / "image.png", optimize=True)
        Image.fromarray(ex.gt).save(folder / "gt.png", optimize=True)
        for m, slug in zip(comp.models, slugs):
            Image.fromarray(ex.preds[m["label"]]).save(folder / f"{slug}.png", optimize=True)
    doc = {
        "format": COMPARISON_FORMAT, **comp.meta, "class_names": comp.class_names,
        "models": [{**m, "file": s} for m, s in zip(comp.models, slugs)],
        "examples": [{"id": ex.id, "folder": f"examples/{_slug(ex.id)}", "reason": ex.reason} for ex in comp.examples],
        "ids": comp.ids, "dominant": comp.dominant,
        "scores": {label: [None if not np.isfinite(v) else round(float(v), 5) for v in vals]
                   for label, vals in comp.scores.items()},
    }
    return write_json(out / "comparison.json", doc)


def load_comparison(folder: str | os.PathLike) -> Comparison:
    """Read what :func:`save_comparison` wrote.

    Raises:
        ComparisonError: a missing or malformed file (the message names it).
    """
    from PIL import Image

    folder = Path(folder)
    path = folder / "comparison.json"
    if not path.is_file():
        raise ComparisonError(f"{path}: no comparison here (write one with `smelib compare`)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ComparisonError(f"{path}: not valid JSON ({err})") from None
    if doc.get("format") != COMPARISON_FORMAT:
        raise ComparisonError(f"{path}: format {doc.get('format')!r}, this smelib reads format {COMPARISON_FORMAT}")

    def read(p: Path) -> np.ndarray:
        if not p.is_file():
            raise ComparisonError(f"{p}: missing (listed in {path})")
        with Image.open(p) as im:
            return np.asarray(im)

    examples = []
    for ex in doc["examples"]:
        d = folder / ex["folder"]
        examples.append(Example(ex["id"], ex["reason"], read(d / "image.png"), read(d / "gt.png"),
                                {m["label"]: read(d / f"{m['file']}.png") for m in doc["models"]}))
    scores = {label: [float("nan") if v is None else float(v) for v in vals] for label, vals in doc["scores"].items()}
    models = [{k: v for k, v in m.items() if k != "file"} for m in doc["models"]]
    meta = {k: doc[k] for k in ("subset", "split", "git", "created_utc") if k in doc}
    return Comparison(models, doc["class_names"], doc["ids"], doc["dominant"], scores, examples, meta)


def plot_comparison(comp: Comparison, examples: Sequence[Example] | None = None, size: float = 1.3) -> Any:
    """The Fig.-9-style grid: one row per example; columns image, ground truth, then each run's prediction.

    Each prediction carries its per-image score (:func:`image_miou`) below it; the row's image id and the reason
    it was picked (without the reference's name) are on the left. Classes use the book-wide palette
    (:data:`smelib.palette.CLASS_COLORS`).

    Args:
        comp: the comparison.
        examples: the rows to draw (default: the comparison's own examples).
        size: width and height of one panel, in inches.

    Returns:
        The matplotlib figure.
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from smelib.palette import class_color, colorize

    examples = list(comp.examples if examples is None else examples)
    if not examples:
        raise ComparisonError("no examples to draw")
    cols = 2 + len(comp.models)
    fig, axes = plt.subplots(len(examples), cols, figsize=(size * cols + 0.4, (size + 0.2) * len(examples) + 0.7),
                             dpi=110, squeeze=False, layout="constrained")
    k = len(comp.class_names)
    for r, ex in enumerate(examples):
        row = axes[r]
        row[0].imshow(ex.image, cmap="gray", vmin=0, vmax=255)
        reason = ex.reason.replace(f"{comp.labels[0]}: ", "").replace(f"{comp.labels[0]} ", "")
        row[0].set_ylabel("\n".join([ex.id, *textwrap.wrap(reason, 16)]), fontsize=6.5)
        row[1].imshow(colorize(ex.gt))
        for c, m in enumerate(comp.models):
            pred = ex.preds[m["label"]]
            row[2 + c].imshow(colorize(pred))
            row[2 + c].set_xlabel(f"{100 * image_miou(pred, ex.gt, k):.1f} %", fontsize=7, labelpad=1)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, name in enumerate(["image", "ground truth", *comp.labels]):
        axes[0, c].set_title(name.replace(" ", "\n", 1) if len(name) > 14 else name, fontsize=7.5,
                             fontweight="bold")
    handles = [Patch(color=np.asarray(class_color(i)) / 255, label=n) for i, n in enumerate(comp.class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7.5, frameon=False)
    return fig


def plot_score_scatter(comp: Comparison, other: str, reference: str | None = None, ax: Any = None) -> Any:
    """Per-image scores of the reference run (y) against another run (x), coloured by dominant defect class.

    Points above the diagonal are images where the reference does better. Returns the axes.
    """
    import matplotlib.pyplot as plt

    from smelib.palette import class_color

    reference = reference or comp.labels[0]
    for label in (reference, other):
        if label not in comp.scores:
            raise ComparisonError(f"no run labelled {label!r}; runs: {comp.labels}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    x = 100 * np.asarray(comp.scores[other])
    y = 100 * np.asarray(comp.scores[reference])
    dom = np.asarray(comp.dominant)
    for k in sorted(set(dom.tolist())):
        sel = dom == k
        name = comp.class_names[k] if k else "no defect"
        ax.scatter(x[sel], y[sel], s=6, alpha=0.6, color=np.asarray(class_color(k)) / 255 if k else "0.5", label=name)
    ax.plot([0, 100], [0, 100], color="0.3", lw=0.8, ls="--")
    ax.set_xlabel(f"{other}: per-image mIoU (%)")
    ax.set_ylabel(f"{reference}: per-image mIoU (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, markerscale=2, loc="lower right")
    return ax


def score_difference_rows(comp: Comparison, reference: str | None = None) -> list[dict[str, Any]]:
    """Per image and other run: ``id``, ``defect`` (the image's dominant defect class, ``"no defect"`` for none),
    ``other`` (the run's label) and ``delta``, the reference's per-image score minus the other run's, in points;
    images either run could not score (NaN) are left out."""
    reference = reference or comp.labels[0]
    if reference not in comp.scores:
        raise ComparisonError(f"no run labelled {reference!r}; runs: {comp.labels}")
    ref = np.asarray(comp.scores[reference], dtype=np.float64)
    rows = []
    for other in comp.labels:
        if other == reference:
            continue
        diff = 100 * (ref - np.asarray(comp.scores[other], dtype=np.float64))
        for sid, k, d in zip(comp.ids, comp.dominant, diff):
            if np.isfinite(d):
                rows.append({"id": sid, "defect": comp.class_names[k] if k else "no defect", "other": other,
                             "delta": float(d)})
    return rows


def plot_score_differences(comp: Comparison, reference: str | None = None, width: float = 6.8) -> Any:
    """Box plots of the per-image score differences (:func:`score_difference_rows`) by dominant defect class, one
    box per other run; right of zero, the reference scores higher. Each class's label counts its images.

    Returns:
        The matplotlib figure.
    """
    import warnings

    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(score_difference_rows(comp, reference))
    if df.empty:
        raise ComparisonError("no image was scored by both runs")
    reference = reference or comp.labels[0]
    order = [n for n in [*comp.class_names[1:], "no defect"] if n in set(df["defect"])]
    n_images = df.drop_duplicates("id").groupby("defect").size()
    fig, ax = plt.subplots(figsize=(width, 0.55 * len(order) + 1.4), dpi=110, layout="constrained")
    ax.axvline(0, color="0.4", lw=0.8)
    with warnings.catch_warnings():
        # seaborn 0.13 passes matplotlib's deprecated ``vert`` to bxp (matplotlib >= 3.11 warns); not ours to fix
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated", category=DeprecationWarning)
        sns.boxplot(df, x="delta", y="defect", hue="other", order=order, palette="colorblind", fliersize=1.5,
                    linewidth=0.8, width=0.7, ax=ax)
    ax.set_yticks(range(len(order)), [f"{n}\n({n_images[n]} images)" for n in order], fontsize=8)
    ax.set_ylabel("dominant defect class")
    ax.set_xlabel(f"{reference} − other run: per-image mIoU (points)")
    ax.legend(title=None, fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    return fig
