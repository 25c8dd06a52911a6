"""Segmentation losses: cross-entropy, focal, soft Dice, their weighted sum, and a factory.

The forms follow the DeepLabV3+ template the paper builds on (bubbliiiing/deeplabv3-plus-pytorch,
``nets/deeplabv3_training.py``), with two deliberate departures that are stated where they happen:

* ignored pixels (``ignore_index``, 255 in NEU-Seg masks) are left out of every average and of Dice's sums;
  the template's focal loss averages over all pixels, ignored ones included, and its Dice counts the
  probability mass it puts on ignored pixels as false positives;
* an all-ignored batch gives a loss of exactly 0 that is still connected to the logits, where a plain
  ``mean`` over zero pixels would give NaN and poison the optimiser state.

Shapes everywhere: ``logits`` is ``(N, K, H, W)`` (any float dtype, e.g. fp16/bf16 from autocast; the loss is
computed in float32), ``target`` is ``(N, H, W)`` int64 with class ids ``0..K-1`` or ``ignore_index``. Every
loss returns a float32 scalar tensor.

:func:`build_loss` turns a spec such as ``"focal+dice"`` (the paper's default) or
``{"focal": 1.0, "dice": 0.5, "focal_gamma": 2.0}`` into a :class:`CombinedLoss`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSS_NAMES",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "DistillationLoss",
    "FocalLoss",
    "build_loss",
]

ClassWeights = Sequence[float] | Tensor | None


def _check_inputs(logits: Tensor, target: Tensor) -> None:
    """Fail early with a readable message instead of a broadcasting error deep inside a loss."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    if target.dim() != 3:
        raise ValueError(f"target must be (N, H, W), got shape {tuple(target.shape)}")
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        # The template silently resizes logits here; resizing is the model's job in smelib, so a mismatch
        # is more likely a bug (wrong output stride, transposed mask) than something to paper over.
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on N, H or W; "
            "upsample the logits to the mask size first"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if target.is_floating_point():
        raise TypeError(f"target must hold integer class ids, got {target.dtype}")


def _as_weight_buffer(class_weights: ClassWeights, num_classes: int | None) -> Tensor | None:
    """Class weights as a float32 1-D tensor (or None), checked against ``num_classes`` when it is known."""
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone().reshape(-1)
    if num_classes is not None and weights.numel() != num_classes:
        raise ValueError(f"class_weights has {weights.numel()} entries, expected num_classes={num_classes}")
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError(f"class_weights must be finite and non-negative, got {weights.tolist()}")
    return weights


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, but 0 (still attached to the graph) where the denominator is 0.

    Used for the "mean over non-ignored pixels": with no valid pixel the numerator is an all-zero sum that
    still depends on the logits, so dividing by 1 there keeps both the value (0) and the gradient path.
    """
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with optional class weights and an ignore label.

    Matches ``torch.nn.functional.cross_entropy(logits, target, weight, ignore_index=...)`` with the default
    ``"mean"`` reduction, i.e. the weighted mean ``sum_i w[y_i] * CE_i / sum_i w[y_i]`` over non-ignored
    pixels (the template's ``CE_Loss``), except that an all-ignored batch gives 0 instead of NaN.

    Args:
        num_classes: K, used only to check ``class_weights``; None skips the check.
        class_weights: (K,) non-negative weights, or None for uniform.
        ignore_index: target value whose pixels contribute nothing.
    """

    weight: Tensor | None

    def __init__(
        self, num_classes: int | None = None, class_weights: ClassWeights = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        # A buffer so that ``.to(device)`` on the loss (or the model holding it) moves the weights too.
        self.register_buffer("weight", _as_weight_buffer(class_weights, num_classes))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``logits`` (N, K, H, W) against ``target`` (N, H, W); returns a float32 scalar."""
        _check_inputs(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits32 = logits.float()
            weight = None if self.weight is None else self.weight.to(logits32.device)
            total = F.cross_entropy(logits32, target, weight=weight, ignore_index=self.ignore_index, reduction="sum")
            valid = target != self.ignore_index
            if weight is None:
                denominator = valid.sum().to(torch.float32)
            else:
                safe_target = torch.where(valid, target, torch.zeros_like(target))
                denominator = (weight[safe_target] * valid).sum()
            return _safe_divide(total, denominator)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, weighted={self.weight is not None}"


class FocalLoss(nn.Module):
    """Multi-class focal loss in the template's form (``Focal_Loss`` in bubbliiiing/deeplabv3-plus-pytorch).

    Per pixel, with ``CE_i`` the (class-weighted) cross-entropy of pixel i::

        logpt = -CE_i;  pt = exp(logpt);  loss_i = -(1 - pt)**gamma * alpha * logpt

    and the result is the plain mean of ``loss_i`` over non-ignored pixels. Consequences worth knowing:
    with ``gamma=0`` it equals ``alpha`` times the unweighted-mean CE; with class weights, ``pt`` is
    ``exp(-w[y] * CE)`` rather than the true class probability (the template does the same), and the mean
    divides by the number of valid pixels, not by the sum of their weights as :class:`CrossEntropyLoss` does.
    The template averages over all pixels, ignored ones included; here they are excluded.

    Args:
        num_classes: K, used only to check ``class_weights``; None skips the check.
        alpha: constant scale of the loss (a scalar, not per class, as in the template); default 0.5.
        gamma: focusing exponent, >= 0; default 2.
        class_weights: (K,) non-negative weights passed to the per-pixel cross-entropy, or None.
        ignore_index: target value whose pixels contribute nothing.
    """

    weight: Tensor | None

    def __init__(
        self,
        num_classes: int | None = None,
        alpha: float = 0.5,
        gamma: float = 2.0,
        class_weights: ClassWeights = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", _as_weight_buffer(class_weights, num_classes))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``logits`` (N, K, H, W) against ``target`` (N, H, W); returns a float32 scalar."""
        _check_inputs(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits32 = logits.float()
            weight = None if self.weight is None else self.weight.to(logits32.device)
            ce = F.cross_entropy(logits32, target, weight=weight, ignore_index=self.ignore_index, reduction="none")
            logpt = -ce
            # 1 - exp(logpt) via expm1 keeps precision when pt is close to 1 (confident pixels). The clamp
            # keeps d/dx x**gamma finite at x = 0 (ignored or saturated pixels) for 0 < gamma < 1, where it
            # would otherwise be inf * 0 = NaN in the backward pass; it changes the value by < 1e-12**gamma.
            one_minus_pt = (-torch.expm1(logpt)).clamp_min(1e-12)
            per_pixel = -(one_minus_pt**self.gamma) * (self.alpha * logpt)
            valid = target != self.ignore_index
            return _safe_divide(per_pixel.sum(), valid.sum().to(torch.float32))

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, ignore_index={self.ignore_index}, "
            f"weighted={self.weight is not None}"
        )


class DiceLoss(nn.Module):
    """Soft Dice loss on softmax probabilities, per class, pooled over the whole batch.

    With ``p`` the softmax probabilities and ``t`` the one-hot target, both zeroed at ignored pixels, and
    sums over the batch and all pixels (as the template's ``Dice_loss`` does, beta = 1)::

        dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)
        loss   = 1 - sum_c w_c * dice_c / sum_c w_c     over the included classes

    With no class weights and ``include_background=True`` this is the template's ``1 - mean_c dice_c``. A
    class absent from the batch's target scores ``smooth / (sum(p_c) + smooth)``, i.e. it is rewarded for
    predicting nothing, as in the template. An all-ignored batch gives every class ``smooth / smooth = 1``
    and so a loss of 0.

    Args:
        num_classes: K (required: it fixes the one-hot width even when a batch lacks some classes).
        smooth: additive smoothing in numerator and denominator; default 1e-5 (the template's).
        include_background: False drops class 0 from the average (defect classes only).
        class_weights: (K,) non-negative per-class weights for the average, or None for uniform.
        ignore_index: target value whose pixels are excluded from all sums.
    """

    weight: Tensor | None

    def __init__(
        self,
        num_classes: int,
        smooth: float = 1e-5,
        include_background: bool = True,
        class_weights: ClassWeights = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if num_classes < 1 or (num_classes < 2 and not include_background):
            raise ValueError(f"num_classes={num_classes} leaves no class to average over")
        self.num_classes = int(num_classes)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", _as_weight_buffer(class_weights, num_classes))
        if self.weight is not None and float(self.weight[0 if include_background else 1 :].sum()) <= 0:
            raise ValueError("DiceLoss class weights of the included classes sum to 0")

    def per_class_dice(self, logits: Tensor, target: Tensor) -> Tensor:
        """Soft Dice score per class, shape (K,), float32, for all K classes (background included)."""
        _check_inputs(logits, target)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels, DiceLoss expects {self.num_classes}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probs = torch.softmax(logits.float(), dim=1)
            valid = (target != self.ignore_index).unsqueeze(1)  # (N, 1, H, W)
            # one_hot needs in-range ids; ignored pixels are mapped to 0 and then zeroed by the mask.
            safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
            one_hot = F.one_hot(safe_target, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
            probs = probs * valid
            dims = (0, 2, 3)
            intersection = (probs * one_hot).sum(dims)
            cardinality = probs.sum(dims) + one_hot.sum(dims)
            return (2.0 * intersection + self.smooth) / (cardinality + self.smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``logits`` (N, K, H, W) against ``target`` (N, H, W); returns a float32 scalar."""
        dice = self.per_class_dice(logits, target)
        weight = torch.ones_like(dice) if self.weight is None else self.weight.to(dice.device)
        if not self.include_background:
            dice, weight = dice[1:], weight[1:]
        return 1.0 - (weight * dice).sum() / weight.sum()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, smooth={self.smooth}, include_background={self.include_background}, "
            f"ignore_index={self.ignore_index}, weighted={self.weight is not None}"
        )


class CombinedLoss(nn.Module):
    """Weighted sum of named losses: ``sum_name weight[name] * loss[name](logits, target)``.

    After each forward, ``last_terms`` holds every term's unweighted value (detached, so logging it
    neither keeps the graph alive nor forces a device sync until the caller reads it).

    Args:
        terms: ``{name: (weight, loss_module)}`` in the order they are summed; at least one term.
    """

    def __init__(self, terms: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        self.weights: dict[str, float] = {name: float(weight) for name, (weight, _) in terms.items()}
        # ModuleDict so the terms' buffers (class weights) follow ``.to(device)``.
        self.losses = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Weighted sum for ``logits`` (N, K, H, W) against ``target`` (N, H, W); returns a float32 scalar."""
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for name, module in self.losses.items():
            value = module(logits, target)
            terms[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        self.last_terms = terms
        assert total is not None  # guaranteed by the non-empty check in __init__
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{weight:g}*{name}" for name, weight in self.weights.items())


class DistillationLoss(nn.Module):
    """Pixel-wise knowledge distillation (Hinton et al., 2015): the teacher's softened class distribution as a
    soft target for the student's.

    ``T^2 * mean over labelled pixels of KL(softmax(teacher / T) || softmax(student / T))``. The ``T^2`` keeps
    the gradient's scale independent of ``T``; pixels labelled ``ignore_index`` (padding) are left out, as in
    every other loss here.

    Args:
        temperature: T > 0; above 1 the teacher's smaller probabilities (which class a pixel nearly was) count
            more.
        ignore_index: target value of pixels left out.
    """

    def __init__(self, temperature: float = 2.0, ignore_index: int = 255) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.ignore_index = ignore_index

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
        """``student`` and ``teacher`` logits (N, K, H, W), ``target`` (N, H, W); returns a float32 scalar."""
        _check_inputs(student, target)
        if teacher.shape != student.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} differ from the student's {tuple(student.shape)}")
        t = self.temperature
        log_s = F.log_softmax(student.float() / t, dim=1)
        log_t = F.log_softmax(teacher.detach().float() / t, dim=1)
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)  # (N, H, W)
        valid = target != self.ignore_index
        return t * t * _safe_divide((kl * valid).sum(), valid.sum())


LOSS_NAMES: tuple[str, ...] = ("ce", "focal", "dice")
"""The loss names :func:`build_loss` understands, in the order terms are summed."""

# Per-loss options a dict spec may set as ``"<loss>_<option>"``, mapped to the constructor argument.
_OPTIONS: dict[str, dict[str, str]] = {
    "ce": {},
    "focal": {"focal_alpha": "alpha", "focal_gamma": "gamma"},
    "dice": {"dice_smooth": "smooth", "dice_include_background": "include_background", "dice_weighted": "weighted"},
}


def _parse_spec(spec: str | Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Split a spec into ``{loss name: weight}`` and ``{option key: value}``, rejecting anything unknown."""
    valid_options = sorted(key for options in _OPTIONS.values() for key in options)
    if isinstance(spec, str):
        names = [part.strip().lower() for part in spec.split("+")]
        unknown = [name for name in names if name not in LOSS_NAMES]
        if unknown or not spec.strip():
            raise ValueError(
                f"unknown loss name(s) {unknown or [spec]} in spec {spec!r}; valid names: {', '.join(LOSS_NAMES)} "
                "(combine with '+', e.g. 'focal+dice')"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"loss spec {spec!r} names a loss twice")
        return {name: 1.0 for name in names}, {}
    if isinstance(spec, Mapping):
        weights: dict[str, float] = {}
        options: dict[str, Any] = {}
        for key, value in spec.items():
            lowered = str(key).lower()
            if lowered in LOSS_NAMES:
                weights[lowered] = float(value)
            elif lowered in valid_options:
                options[lowered] = value
            else:
                raise ValueError(
                    f"unknown key {key!r} in loss spec; valid loss names: {', '.join(LOSS_NAMES)}; "
                    f"valid options: {', '.join(valid_options)}"
                )
        if any(weight < 0 for weight in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        weights = {name: weight for name, weight in weights.items() if weight > 0}
        if not weights:
            raise ValueError(f"loss spec {dict(spec)!r} has no loss with a positive weight; valid names: {LOSS_NAMES}")
        for key in options:
            owner = key.split("_", 1)[0]
            if owner not in weights:
                raise ValueError(f"option {key!r} given but loss {owner!r} is not in the spec")
        return weights, options
    raise TypeError(f"loss spec must be a str or a dict, got {type(spec).__name__}")


def build_loss(
    spec: str | Mapping[str, Any],
    num_classes: int,
    ignore_index: int = 255,
    class_weights: ClassWeights = None,
) -> CombinedLoss:
    """Build a :class:`CombinedLoss` from a spec.

    Spec forms:

    * a string of loss names joined by ``+``, each with weight 1: ``"ce"``, ``"focal"``, ``"dice"``,
      ``"focal+dice"`` (the paper's default), ``"ce+dice"``;
    * a dict of ``{name: weight}`` plus optional per-loss options ``focal_alpha`` (0.5), ``focal_gamma`` (2.0),
      ``dice_smooth`` (1e-5), ``dice_include_background`` (True), ``dice_weighted`` (False), e.g.
      ``{"focal": 1.0, "dice": 0.5, "focal_gamma": 2.0}``. Terms with weight 0 are dropped.

    ``class_weights`` go to CE and focal (as in the template's ``cls_weights``); Dice uses them only when
    ``dice_weighted`` is true, because the template's Dice is unweighted.

    Args:
        spec: the loss specification.
        num_classes: K, the number of logit channels (4 for NEU-Seg).
        ignore_index: target value to ignore (255 in NEU-Seg masks).
        class_weights: (K,) non-negative class weights, or None.

    Returns:
        The combined loss; call it as ``loss(logits (N, K, H, W), target (N, H, W)) -> scalar``.

    Raises:
        ValueError: unknown loss names or options (the message lists the valid ones), negative weights,
            no positive weight, or class weights of the wrong length.
    """
    weights, options = _parse_spec(spec)
    checked_weights = _as_weight_buffer(class_weights, num_classes)
    terms: dict[str, tuple[float, nn.Module]] = {}
    for name in LOSS_NAMES:  # fixed order, so "dice+focal" and "focal+dice" build the same module
        if name not in weights:
            continue
        kwargs = {_OPTIONS[name][key]: value for key, value in options.items() if key in _OPTIONS[name]}
        module: nn.Module
        if name == "ce":
            module = CrossEntropyLoss(num_classes, checked_weights, ignore_index)
        elif name == "focal":
            module = FocalLoss(num_classes, class_weights=checked_weights, ignore_index=ignore_index, **kwargs)
        else:
            weighted = bool(kwargs.pop("weighted", False))
            module = DiceLoss(
                num_classes,
                ignore_index=ignore_index,
                class_weights=checked_weights if weighted else None,
                **kwargs,
            )
        terms[name] = (weights[name], module)
    return CombinedLoss(terms)
