"""Small building blocks shared by the model files."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Sequential):
    """Conv2d (with bias) optionally followed by BatchNorm, as StarNet writes its layers.

    Input ``(N, in_ch, H, W)`` → output ``(N, out_ch, H', W')``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        with_bn: bool = True,
    ) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups))
        if with_bn:
            self.add_module("bn", nn.BatchNorm2d(out_ch))


class ConvBNReLU(nn.Sequential):
    """Conv2d + BatchNorm + ReLU (or ReLU6), the unit of the DeepLabV3+ template and the baselines.

    ``padding`` defaults to "same" for odd kernels: ``dilation * (kernel_size - 1) // 2``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        relu6: bool = False,
        padding: int | None = None,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias=bias),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
        )


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` during training.

    Input and output ``(N, ...)``; the survivors are scaled by ``1/(1-p)`` so the expectation is unchanged.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_weights(module: nn.Module) -> None:
    """Initialise a segmentation network trained from scratch.

    Convolutions: Kaiming-normal (fan-out, ReLU gain), bias 0. Linear: truncated normal, std 0.02, bias 0.
    Norm layers: weight 1, bias 0. Applied with ``model.apply(init_weights)``.
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
