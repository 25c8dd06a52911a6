"""Segmentation metrics from a streaming confusion matrix.

The convention is the one of the DeepLabV3+ template the paper builds on (bubbliiiing/deeplabv3-plus-pytorch,
``utils/utils_metrics.py``), which is what the paper's tables report: a single confusion matrix accumulated
over every evaluation image at its original resolution, then per class (with TP, FP, FN read off the matrix)

* IoU       = TP / (TP + FP + FN)
* recall    = TP / (TP + FN)        (per-class pixel accuracy; its mean is MPA)
* precision = TP / (TP + FP)
* F1 (Dice) = 2 TP / (2 TP + FP + FN)  (from the counts; equals the harmonic mean of that class's P and R)

and the headline numbers are means over classes, **background included** (mIoU, MPA, mean precision, mean
recall, mean F1), plus pixel accuracy = trace / total. :class:`SegMetrics` also carries the same means over the
defect classes only (1..K-1), which the paper does not report but which are far less flattered by the
easy, dominant background class.

All values are fractions in [0, 1] (multiply by 100 for the paper's percentages; :func:`format_table` does).

Zero-denominator conventions (the template clamps every denominator with ``max(., 1)``, turning them all into
0; here a value is NaN when the quantity is genuinely undefined, and NaNs are skipped by the means):

* class absent from both ground truth and prediction: IoU, precision, recall and F1 are all NaN, so the class
  is excluded from every mean (it carries no evidence either way);
* class absent from the ground truth but predicted: IoU 0, precision 0, F1 0, recall NaN (nothing to recall,
  so it is left out of MPA / mean recall; the template would count a 0 there);
* class present in the ground truth but never predicted: IoU 0, recall 0, F1 0, and precision **0**, as in
  the template (TP / max(TP + FP, 1)): a model that never predicts a class that exists gets no credit;
* no pixel counted at all: every value, pixel accuracy included, is NaN.

So on an evaluation set where every class occurs in the ground truth (the NEU-Seg test split), every number
equals the template's exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix", "MeanMetrics", "SegMetrics", "format_table", "metrics_from_confusion"]


@dataclass(frozen=True)
class MeanMetrics:
    """Class-averaged metrics (NaN-skipping means over a set of classes), each a fraction in [0, 1] or NaN.

    Attributes:
        miou: mean IoU.
        mpa: mean pixel accuracy = mean per-class recall (same number as ``recall``; both names are used).
        precision: mean per-class precision.
        recall: mean per-class recall.
        f1: mean per-class F1 (= mean Dice), not the harmonic mean of the mean precision and recall.
    """

    miou: float
    mpa: float
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float | None]:
        """The five means as a JSON-ready dict (NaN becomes None)."""
        return {key: _json_float(getattr(self, key)) for key in ("miou", "precision", "recall", "mpa", "f1")}


@dataclass(frozen=True)
class SegMetrics:
    """Everything computed from one confusion matrix; fractions in [0, 1], NaN where undefined.

    Attributes:
        confusion: (K, K) int64 CPU tensor, rows = ground truth, columns = prediction.
        iou, precision_per_class, recall_per_class, f1_per_class: length-K tuples, one value per class.
        miou, mpa, precision, recall, f1: means over all K classes, background included (the paper's
            convention); ``mpa`` and ``recall`` are the same number.
        pixel_acc: correctly classified pixels / all counted pixels.
        defects_only: the same means over classes 1..K-1 (background excluded).
    """

    confusion: Tensor
    iou: tuple[float, ...]
    precision_per_class: tuple[float, ...]
    recall_per_class: tuple[float, ...]
    f1_per_class: tuple[float, ...]
    miou: float
    mpa: float
    precision: float
    recall: float
    f1: float
    pixel_acc: float
    defects_only: MeanMetrics

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.iou)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of fractions in [0, 1]; undefined values (NaN) become None.

        Keys: ``miou``, ``iou`` (per class), ``precision`` (mean), ``precision_per_class``, ``recall`` (mean),
        ``recall_per_class``, ``mpa``, ``f1`` (mean), ``f1_per_class``, ``pixel_acc``, ``defects_only``
        (``miou``, ``precision``, ``recall``, ``mpa``, ``f1``) and ``confusion`` (K x K nested list of ints).
        """
        return {
            "miou": _json_float(self.miou),
            "iou": [_json_float(v) for v in self.iou],
            "precision": _json_float(self.precision),
            "precision_per_class": [_json_float(v) for v in self.precision_per_class],
            "recall": _json_float(self.recall),
            "recall_per_class": [_json_float(v) for v in self.recall_per_class],
            "mpa": _json_float(self.mpa),
            "f1": _json_float(self.f1),
            "f1_per_class": [_json_float(v) for v in self.f1_per_class],
            "pixel_acc": _json_float(self.pixel_acc),
            "defects_only": self.defects_only.to_dict(),
            "confusion": self.confusion.tolist(),
        }


def _json_float(value: float) -> float | None:
    """NaN is not valid JSON; None says "undefined" in a way every JSON reader accepts."""
    return None if math.isnan(value) else float(value)


def _nanmean(values: Tensor) -> float:
    """Mean of the non-NaN entries; NaN when there are none (torch.nanmean does exactly this, silently)."""
    return float(torch.nanmean(values)) if values.numel() else math.nan


def metrics_from_confusion(confusion: Tensor) -> SegMetrics:
    """Compute :class:`SegMetrics` from a (K, K) confusion matrix (rows = ground truth, columns = prediction).

    See the module docstring for the formulas and the zero-denominator conventions.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got {tuple(confusion.shape)}")
    counts = confusion.detach().to("cpu", torch.int64)
    hist = counts.to(torch.float64)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    tp = hist.diagonal()
    gt = hist.sum(dim=1)  # TP + FN
    pred = hist.sum(dim=0)  # TP + FP
    union = gt + pred - tp  # TP + FP + FN
    present = union > 0

    iou = torch.where(present, tp / union.clamp_min(1), nan)
    recall = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    # Template convention: a class in the ground truth that is never predicted has precision 0, not NaN.
    precision = torch.where(present, tp / pred.clamp_min(1), nan)
    f1 = torch.where(present, 2 * tp / (gt + pred).clamp_min(1), nan)
    total = hist.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else math.nan

    def means(index: slice) -> MeanMetrics:
        mean_recall = _nanmean(recall[index])
        return MeanMetrics(
            miou=_nanmean(iou[index]),
            mpa=mean_recall,
            precision=_nanmean(precision[index]),
            recall=mean_recall,
            f1=_nanmean(f1[index]),
        )

    everything = means(slice(None))
    return SegMetrics(
        confusion=counts,
        iou=tuple(iou.tolist()),
        precision_per_class=tuple(precision.tolist()),
        recall_per_class=tuple(recall.tolist()),
        f1_per_class=tuple(f1.tolist()),
        miou=everything.miou,
        mpa=everything.mpa,
        precision=everything.precision,
        recall=everything.recall,
        f1=everything.f1,
        pixel_acc=pixel_acc,
        defects_only=means(slice(1, None)),
    )


class ConfusionMatrix:
    """A streaming (K, K) int64 confusion matrix, rows = ground truth, columns = prediction.

    Accumulate with :meth:`update` batch by batch (on CPU or GPU tensors; counting is one ``bincount``),
    combine with :meth:`merge` or, across processes, :meth:`all_reduce`, then :meth:`compute`.

    Args:
        num_classes: K.
        ignore_index: ground-truth value whose pixels are not counted (255 in NEU-Seg masks); None counts all.
        device: where the matrix lives; None means "follow the inputs" (it moves to the device of the first
            tensors passed to :meth:`update` and stays there).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._fixed_device = device is not None
        self.matrix = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=device if device is not None else "cpu"
        )

    @property
    def device(self) -> torch.device:
        """Where the matrix currently lives."""
        return self.matrix.device

    def reset(self) -> None:
        """Zero all counts (keeps the device)."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred: (N, H, W) integer class ids, or (N, K, H, W) logits/probabilities (reduced with argmax over
                dim 1). Must match ``target`` in size: resize to the mask's original resolution first.
            target: (N, H, W) integer class ids in 0..K-1, or ``ignore_index``.

        Raises:
            ValueError: shape mismatch, or a class id outside 0..K-1 (other than ``ignore_index``) in either
                tensor; silently dropping those (as the template does) hides label-encoding bugs.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"logits have {pred.shape[1]} channels, expected num_classes={self.num_classes}")
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred (after argmax) and target must hold integer class ids")
        if self._fixed_device:
            pred, target = pred.to(self.device), target.to(self.device)
        else:
            if self.matrix.device != target.device:
                self.matrix = self.matrix.to(target.device)
            pred = pred.to(target.device)

        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(torch.int64)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            target, pred = target[keep], pred[keep]
        k = self.num_classes
        # One reduction and one host sync for both range checks; cheap next to the forward pass.
        bad = ((target < 0) | (target >= k) | (pred < 0) | (pred >= k)).any()
        if bool(bad):
            raise ValueError(
                f"class ids outside 0..{k - 1} (ignore_index={self.ignore_index}): "
                f"target has {torch.unique(target).tolist()[:10]}, pred has {torch.unique(pred).tolist()[:10]}"
            )
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot combine ConfusionMatrix(num_classes={other.num_classes}, ignore_index={other.ignore_index})"
                f" into ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place) and return ``self``."""
        self._check_compatible(other)
        self.matrix += other.matrix.to(self.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes when ``torch.distributed`` is initialised; a no-op otherwise.

        Every rank must call it (it is a collective). With the NCCL backend the matrix must be on the rank's
        GPU (create it with ``device=`` or update it with GPU tensors first). Returns ``self``.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegMetrics:
        """Metrics of everything accumulated so far (see :func:`metrics_from_confusion`)."""
        return metrics_from_confusion(self.matrix)

    def state_dict(self) -> dict[str, Any]:
        """``{"num_classes", "ignore_index", "confusion"}``, the matrix as a CPU int64 tensor (checkpoint-safe)."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "confusion": self.matrix.detach().to("cpu").clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counts saved by :meth:`state_dict`; the matrix keeps this object's current device.

        Raises:
            ValueError: the state was saved with a different ``num_classes`` or ``ignore_index``.
        """
        if int(state["num_classes"]) != self.num_classes or state.get("ignore_index") != self.ignore_index:
            raise ValueError(
                f"state is for num_classes={state['num_classes']}, ignore_index={state.get('ignore_index')}; "
                f"this matrix has num_classes={self.num_classes}, ignore_index={self.ignore_index}"
            )
        confusion = torch.as_tensor(state["confusion"], dtype=torch.int64)
        if confusion.shape != self.matrix.shape:
            raise ValueError(
                f"confusion in state has shape {tuple(confusion.shape)}, expected {tuple(self.matrix.shape)}"
            )
        self.matrix = confusion.to(self.device).clone()

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device={self.device}, pixels={int(self.matrix.sum())})"
        )


def format_table(metrics: SegMetrics, class_names: Sequence[str] | None = None) -> str:
    """A readable plain-text table in percent: one row per class (IoU, precision, recall, F1), then the means.

    Args:
        metrics: the result of :meth:`ConfusionMatrix.compute`.
        class_names: K names (e.g. ``["background", "inclusion", "patches", "scratches"]``); None numbers them.

    Returns:
        The table as a string (print it); undefined values are shown as ``-``.
    """
    k = metrics.num_classes
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"got {len(names)} class names for {k} classes")

    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{100 * value:.2f}"

    width = max(len(name) for name in [*names, "mean (defects only)"])
    header = f"{'class':<{width}}  {'IoU':>7}  {'Prec':>7}  {'Recall':>7}  {'F1':>7}"
    lines = [header, "-" * len(header)]
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  {pct(metrics.iou[i]):>7}  {pct(metrics.precision_per_class[i]):>7}  "
            f"{pct(metrics.recall_per_class[i]):>7}  {pct(metrics.f1_per_class[i]):>7}"
        )
    lines.append("-" * len(header))
    for label, mean in (
        ("mean (all classes)", metrics),
        ("mean (defects only)", metrics.defects_only),
    ):
        lines.append(
            f"{label:<{width}}  {pct(mean.miou):>7}  {pct(mean.precision):>7}  {pct(mean.recall):>7}  {pct(mean.f1):>7}"
        )
    lines.append(f"pixel accuracy {pct(metrics.pixel_acc)}; MPA = mean recall; all values in percent")
    return "\n".join(lines)
