"""Aligned Xception as the DeepLabV3+ template uses it (entry flow, 16 middle blocks, exit flow), torch only.

Every block is three depthwise-separable 3x3 convolutions with a 1x1 projection shortcut when the shape
changes; the last separable conv of a block carries the block's stride. The low-level feature for DeepLabV3+ is
taken inside the second entry block, after its second separable conv and before its stride (256 channels,
stride 4). Output stride 16 (default) or 8: the later strides become 1 and the middle and exit flows are dilated
by ``16 // output_stride``.
"""

from __future__ import annotations

import torch
from torch import nn

from smelib.models.registry import register_backbone
from smelib.models.layers import init_weights


class SeparableConv2d(nn.Module):
    """ReLU (if ``activate_first``) → depthwise 3x3 → BN → [ReLU] → pointwise 1x1 → BN → [ReLU].

    With ``activate_first`` the activation comes before the conv (pre-activation, inside blocks); otherwise
    after each BN (the exit flow's last three convs). Shapes: ``(N, in_ch, H, W)`` → ``(N, out_ch, H/s, W/s)``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, activate_first: bool = True
    ) -> None:
        super().__init__()
        self.activate_first = activate_first
        self.relu0 = nn.ReLU(inplace=False)
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, stride, dilation, dilation, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate_first:
            x = self.relu0(x)
        x = self.bn1(self.depthwise(x))
        if not self.activate_first:
            x = self.relu(x)
        x = self.bn2(self.pointwise(x))
        if not self.activate_first:
            x = self.relu(x)
        return x


class XceptionBlock(nn.Module):
    """Three separable convs (the last one strided) plus a shortcut; ``hook`` keeps the pre-stride feature.

    Shapes: ``(N, in_ch, H, W)`` → ``(N, out_ch, H/stride, W/stride)``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, grow_first: bool = True
    ) -> None:
        super().__init__()
        mid = out_ch if grow_first else in_ch
        self.skip: nn.Module | None = None
        if in_ch != out_ch or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.sepconv1 = SeparableConv2d(in_ch, mid, 1, dilation)
        self.sepconv2 = SeparableConv2d(mid, out_ch, 1, dilation)
        self.sepconv3 = SeparableConv2d(out_ch, out_ch, stride, dilation)

    def forward_with_hook(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and the feature before its strided conv."""
        skip = x if self.skip is None else self.skip(x)
        hook = self.sepconv2(self.sepconv1(x))
        return self.sepconv3(hook) + skip, hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hook(x)[0]


class XceptionBackbone(nn.Module):
    """Aligned Xception features; ``forward_features`` returns ``[low (N,256,H/4,W/4), high (N,2048,H/os,W/os)]``."""

    def __init__(self, in_channels: int = 3, output_stride: int = 16, middle_blocks: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"Xception output_stride must be 8 or 16, got {output_stride}")
        strides = (2, 2, 1) if output_stride == 16 else (2, 1, 1)
        rate = 16 // output_stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        )
        self.block1 = XceptionBlock(64, 128, 2)
        self.block2 = XceptionBlock(128, 256, strides[0])
        self.block3 = XceptionBlock(256, 728, strides[1])
        self.middle = nn.Sequential(*[XceptionBlock(728, 728, 1, rate) for _ in range(middle_blocks)])
        self.exit_block = XceptionBlock(728, 1024, strides[2], rate, grow_first=False)
        self.exit_convs = nn.Sequential(
            SeparableConv2d(1024, 1536, 1, rate, activate_first=False),
            SeparableConv2d(1536, 1536, 1, rate, activate_first=False),
            SeparableConv2d(1536, 2048, 1, rate, activate_first=False),
        )
        self.out_channels = [256, 2048]
        self.reductions = [4, output_stride]
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x (N, C, H, W)`` → ``[low (N, 256, ⌈H/4⌉, ⌈W/4⌉), high (N, 2048, ⌈H/os⌉, ⌈W/os⌉)]``."""
        x = self.block1(self.stem(x))
        x, low = self.block2.forward_with_hook(x)
        x = self.middle(self.block3(x))
        return [low, self.exit_convs(self.exit_block(x))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)


@register_backbone("xception")
def _xception(in_channels: int = 3, output_stride: int = 16, drop_path_rate: float = 0.0) -> XceptionBackbone:
    return XceptionBackbone(in_channels, output_stride)
