"""ASPP, the context module of the DeepLabV3+ template (the paper's ablation baseline for MSAA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smelib.models.layers import ConvBNReLU


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling in the form of the DeepLabV3+ template.

    Five branches on the same input — a 1x1 conv, three 3x3 convs with dilation ``6r, 12r, 18r`` and a global
    average pool followed by a 1x1 conv — each with BN and ReLU, concatenated and fused by a 1x1 conv + BN + ReLU.
    ``r = 16 // output_stride`` ties the rates to the feature map's stride, as DeepLabV3 does.

    Shapes: ``(N, in_channels, H, W)`` → ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (4, 8, 16, 32):
            raise ValueError(f"ASPP output_stride must be 4, 8, 16 or 32, got {output_stride}")
        rate = max(1, 16 // output_stride)
        self.rates = (6 * rate, 12 * rate, 18 * rate)
        self.branch1 = ConvBNReLU(in_channels, out_channels, 1)
        self.branch2 = ConvBNReLU(in_channels, out_channels, 3, dilation=self.rates[0])
        self.branch3 = ConvBNReLU(in_channels, out_channels, 3, dilation=self.rates[1])
        self.branch4 = ConvBNReLU(in_channels, out_channels, 3, dilation=self.rates[2])
        self.branch5 = ConvBNReLU(in_channels, out_channels, 1)
        self.project = ConvBNReLU(5 * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = self.branch5(x.mean(dim=(2, 3), keepdim=True))
        pooled = F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=True)
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x), pooled]
        return self.project(torch.cat(branches, dim=1))
