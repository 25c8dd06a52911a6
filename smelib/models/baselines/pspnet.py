"""PSPNet (Zhao et al. 2017, "Pyramid scene parsing network"), a Table 1 baseline.

A dilated ResNet keeps the last feature at output stride 8; the pyramid pooling module (PPM) averages it into
1×1, 2×2, 3×3 and 6×6 bins, reduces each to ``C/4`` channels, upsamples them back and concatenates them with
the feature; a 3x3 conv, dropout 0.1 and a 1x1 classifier predict at stride 8, upsampled to the input.

Our backbone is ResNet-18-sized (BasicBlocks, 2-2-2-2, widths 64-128-256-512), trained from scratch, with the
*deep stem* of PSPNet's own ResNet (three 3x3 convs, 32-32-64, then 3x3 max-pooling) instead of the 7x7 conv.
The paper's ResNet-50/101 and its ImageNet weights would be out of place here: nothing in this project is
pretrained, and NEU-Seg is a few thousand small images. The paper's auxiliary loss head on stage 3 is optional and off.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smelib.models.layers import ConvBNReLU, init_weights
from smelib.models.registry import register_model


class BasicBlock(nn.Module):
    """ResNet's BasicBlock with an optional dilation: ``conv3x3-BN-ReLU → conv3x3-BN``, + shortcut, ReLU.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first conv (and of the 1x1 projection shortcut).
        dilation: dilation of the first conv, which replaces a removed stride.
        dilation2: dilation of the second conv; defaults to ``dilation``.

    Shapes: ``(N, in_ch, H, W)`` → ``(N, out_ch, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1,
                 dilation2: int | None = None) -> None:
        super().__init__()
        dilation2 = dilation if dilation2 is None else dilation2
        self.conv1 = ConvBNReLU(in_ch, out_ch, 3, stride, dilation, bias=False)
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, dilation2, dilation2, bias=False),
                                   nn.BatchNorm2d(out_ch))
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class DilatedResNet(nn.Module):
    """A ResNet of BasicBlocks whose last stages trade stride for dilation (PSPNet's "dilated FCN").

    Args:
        in_channels: image channels.
        width: channels of stage 1; stages 2-4 double it each time (64 → 64-128-256-512).
        depths: BasicBlocks per stage (ResNet-18: 2, 2, 2, 2).
        output_stride: 8 (stages 3 and 4 dilated 2 and 4, as PSPNet) or 16 (stage 4 dilated 2).
        deep_stem: three 3x3 convs (PSPNet's ResNet) rather than one 7x7 conv.

    ``forward_features`` returns ``[stage3 (N, 4·width, H/os, W/os), stage4 (N, 8·width, H/os, W/os)]``.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, depths: tuple[int, ...] = (2, 2, 2, 2),
                 output_stride: int = 8, deep_stem: bool = True) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"PSPNet output_stride must be 8 or 16, got {output_stride}")
        if len(depths) != 4:
            raise ValueError(f"depths must have 4 entries, got {depths}")
        if deep_stem:
            self.stem = nn.Sequential(
                ConvBNReLU(in_channels, width // 2, 3, 2, bias=False),
                ConvBNReLU(width // 2, width // 2, 3, 1, bias=False),
                ConvBNReLU(width // 2, width, 3, 1, bias=False),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(ConvBNReLU(in_channels, width, 7, 2, bias=False), nn.MaxPool2d(3, 2, 1))
        widths = [width * 2**i for i in range(4)]
        strides = [1, 2, 2, 2]
        dilations = [1, 1, 1, 1]
        # Stride removed from the last stages becomes dilation so the receptive field still grows.
        if output_stride == 8:
            strides[2:], dilations[2:] = [1, 1], [2, 4]
        else:
            strides[3], dilations[3] = 1, 2
        stages: list[nn.Module] = []
        in_ch, prev_dilation = width, 1
        for w, n, s, d in zip(widths, depths, strides, dilations):
            # The first conv of a dilated stage keeps the previous dilation (as torchvision's
            # replace_stride_with_dilation): it sits where the stride used to be, on the coarser grid.
            blocks = [BasicBlock(in_ch, w, s, prev_dilation, d)]
            blocks += [BasicBlock(w, w, 1, d) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch, prev_dilation = w, d
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2:]


class PyramidPooling(nn.Module):
    """Pyramid pooling module: per bin size ``b``, adaptive avg-pool to ``b×b`` → 1x1 conv to ``reduced`` + BN +
    ReLU → bilinear upsample; the input and all branches are concatenated.

    Shapes: ``(N, in_ch, h, w)`` → ``(N, in_ch + len(bins)·reduced, h, w)``.
    """

    def __init__(self, in_ch: int, reduced: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_ch, reduced, 1, bias=False)) for b in bins
        )
        self.out_channels = in_ch + len(bins) * reduced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
                  for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """PSPNet: dilated ResNet → pyramid pooling → 3x3 ConvBNReLU + dropout → 1x1 classifier → upsample.

    Args:
        num_classes: classes including background.
        in_channels: image channels.
        width: stage-1 width of the backbone (64 for ResNet-18).
        depths: BasicBlocks per backbone stage.
        output_stride: 8 (the paper) or 16.
        deep_stem: PSPNet's three-conv stem (True) or the 7x7 one.
        bins: pyramid bin sizes (the paper: 1, 2, 3, 6).
        head_width: channels of the 3x3 conv after the concatenation; ``None``: ``C/2`` of the backbone's last
            feature (256 for ResNet-18), as the paper's 4096 → 512 is an eighth of its concatenation.
        dropout: dropout before the classifier (0.1).
        aux_head: add the paper's auxiliary classifier on stage 3 (weight 0.4 in the paper). Off by default;
            when on and training, ``forward`` returns ``(logits, aux_logits)``; the engine expects one tensor.

    Shapes: ``(N, in_channels, H, W)`` → logits ``(N, num_classes, H, W)`` for any ``H, W`` ≥ 1.
    """

    def __init__(
        self,
        num_classes: int = 4,
        in_channels: int = 3,
        width: int = 64,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        output_stride: int = 8,
        deep_stem: bool = True,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        head_width: int | None = None,
        dropout: float = 0.1,
        aux_head: bool = False,
    ) -> None:
        super().__init__()
        self.config = dict(num_classes=num_classes, in_channels=in_channels, width=width, depths=tuple(depths),
                           output_stride=output_stride, deep_stem=deep_stem, bins=tuple(bins),
                           head_width=head_width, dropout=dropout, aux_head=aux_head)
        self.backbone = DilatedResNet(in_channels, width, tuple(depths), output_stride, deep_stem)
        c3, c4 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        head_width = c4 // 2 if head_width is None else head_width
        self.ppm = PyramidPooling(c4, c4 // len(bins), tuple(bins))
        self.head = nn.Sequential(
            ConvBNReLU(self.ppm.out_channels, head_width, 3, bias=False),
            nn.Dropout(dropout),
            nn.Conv2d(head_width, num_classes, 1),
        )
        self.aux: nn.Module | None = None
        if aux_head:
            self.aux = nn.Sequential(ConvBNReLU(c3, c3 // 2, 3, bias=False), nn.Dropout(dropout),
                                     nn.Conv2d(c3 // 2, num_classes, 1))
        self.num_classes = num_classes
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        stage3, stage4 = self.backbone.forward_features(x)
        logits = F.interpolate(self.head(self.ppm(stage4)), size=size, mode="bilinear", align_corners=False)
        if self.aux is not None and self.training:
            aux = F.interpolate(self.aux(stage3), size=size, mode="bilinear", align_corners=False)
            return logits, aux
        return logits


@register_model
def pspnet(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> PSPNet:
    """PSPNet on a from-scratch dilated ResNet-18 (deep stem, output stride 8), PPM bins 1-2-3-6, head 256 wide
    (13.8 M parameters: the trunk 11.2 M, the PPM 0.26 M, the 3x3 head conv 2.4 M; 9.0 G multiply-adds at
    200×200, most of them in the dilated stage 4 at stride 8)."""
    return PSPNet(num_classes, in_channels, **overrides)
