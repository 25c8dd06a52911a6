"""Parameter and FLOP counting: the true counts, fvcore's multiply-adds, and the paper's (thop) convention.

Three conventions, because the literature mixes them:

* **True parameters**: every tensor in ``model.parameters()``.
* **fvcore multiply-adds** (:func:`smelib.models.complexity.fvcore_macs`): one per multiply-add of convolutions,
  matmuls and a few more ops; elementwise ops are skipped. With ``elementwise=True`` we register handles for the
  elementwise work that matters in these models — the star operation's and the attention modules' products
  (``aten::mul``), sigmoid, ReLU6 (``aten::hardtanh``) — one op per output element.
* **The paper's convention** (:func:`thop_count`): the DeepLabV3+ template's ``summary.py`` reports
  ``2 × thop.profile(...)`` multiply-adds as "GFLOPs" and thop's parameter count, at 1×3×512×512. We re-implement
  thop's rules (version 0.1.1.post2209072238) with forward hooks instead of depending on thop, so the rules are
  visible here; a test checks our counter against thop itself when thop is installed. thop counts only modules
  of registered types that ran (a conv's ops are out-elements × in/groups × kernel area, biases ignored;
  BatchNorm 4 ops per input element; bilinear ``nn.Upsample`` 11 per output element; adaptive average pooling
  (kernel + 1) per output element; ReLU, ReLU6, dropout, max-pooling zero), and their parameters; it misses
  functional calls (``F.interpolate``, ``torch.mean``, products), GroupNorm and Sigmoid entirely.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from smelib.models.complexity import count_params, fvcore_macs

# ---------------------------------------------------------------------------------------------------------------
# thop's rules
# ---------------------------------------------------------------------------------------------------------------

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_ZERO = (nn.ZeroPad2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Dropout, nn.PixelShuffle)
_UPSAMPLE_OPS = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 259, "trilinear": 31}


def _thop_rule(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """thop's op count for one call of ``m`` (``None``: thop has no rule, so neither ops nor params count)."""
    if isinstance(m, _CONVS):
        return float(y.numel() * (x.shape[1] // m.groups) * math.prod(m.weight.shape[2:]))
    if isinstance(m, _NORMS):
        affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
        return float(2 * x.numel() * (2 if affine else 1))
    if isinstance(m, nn.Linear):
        return float(m.in_features * y.numel())
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return float(y.numel())
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        kernel = math.prod(a / b for a, b in zip(x.shape[2:], y.shape[2:]))
        return float(int((kernel + 1) * y.numel()))
    if isinstance(m, nn.Upsample):  # also UpsamplingBilinear2d / UpsamplingNearest2d
        return float(y.numel() * _UPSAMPLE_OPS.get(m.mode, 0))
    if isinstance(m, nn.Softmax):
        n = x.shape[m.dim]
        return float((x.numel() // n) * (3 * n - 1))
    if isinstance(m, nn.PReLU):
        return float(x.numel())
    if isinstance(m, _ZERO) or type(m) is nn.Sequential:
        return 0.0
    return None


@dataclass
class ThopCount:
    """thop-style totals: multiply-adds and parameters of the modules thop sees, and a per-module breakdown."""

    macs: float
    params: int
    by_module: dict[str, float]

    @property
    def paper_gflops(self) -> float:
        """The paper's "GFLOPs", that is 2 × thop's multiply-adds / 1e9."""
        return 2 * self.macs / 1e9


def thop_count(model: nn.Module, inputs: torch.Tensor, depth: int = 1) -> ThopCount:
    """Count ``model`` on ``inputs`` with thop's rules (see the module docstring).

    Args:
        model: any module; put in eval mode for the count and restored afterwards.
        inputs: ``(N, C, H, W)``; the paper used ``(1, 3, 512, 512)``.
        depth: name depth of the breakdown (1: ``backbone``, ``context``, ...).

    Returns:
        :class:`ThopCount` (multiply-adds, not FLOPs: use ``paper_gflops`` for the paper's number).
    """
    ops: dict[nn.Module, float] = defaultdict(float)
    ran: set[nn.Module] = set()

    def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        count = _thop_rule(m, args[0], out)
        if count is not None:
            ops[m] += count
            ran.add(m)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    by_module: dict[str, float] = defaultdict(float)
    params = 0
    for name, m in model.named_modules():
        if m in ran:
            by_module[_prefix(name, depth)] += ops[m]
            # thop's parameter rule: a counted module's own parameters; Sequential containers are recursed into.
            if type(m) is not nn.Sequential:
                params += sum(p.numel() for p in m.parameters())
    return ThopCount(sum(ops.values()), params, dict(by_module))


def _prefix(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth]) or "(root)"


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CostReport:
    """All counts for one model at one input size; G = 1e9, M = 1e6."""

    model: str
    height: int
    width: int
    params_m_true: float
    params_m_paper_convention: float
    gflops_paper_convention: float
    gmacs_fvcore: float
    gmacs_fvcore_elementwise: float
    by_module_gmacs_fvcore: dict[str, float]
    by_module_gmacs_thop: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def cost_report(name: str, height: int = 512, width: int = 512, num_classes: int = 4, **overrides: Any) -> CostReport:
    """Count a registered model (:func:`smelib.models.registry.build`) on one ``(1, 3, height, width)`` input."""
    from smelib.models import build

    torch.manual_seed(0)
    model = build(name, num_classes=num_classes, **overrides)
    x = torch.zeros(1, model.config["in_channels"] if hasattr(model, "config") else 3, height, width)
    thop = thop_count(model, x)
    macs, by_module = fvcore_macs(model, x)
    macs_ew, _ = fvcore_macs(model, x, elementwise=True)
    return CostReport(
        model=name, height=height, width=width,
        params_m_true=count_params(model) / 1e6,
        params_m_paper_convention=thop.params / 1e6,
        gflops_paper_convention=thop.paper_gflops,
        gmacs_fvcore=macs / 1e9,
        gmacs_fvcore_elementwise=macs_ew / 1e9,
        by_module_gmacs_fvcore={k: v / 1e9 for k, v in by_module.items()},
        by_module_gmacs_thop={k: v / 1e9 for k, v in thop.by_module.items()},
    )
