"""Inference: class probabilities with optional test-time augmentation, evaluation at the original resolution
(streaming confusion matrix, sharded over ranks under DDP), and index-mask prediction. Labels are the argmax of
the probabilities unless a :class:`smelib.mechanisms.DecisionRule` (static or dynamic threshold) is given."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smelib.distributed import DistContext
from smelib.checkpoint import load_checkpoint
from smelib.data.loading import normalize_image, size_tuple, unpack
from smelib.metrics import ConfusionMatrix, SegMetrics

if TYPE_CHECKING:
    from smelib.mechanisms import DecisionRule

__all__ = ["evaluate", "predict", "predict_dataset", "predict_proba", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


_DIHEDRAL = [(k, flip) for k in range(4) for flip in (False, True)]


def _dihedral(x: Tensor, k: int, flip: bool) -> Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1))


def _undo_dihedral(x: Tensor, k: int, flip: bool) -> Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    if flip:
        x = torch.flip(x, dims=(-1,))
    return x


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: Tensor,
    out_size: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Class probabilities for a batch.

    Args:
        model: maps ``(N, C, h, w)`` to logits ``(N, K, h, w)``; used in its current mode (call ``.eval()``).
        images: ``(N, C, H, W)`` normalised images on the model's device.
        out_size: size of the returned maps (default ``(H, W)``): probabilities are bilinearly resized to it.
        size: run the model at this size (the training size) when given; None runs at ``(H, W)``.
        tta: average the softmax over the 8 dihedral transforms (4 rotations × horizontal flip).
        amp_dtype: autocast dtype, or None.
        channels_last: feed the model channels-last tensors.

    Returns:
        ``(N, K, *out_size)`` float32 probabilities.
    """
    out_size = out_size or tuple(images.shape[-2:])
    x = images
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    transforms = _DIHEDRAL if tta else [(0, False)]
    total = None
    for k, flip in transforms:
        xt = _dihedral(x, k, flip)
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(xt)
        probs = _undo_dihedral(torch.softmax(logits.float(), dim=1), k, flip)
        total = probs if total is None else total + probs
    probs = total / len(transforms)
    if tuple(probs.shape[-2:]) != tuple(out_size):
        probs = F.interpolate(probs, size=out_size, mode="bilinear", align_corners=False)
    return probs


def _model_from(model_or_checkpoint: nn.Module | str | os.PathLike, device: torch.device | str | None
                ) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
        if device is not None:
            model = model.to(device)
        return model, {}
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return load_checkpoint(model_or_checkpoint, device=dev)


def _eval_setup(model_or_checkpoint: nn.Module | str | os.PathLike, device: torch.device | str | None,
                size: Any, num_classes: int | None) -> tuple[nn.Module, dict[str, Any], Any, torch.device, int]:
    """What every evaluation needs: the model, its checkpoint meta, the eval size (the checkpoint's when not
    given), the model's device and the class count."""
    model, meta = _model_from(model_or_checkpoint, device)
    if size is None and meta:
        size = meta["config"]["data"].get("size")
    k = int(num_classes or getattr(unwrap(model), "num_classes", None) or meta.get("num_classes"))
    return model, meta, size_tuple(size), next(model.parameters()).device, k


def _eval_batches(dataset: Any, indices: Sequence[int], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of consecutive same-size samples (images of different sizes are never padded together)."""
    pending: list[tuple[Tensor, Tensor]] = []
    for i in indices:
        image, mask = unpack(dataset[i])
        if pending and (pending[0][0].shape != image.shape or len(pending) == batch_size):
            yield torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])
            pending = []
        pending.append((image, mask))
    if pending:
        yield torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])


@torch.no_grad()
def evaluate(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    dataset: Any,
    tta: bool = False,
    num_classes: int | None = None,
    ignore_index: int = 255,
    size: int | Sequence[int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    ctx: DistContext | None = None,
    progress: bool = False,
    decision: DecisionRule | None = None,
) -> SegMetrics:
    """Metrics of a model on a dataset, at each image's original resolution.

    Args:
        model_or_checkpoint: a model (its mode is restored afterwards) or a checkpoint path.
        dataset: items ``(image (C, H, W) float normalised, mask (H, W) int)`` (or dicts with those keys).
        tta: average the softmax over the 8 dihedral transforms.
        num_classes: K (default: the model's ``num_classes``).
        ignore_index: mask value not counted.
        size: run the model at this size (int or (h, w); the training size) and resize probabilities back;
            None (default) runs at the native size. For a checkpoint, None means the checkpoint's ``data.size``.
        batch_size: images per forward pass (same-size images only).
        device: where to run (default: where the model is, or CPU for a checkpoint).
        ctx: under DDP, each rank evaluates every W-th image and the confusion matrices are summed.
        decision: how probabilities become labels (:mod:`smelib.mechanisms`); None (default) or ``argmax``:
            the argmax. A dynamic rule with ``scope="batch"`` pools each batch of ``batch_size`` images.

    Returns:
        :class:`smelib.metrics.SegMetrics` (``.to_dict()`` for JSON; background-included means and
        ``.defects_only``).
    """
    model, meta, size_t, dev, k = _eval_setup(model_or_checkpoint, device, size, num_classes)
    ctx = ctx or DistContext()
    cm = ConfusionMatrix(k, ignore_index=ignore_index, device=dev)
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    was_training = model.training
    model.eval()
    try:
        batches = _eval_batches(dataset, indices, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=math.ceil(len(indices) / batch_size), desc="eval", leave=False)
        for images, masks in batches:
            images, masks = images.to(dev), masks.to(dev)
            probs = predict_proba(model, images, tuple(masks.shape[-2:]), size_t, tta, amp_dtype, channels_last)
            cm.update(probs.argmax(1) if decision is None else decision(probs), masks)
    finally:
        model.train(was_training)
    cm.all_reduce()
    return cm.compute()


@torch.no_grad()
def predict_dataset(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    dataset: Any,
    tta: bool = False,
    size: int | Sequence[int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> list[np.ndarray]:
    """Argmax label maps for every item of an evaluation dataset, in dataset order.

    The same batching, resizing, TTA, autocast and memory layout as :func:`evaluate` (given the same arguments),
    so that a confusion matrix accumulated over these maps equals the one :func:`evaluate` computes.

    Args:
        model_or_checkpoint: a model (its mode is restored afterwards) or a checkpoint path.
        dataset: items ``(image (C, H, W) float normalised, mask (H, W) int, ...)``.
        tta, size, batch_size, device, amp_dtype, channels_last: as for :func:`evaluate` (``size=None`` with a
            checkpoint: its ``data.size``).

    Returns:
        One ``(H, W)`` uint8 array of class ids per item, at the item's own size.
    """
    model, _, size_t, dev, _ = _eval_setup(model_or_checkpoint, device, size, None)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for images, masks in _eval_batches(dataset, range(len(dataset)), batch_size):
            probs = predict_proba(model, images.to(dev), tuple(masks.shape[-2:]), size_t, tta, amp_dtype,
                                  channels_last)
            out.extend(probs.argmax(1).to(torch.uint8).cpu().numpy())
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def predict(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    images: Iterable[Any],
    tta: bool = False,
    size: int | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    normalization: dict[str, Any] | None = None,
    decision: DecisionRule | str | None = None,
) -> list[np.ndarray]:
    """Index masks for images.

    Args:
        model_or_checkpoint: a model or a checkpoint path.
        images: file paths, PIL images, ``(H, W)``/``(H, W, 3)`` uint8 arrays or ``(C, H, W)`` uint8 tensors
            (normalised here with the checkpoint's ``normalization``, else ``normalization``, else NEU-Seg's
            statistics), or ``(C, H, W)`` float tensors that are already normalised.
        tta: average the softmax over the 8 dihedral transforms.
        size: model input size (default: the checkpoint's ``data.size``; None = native).
        device: where to run.
        normalization: ``{"mean": [...], "std": [...]}`` for a bare model (a checkpoint carries its own).
        decision: how probabilities become labels: None (argmax), a :class:`smelib.mechanisms.DecisionRule`,
            or a mode name (``argmax``/``static``/``dynamic``) completed from the checkpoint's config and
            training statistics. Images are decided one at a time (a batch scope is the image scope here).

    Returns:
        One ``(H, W)`` uint8 array of class ids per image, at the image's own size.
    """
    model, meta = _model_from(model_or_checkpoint, device)
    if size is None and meta:
        size = meta["config"]["data"].get("size")
    in_channels = meta.get("in_channels") or getattr(unwrap(model), "config", {}).get("in_channels", 3)
    norm = dict(normalization or meta.get("normalization") or {})
    if isinstance(decision, str):
        from smelib.mechanisms import DecisionRule, rule_for_checkpoint

        if meta:
            decision = rule_for_checkpoint(meta, mode=decision)
        elif decision in ("argmax", "static"):
            decision = DecisionRule(mode=decision)
        else:
            raise ValueError("decision='dynamic' with a bare model needs a DecisionRule carrying the training "
                             "split's defect-area quartiles (smelib.mechanisms.rule_from_config)")
    size_t = size_tuple(size)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for item in images:
            x = item if isinstance(item, Tensor) and item.is_floating_point() else \
                normalize_image(item, in_channels, norm.get("mean"), norm.get("std"))
            x = x.to(dev)[None]
            probs = predict_proba(model, x, tuple(x.shape[-2:]), size_t, tta)
            labels = probs.argmax(1) if decision is None else decision(probs)
            out.append(labels[0].to(torch.uint8).cpu().numpy())
    finally:
        model.train(was_training)
    return out


