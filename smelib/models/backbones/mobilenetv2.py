"""MobileNetV2 (Sandler et al. 2018) as the DeepLabV3+ template uses it: features only, dilated to OS 16 or 8.

The template drops the final 1x1 conv to 1280, takes the low-level feature after the first stride-4 block
(24 channels) and the high-level one after the last inverted residual (320 channels). For output stride 16 the
strided conv of the last downsampling stage becomes stride 1 with dilation 2 in its blocks; for output stride
8 the last two downsampling stages do so (dilations 2 and 4).
"""

from __future__ import annotations

import torch
from torch import nn

from smelib.models.registry import register_backbone
from smelib.models.layers import ConvBNReLU, init_weights

#: (expansion t, channels c, repeats n, stride s) of MobileNetV2's inverted residual stages.
MOBILENETV2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) → 3x3 depthwise (ReLU6) → 1x1 linear project; residual when shapes allow.

    Shapes: ``(N, in_ch, H, W)`` → ``(N, out_ch, H/stride, W/stride)``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(in_ch, hidden, 1, bias=False, relu6=True))
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, dilation, groups=hidden, bias=False, relu6=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features; ``forward_features`` returns ``[low (N,24,H/4,W/4), high (N,320,H/os,W/os)]``."""

    def __init__(self, in_channels: int = 3, output_stride: int = 16, width_mult: float = 1.0) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"MobileNetV2 output_stride must be 8 or 16, got {output_stride}")
        c0 = int(32 * width_mult)
        self.low = nn.Sequential(ConvBNReLU(in_channels, c0, 3, 2, bias=False, relu6=True))
        self.high = nn.Sequential()
        in_ch, stride_now, dilation, index = c0, 2, 1, 0
        for t, c, n, s in MOBILENETV2_SETTINGS:
            out_ch = int(c * width_mult)
            for i in range(n):
                stride, block_dilation = (s if i == 0 else 1), dilation
                if stride == 2 and stride_now >= output_stride:
                    # the template's `_nostride_dilate`: keep the resolution, dilate the following blocks
                    stride, dilation = 1, dilation * 2
                stride_now *= stride
                # the template's low-level feature is `features[:4]`: the stem and the first three blocks
                (self.low if index < 3 else self.high).append(
                    InvertedResidual(in_ch, out_ch, stride, t, block_dilation)
                )
                in_ch, index = out_ch, index + 1
        self.out_channels = [int(24 * width_mult), in_ch]
        self.reductions = [4, output_stride]
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x (N, C, H, W)`` → ``[low (N, 24, ⌈H/4⌉, ⌈W/4⌉), high (N, 320, ⌈H/os⌉, ⌈W/os⌉)]``."""
        low = self.low(x)
        return [low, self.high(low)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)


@register_backbone("mobilenetv2")
def _mobilenetv2(in_channels: int = 3, output_stride: int = 16, drop_path_rate: float = 0.0) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(in_channels, output_stride)
