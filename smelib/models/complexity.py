"""What a model costs: its true parameter count and fvcore's multiply-adds (the count run records store).

The paper's own convention (thop's rules, ``2 x`` multiply-adds called "GFLOPs") and the per-model reports are in
:mod:`smelib.tools.flops`.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ELEMENTWISE_OPS", "count_params", "fvcore_macs"]



def _elementwise(inputs: list[Any], outputs: list[Any]) -> float:
    from fvcore.nn.jit_handles import get_shape

    return float(math.prod(get_shape(outputs[0])))


#: The elementwise ops fvcore skips that carry the star operation and the attention modules.
ELEMENTWISE_OPS: dict[str, Callable[[list[Any], list[Any]], float]] = {
    op: _elementwise for op in ("aten::mul", "aten::mul_", "aten::sigmoid", "aten::sigmoid_", "aten::hardtanh",
                                "aten::hardtanh_")
}


def fvcore_macs(
    model: nn.Module, inputs: torch.Tensor, elementwise: bool = False, depth: int = 1
) -> tuple[float, dict[str, float]]:
    """fvcore's multiply-add count of ``model`` on ``inputs`` (eval mode), total and per module.

    Args:
        model: any traceable module.
        inputs: ``(N, C, H, W)``.
        elementwise: also count the ops of :data:`ELEMENTWISE_OPS`, one per output element.
        depth: name depth of the breakdown.
    """
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # fvcore counts through torch.jit tracing, which this torch deprecates and which warns about
            # shape-dependent Python branches: neither is the caller's to act on.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            from fvcore.nn import FlopCountAnalysis  # its import scripts a loss with torch.jit

            analysis = FlopCountAnalysis(model, inputs)
            if elementwise:
                analysis.set_op_handle(**ELEMENTWISE_OPS)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = float(analysis.total())
            by_module: dict[str, float] = defaultdict(float)
            for name, count in analysis.by_module().items():
                if name and name.count(".") == depth - 1:
                    by_module[name] += float(count)
    finally:
        model.train(was_training)
    return total, dict(by_module)


def count_params(model: nn.Module) -> int:
    """Every parameter tensor's elements (the true count)."""
    return sum(p.numel() for p in model.parameters())
