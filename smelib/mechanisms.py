"""The paper's unspecified mechanisms, as explicit, testable options that are all off by default.

The paper says its MSAA and ELA modules "adaptively initialise weights based on dataset characteristics" and
use "a dynamic threshold adjustment mechanism" that lowers a threshold when a batch holds many small defects
and raises it when large defects dominate. It defines neither. This module fixes one precise reading of each
(the book's chapter "What the paper leaves unspecified" says why these readings); with the options off (the
defaults) training and inference are exactly what they were without this module.

Notation. K classes, class 0 background, classes 1..K-1 defects. ``probs`` is ``(N, K, H, W)`` softmax
probabilities ``p_k(x)`` of N images. The *training split* is the run's ``train`` subset (the validation
carve-out and the test subset are never read), its masks at native resolution, without augmentation.

Training statistics (:func:`training_stats`, always computed by the engine, stored in the checkpoint and in
``record.json`` under ``train_stats``)::

    n_k    = number of training pixels labelled k (ignore_index and values >= K are not counted)
    pi_k   = n_k / sum_j n_j                                   class pixel frequencies, sum_k pi_k = 1
    a_i    = (sum_{c>=1} n_{i,c}) / (sum_c n_{i,c})            defect area fraction of training image i
    q1, m, q3 = 25th, 50th, 75th percentiles (numpy's linear interpolation) of {a_i : a_i > 0}

(a) Dataset-adaptive initialisation (config section ``model_init``)
    ``classifier_prior: true`` — the prior initialisation of focal-loss practice (RetinaNet's
    ``b = -log((1 - pi) / pi)``, written for a softmax): the bias of the final 1x1 classifier is set to ::

        b_k = log pit_k,    pit_k = max(pi_k, eps) / sum_j max(pi_j, eps),   eps = 1e-6

    so that where the classifier's weighted input is ~0 (as at initialisation) the model predicts the class
    prior, ``softmax(b) = pit``, instead of the uniform 1/K. Nothing else changes and no random number is
    drawn, so the rest of the initialisation is bit-identical to a run without it.

    ``class_weights: inverse_sqrt`` — class weights of the cross-entropy inside the focal loss (and of CE;
    Dice only with the loss option ``dice_weighted``), from the same frequencies ::

        w_k = pit_k^(-1/2) / sum_j pit_j^(1/2)        so that sum_k pit_k w_k = 1

    i.e. rarer classes weigh more, by the square root of their rarity (the usual damped inverse frequency),
    normalised so that the pixel-averaged weight is 1 and the loss keeps its scale. ``none`` (default): no
    weights.

(b) The decision rule (config ``eval.decision`` and ``eval.threshold``; ``smelib eval --threshold``)
    ``argmax`` (default): ``y(x) = argmax_k p_k(x)`` — the usual rule, unchanged.

    ``static`` and ``dynamic``: a pixel is a defect when its defect probability ``d = sum_{c>=1} p_c = 1 - p_0``
    exceeds a threshold tau, and then takes the most likely defect class::

        y(x) = argmax_{c>=1} p_c(x)   if (1 - tau) * d(x) > tau * p_0(x)     (<=> d / (d + p_0) > tau)
             = 0                      otherwise

    (written without a division or a ``1 - p_0`` so that K = 2, tau = 0.5 is exactly ``p_1 > p_0``, i.e.
    exactly argmax, ties going to background as argmax's first index does). ``static``: tau = tau0 fixed.

    ``dynamic``: tau adapts to the predicted defect sizes, as the paper describes (lower for small defects,
    higher when large ones dominate). For each image i of a group G (``scope: image``: G = {i}; ``scope:
    batch``: G = the images of the inference batch) ::

        s_i     = mean_x 1[(1 - tau0) d_i(x) > tau0 p_0,i(x)]     provisional defect area at tau0
        small_G = |{i in G : s_i < q1}| / |G|                     share of small-defect images (s_i = 0 counts)
        large_G = |{i in G : s_i > q3}| / |G|                     share of large-defect images
        tau_G   = clamp(tau0 + slope * (large_G - small_G), tau_min, tau_max)

    and every image of G is then labelled with tau_G. q1 and q3 are the training split's defect-area quartiles
    (above). Defaults: tau0 = 0.5, slope = 0.2, [tau_min, tau_max] = [0.05, 0.95], scope = image, so an image
    whose provisional defect covers less than q1 of it is thresholded at 0.3, one above q3 at 0.7. tau_G is
    non-decreasing in every s_i; with slope = 0 it is the static rule. ``scope: batch`` is the paper's literal
    wording; its result depends on the batch an image falls in (``data.eval_batch_size``, the number of DDP
    ranks, and :func:`smelib.inference.predict` runs one image per batch), which ``scope: image`` avoids.

Why at inference and not in training: the paper places the mechanism "during training", but the training loss
(focal + Dice on softmax probabilities) contains no threshold for it to adjust, so a training-time reading
would have to invent a whole loss re-weighting, and anything that must help at test time can only use the
model's predictions (no ground truth there). An inference rule is the one place a segmentation pipeline
thresholds, and it can be ablated on the very same checkpoints (a paired comparison, free of training noise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from smelib.config import CLASS_WEIGHT_SCHEMES, DECISIONS, SCOPES

__all__ = [
    "PRIOR_EPS",
    "DecisionRule",
    "TrainStats",
    "apply_model_init",
    "class_prior_bias",
    "class_weights",
    "decide",
    "defect_area",
    "find_classifier",
    "init_classifier_prior",
    "loss_class_weights",
    "rule_for_checkpoint",
    "rule_from_config",
    "training_stats",
]

PRIOR_EPS = 1e-6
"""Floor of the class frequencies before the log (a class absent from the training split gets log 1e-6)."""


# ---------------------------------------------------------------------------------------------------------------
# Training statistics
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainStats:
    """Label statistics of the training split (see the module docstring for the formulas).

    Attributes:
        class_pixel_fraction: ``pi_k``, K floats summing to 1 (over labelled pixels).
        class_pixels: ``n_k``, K integers.
        n_images: training images read.
        n_defect_images: images with at least one defect pixel (``a_i > 0``).
        defect_area_q1, defect_area_median, defect_area_q3: quartiles of ``a_i`` over those images (None when
            there are none).
        source: where the statistics come from (``"train split"``).
    """

    class_pixel_fraction: tuple[float, ...]
    class_pixels: tuple[int, ...]
    n_images: int
    n_defect_images: int
    defect_area_q1: float | None
    defect_area_median: float | None
    defect_area_q3: float | None
    source: str = "train split"

    @property
    def num_classes(self) -> int:
        return len(self.class_pixel_fraction)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (and ``torch.load(weights_only=True)``-safe) dict; :meth:`TrainStats.from_dict` inverts it."""
        d = asdict(self)
        d["class_pixel_fraction"] = list(self.class_pixel_fraction)
        d["class_pixels"] = list(self.class_pixels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainStats:
        return cls(
            class_pixel_fraction=tuple(float(v) for v in d["class_pixel_fraction"]),
            class_pixels=tuple(int(v) for v in d["class_pixels"]),
            n_images=int(d["n_images"]), n_defect_images=int(d["n_defect_images"]),
            defect_area_q1=None if d.get("defect_area_q1") is None else float(d["defect_area_q1"]),
            defect_area_median=None if d.get("defect_area_median") is None else float(d["defect_area_median"]),
            defect_area_q3=None if d.get("defect_area_q3") is None else float(d["defect_area_q3"]),
            source=str(d.get("source", "train split")),
        )


def _masks(dataset: Any) -> Any:
    """The dataset's masks, ``(H, W)`` integer tensors/arrays, without augmentation."""
    masks = getattr(dataset, "masks", None)
    if masks is not None:  # smelib.data.InMemorySegDataset
        yield from masks
        return
    raw = getattr(dataset, "raw", None)
    for i in range(len(dataset)):
        if raw is not None:  # the datasets of smelib.data: undecorated (image, mask)
            yield raw(i)[1]
        else:
            from smelib.data.loading import unpack

            yield unpack(dataset[i])[1]


def training_stats(dataset: Any, num_classes: int, ignore_index: int = 255) -> TrainStats:
    """Class pixel frequencies and defect-area quartiles of a (training) dataset.

    Args:
        dataset: the training subset: a :mod:`smelib.data` dataset (masks read without augmentation), or any
            sequence of ``(image, mask)`` items / dicts with a ``mask``.
        num_classes: K; mask values >= K (``ignore_index`` among them) are not counted.
        ignore_index: listed for clarity; it is >= K in every supported dataset and so never counted.

    Returns:
        :class:`TrainStats`. Pure counting: no random number is drawn.
    """
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    total = np.zeros(k, dtype=np.int64)
    areas: list[float] = []
    n = 0
    for mask in _masks(dataset):
        arr = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        arr = arr.astype(np.int64, copy=False).ravel()
        arr = arr[(arr >= 0) & (arr < k) & (arr != ignore_index)]
        counts = np.bincount(arr, minlength=k)[:k]
        total += counts
        n += 1
        labelled = int(counts.sum())
        if labelled:
            areas.append(float(counts[1:].sum()) / labelled)
    labelled_all = int(total.sum())
    if labelled_all == 0:
        raise ValueError("the training split has no labelled pixel: its class frequencies are undefined")
    defect = np.asarray([a for a in areas if a > 0], dtype=np.float64)
    q1 = med = q3 = None
    if defect.size:
        q1, med, q3 = (float(v) for v in np.quantile(defect, [0.25, 0.5, 0.75]))
    return TrainStats(
        class_pixel_fraction=tuple(float(c) / labelled_all for c in total),
        class_pixels=tuple(int(c) for c in total),
        n_images=n, n_defect_images=int(defect.size),
        defect_area_q1=q1, defect_area_median=med, defect_area_q3=q3,
    )


def _as_stats(stats: TrainStats | Mapping[str, Any] | None) -> TrainStats | None:
    if stats is None or isinstance(stats, TrainStats):
        return stats
    return TrainStats.from_dict(stats)


# ---------------------------------------------------------------------------------------------------------------
# (a) Dataset-adaptive initialisation
# ---------------------------------------------------------------------------------------------------------------


def _floored(fractions: Sequence[float] | Tensor, eps: float = PRIOR_EPS) -> Tensor:
    """``pit = max(pi, eps) / sum(max(pi, eps))`` as float64 ``(K,)``."""
    pi = torch.as_tensor(fractions, dtype=torch.float64).reshape(-1)
    if pi.numel() < 2 or not bool(torch.isfinite(pi).all()) or bool((pi < 0).any()) or float(pi.sum()) <= 0:
        raise ValueError(f"class frequencies must be >= 2 finite non-negative numbers with a positive sum, "
                         f"got {pi.tolist()}")
    pi = pi.clamp_min(eps)
    return pi / pi.sum()


def class_prior_bias(fractions: Sequence[float] | Tensor, eps: float = PRIOR_EPS) -> Tensor:
    """``b_k = log pit_k`` (float32 ``(K,)``): the bias whose softmax is the (floored) class prior."""
    return _floored(fractions, eps).log().to(torch.float32)


def class_weights(fractions: Sequence[float] | Tensor, scheme: str = "inverse_sqrt",
                  eps: float = PRIOR_EPS) -> list[float] | None:
    """Loss class weights from class frequencies; None for ``scheme="none"``.

    ``inverse_sqrt``: ``w_k = pit_k^(-1/2) / sum_j pit_j^(1/2)``, so that ``sum_k pit_k w_k = 1``.
    """
    if scheme == "none":
        return None
    if scheme != "inverse_sqrt":
        raise ValueError(f"class weight scheme must be one of {', '.join(CLASS_WEIGHT_SCHEMES)}, got {scheme!r}")
    pi = _floored(fractions, eps)
    w = pi.rsqrt() / pi.sqrt().sum()
    return [float(v) for v in w]


def find_classifier(model: nn.Module, num_classes: int) -> tuple[str, nn.Conv2d]:
    """The model's final classifier: the ``nn.Conv2d`` with ``num_classes`` outputs and a bias.

    Preference: a unique such conv whose name ends in ``classifier`` (every DeepLabV3+ here:
    ``decoder.classifier``), else the unique such conv (the baselines' ``head.N``).

    Raises:
        ValueError: none, or several that cannot be told apart (the message lists them).
    """
    convs = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.bias is not None]
    named = [(n, m) for n, m in convs if n.split(".")[-1] == "classifier"]
    for group in (named, convs):
        if len(group) == 1:
            return group[0]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d with {num_classes} outputs and a bias to "
                         "initialise with the class prior")
    raise ValueError(f"{type(model).__name__} has several Conv2d with {num_classes} outputs "
                     f"({', '.join(n for n, _ in convs)}); cannot tell which is the classifier")


@torch.no_grad()
def init_classifier_prior(model: nn.Module, fractions: Sequence[float] | Tensor,
                          eps: float = PRIOR_EPS) -> tuple[str, list[float]]:
    """Set the classifier's bias to ``log pit`` in place (see the module docstring); touch nothing else.

    Args:
        model: a segmentation model whose classifier :func:`find_classifier` finds.
        fractions: ``pi_k``, K class pixel frequencies of the training split.

    Returns:
        ``(classifier module name, the bias values set)``.
    """
    k = len(torch.as_tensor(fractions).reshape(-1))
    name, conv = find_classifier(model, k)
    bias = class_prior_bias(fractions, eps)
    assert conv.bias is not None
    conv.bias.copy_(bias.to(device=conv.bias.device, dtype=conv.bias.dtype))
    return name, [float(v) for v in bias]


def apply_model_init(cfg: Mapping[str, Any], model: nn.Module, stats: TrainStats) -> dict[str, Any]:
    """Apply ``cfg["model_init"]`` to a freshly built model; return what was done (for the run record).

    With every option off this does nothing (and returns ``{"classifier_prior": None, "class_weights": None}``).
    """
    mi = cfg.get("model_init") or {}
    done: dict[str, Any] = {"classifier_prior": None, "class_weights": loss_class_weights(cfg, stats)}
    if mi.get("classifier_prior"):
        name, bias = init_classifier_prior(model, stats.class_pixel_fraction)
        done["classifier_prior"] = {"module": name, "bias": bias}
    return done


def loss_class_weights(cfg: Mapping[str, Any], stats: TrainStats) -> list[float] | None:
    """The loss's class weights ``cfg["model_init"]["class_weights"]`` asks for (None: ``none``)."""
    scheme = (cfg.get("model_init") or {}).get("class_weights", "none")
    return class_weights(stats.class_pixel_fraction, scheme)


# ---------------------------------------------------------------------------------------------------------------
# (b) The decision rule: argmax, static or dynamic threshold on the defect probability
# ---------------------------------------------------------------------------------------------------------------


def _check_probs(probs: Tensor) -> None:
    if probs.dim() != 4 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, K, H, W) with K >= 2, got shape {tuple(probs.shape)}")


def _defect_mask(probs: Tensor, tau: Tensor) -> Tensor:
    """``(1 - tau) d > tau p_0`` per pixel, ``(N, H, W)`` bool; ``tau`` is ``(N,)``."""
    t = tau.to(probs.dtype).view(-1, 1, 1)
    d = probs[:, 1:].sum(1)
    return (1 - t) * d > t * probs[:, 0]


def defect_area(probs: Tensor, tau: float | Tensor) -> Tensor:
    """``s_i``: the fraction of each image's pixels called defect at threshold ``tau``, float32 ``(N,)``.

    Args:
        probs: ``(N, K, H, W)`` probabilities.
        tau: a threshold, or ``(N,)`` thresholds.
    """
    _check_probs(probs)
    t = torch.as_tensor(tau, dtype=probs.dtype, device=probs.device).expand(probs.shape[0])
    return _defect_mask(probs, t).flatten(1).float().mean(1)


@dataclass(frozen=True)
class DecisionRule:
    """How probabilities become class labels (see the module docstring for the math).

    Attributes:
        mode: ``argmax``, ``static`` or ``dynamic``.
        tau0: the static threshold, and the dynamic rule's base and provisional threshold, in (0, 1).
        slope: how far the dynamic rule moves tau per unit of (large share - small share), >= 0.
        tau_min, tau_max: the dynamic threshold's bounds, 0 <= tau_min <= tau_max <= 1.
        scope: ``image`` (each image its own tau) or ``batch`` (one tau per inference batch).
        small: below this provisional defect area fraction an image counts as small (the training q1).
        large: above this it counts as large (the training q3). Both required by ``dynamic``.
    """

    mode: str = "argmax"
    tau0: float = 0.5
    slope: float = 0.2
    tau_min: float = 0.05
    tau_max: float = 0.95
    scope: str = "image"
    small: float | None = None
    large: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {self.mode!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"threshold scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not 0.0 < float(self.tau0) < 1.0:
            raise ValueError(f"tau0 must be in (0, 1), got {self.tau0!r}")
        if float(self.slope) < 0:
            raise ValueError(f"slope must be >= 0, got {self.slope!r}")
        if not 0.0 <= float(self.tau_min) <= float(self.tau_max) <= 1.0:
            raise ValueError(f"threshold bounds must satisfy 0 <= min <= max <= 1, got [{self.tau_min}, "
                             f"{self.tau_max}]")
        if self.mode == "dynamic":
            if self.small is None or self.large is None:
                raise ValueError("the dynamic threshold needs the training split's defect-area quartiles "
                                 "(small = q1, large = q3); none are known (no defect pixel in training?)")
            if not 0.0 <= float(self.small) <= float(self.large) <= 1.0:
                raise ValueError(f"small/large defect areas must satisfy 0 <= small <= large <= 1, got "
                                 f"{self.small}, {self.large}")

    def thresholds(self, probs: Tensor) -> Tensor:
        """tau per image, float32 ``(N,)`` (for ``argmax``: NaN, no threshold is used).

        Args:
            probs: ``(N, K, H, W)`` probabilities of one batch (``scope: batch`` pools over it).
        """
        _check_probs(probs)
        n = probs.shape[0]
        if self.mode == "argmax":
            return torch.full((n,), float("nan"), device=probs.device)
        tau0 = torch.full((n,), float(self.tau0), device=probs.device)
        if self.mode == "static":
            return tau0
        s = defect_area(probs, tau0)
        small = (s < float(self.small)).float()  # type: ignore[arg-type]
        large = (s > float(self.large)).float()  # type: ignore[arg-type]
        z = large - small if self.scope == "image" else (large.mean() - small.mean()).expand(n)
        return (tau0 + float(self.slope) * z).clamp(float(self.tau_min), float(self.tau_max))

    def __call__(self, probs: Tensor) -> Tensor:
        """Labels ``(N, H, W)`` int64 for probabilities ``(N, K, H, W)``."""
        return decide(probs, self)

    def to_dict(self) -> dict[str, Any]:
        """The rule's parameters (only ``{"mode": "argmax"}`` for argmax, which has none)."""
        return {"mode": "argmax"} if self.mode == "argmax" else asdict(self)


def decide(probs: Tensor, rule: DecisionRule | None = None) -> Tensor:
    """Class labels ``(N, H, W)`` int64 from probabilities ``(N, K, H, W)`` under ``rule`` (None: argmax)."""
    if rule is None or rule.mode == "argmax":
        return probs.argmax(1)
    tau = rule.thresholds(probs)
    fg = _defect_mask(probs, tau)
    cls = probs[:, 1:].argmax(1) + 1
    return torch.where(fg, cls, torch.zeros_like(cls))


_THRESHOLD_DEFAULTS: dict[str, Any] = {"tau0": 0.5, "slope": 0.2, "min": 0.05, "max": 0.95, "scope": "image"}


def rule_from_config(eval_cfg: Mapping[str, Any], stats: TrainStats | Mapping[str, Any] | None = None,
                     mode: str | None = None, tau0: float | None = None) -> DecisionRule:
    """The :class:`DecisionRule` of a config's ``eval`` section.

    Args:
        eval_cfg: ``cfg["eval"]`` (``decision`` and ``threshold: {tau0, slope, min, max, scope}``; missing keys
            take the defaults, so older configs work).
        stats: the training statistics (their defect-area quartiles; needed by ``dynamic`` only).
        mode, tau0: override ``eval.decision`` / ``eval.threshold.tau0`` (the CLI's ``--threshold``/``--tau0``).

    Raises:
        ValueError: an invalid value, or ``dynamic`` without training statistics.
    """
    th = {**_THRESHOLD_DEFAULTS, **dict(eval_cfg.get("threshold") or {})}
    mode = mode or eval_cfg.get("decision") or "argmax"
    s = _as_stats(stats)
    if mode == "dynamic" and s is None:
        raise ValueError("the dynamic threshold needs the training split's statistics (train_stats)")
    return DecisionRule(
        mode=mode, tau0=float(th["tau0"] if tau0 is None else tau0), slope=float(th["slope"]),
        tau_min=float(th["min"]), tau_max=float(th["max"]), scope=str(th["scope"]),
        small=s.defect_area_q1 if s is not None else None, large=s.defect_area_q3 if s is not None else None,
    )


def rule_for_checkpoint(meta: Mapping[str, Any], mode: str | None = None, tau0: float | None = None,
                        train_dataset: Any | Callable[[], Any] = None) -> DecisionRule:
    """The decision rule of a checkpoint (its config's ``eval`` section, ``mode``/``tau0`` overriding).

    The dynamic rule's quartiles come from the checkpoint's ``train_stats``; a checkpoint written before
    they were stored needs ``train_dataset`` (its training subset, or a function returning it), which is then
    counted here.

    Args:
        meta: the checkpoint dict (or the ``meta`` of :func:`smelib.checkpoint.load_checkpoint`).
    """
    cfg = meta.get("config") or {}
    eval_cfg = cfg.get("eval") or {}
    chosen = mode or eval_cfg.get("decision") or "argmax"
    stats: Any = meta.get("train_stats")
    if chosen == "dynamic" and stats is None:
        if train_dataset is None:
            raise ValueError("this checkpoint stores no training statistics (written before smelib.mechanisms); "
                             "the dynamic threshold needs its training split: use `smelib eval`, which reads it")
        dataset = train_dataset() if callable(train_dataset) and not hasattr(train_dataset, "__len__") \
            else train_dataset
        num_classes = int(meta.get("num_classes") or cfg.get("data", {}).get("num_classes") or 4)
        stats = training_stats(dataset, num_classes, int(cfg.get("data", {}).get("ignore_index", 255)))
    return rule_from_config(eval_cfg, stats, mode=chosen, tau0=tau0)
