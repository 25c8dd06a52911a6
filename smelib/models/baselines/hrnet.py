"""HRNetV2 for semantic segmentation (Wang et al. 2019, "Deep high-resolution representation learning for
visual recognition"), a Table 1 baseline.

HRNet keeps a stride-4 branch for the whole network and adds lower-resolution branches stage by stage (2, 3,
then 4 parallel branches at strides 4, 8, 16, 32), exchanging information between all of them after every
module ("repeated multi-resolution fusion"). HRNetV2's head upsamples every branch to stride 4, concatenates
them and classifies.

Size: the paper's segmentation model is HRNetV2-W48 (65.9 M parameters, ImageNet-pretrained). From scratch on
NEU-Seg and a CPU we use a W18-small-like configuration: branch widths 18-36-72-144, a stage 1 of 2
Bottlenecks (64 → 256, as HRNet-W18-small-v2), then 1 module per stage and 2 BasicBlocks per branch
(HRNet-W18-small-v2 repeats stage 3 three times and stage 4 twice; we keep one of each).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smelib.models.layers import ConvBNReLU, init_weights
from smelib.models.baselines.pspnet import BasicBlock
from smelib.models.registry import register_model


class Bottleneck(nn.Module):
    """ResNet's Bottleneck (expansion 4): ``1x1 → 3x3 → 1x1`` with BN, + shortcut, ReLU; HRNet's stage 1.

    Shapes: ``(N, in_ch, H, W)`` → ``(N, 4·mid_ch, H, W)``.
    """

    def __init__(self, in_ch: int, mid_ch: int) -> None:
        super().__init__()
        out_ch = 4 * mid_ch
        self.body = nn.Sequential(
            ConvBNReLU(in_ch, mid_ch, 1, bias=False),
            ConvBNReLU(mid_ch, mid_ch, 3, bias=False),
            nn.Conv2d(mid_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _downsample(in_ch: int, out_ch: int, steps: int) -> nn.Sequential:
    """``steps`` stride-2 3x3 conv+BN; ReLU after all but the last (which feeds a sum), width changes at the last.

    A 3x3 stride-2 conv with padding 1 maps ``H`` to ``ceil(H/2)``, as the transitions that created the
    branches did, so the result lands exactly on the target branch's size for any input size.
    """
    layers: list[nn.Module] = []
    for k in range(steps):
        if k == steps - 1:
            layers += [nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch)]
        else:
            layers.append(ConvBNReLU(in_ch, in_ch, 3, 2, bias=False))
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """One high-resolution module: BasicBlocks on every branch, then each output sums all branches resized to it.

    Fusion into branch ``i`` from branch ``j``: identity (``j = i``); 1x1 conv + BN then bilinear upsampling
    to branch ``i``'s exact size (``j > i``); ``i - j`` stride-2 3x3 convs (``j < i``). The sum goes through ReLU.

    Args:
        widths: channels of each branch, highest resolution first.
        blocks: BasicBlocks per branch.

    Shapes: a list of ``(N, widths[k], H_k, W_k)`` → a list of the same shapes.
    """

    def __init__(self, widths: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(w, w) for _ in range(blocks)]) for w in widths)
        fuse: list[nn.ModuleList] = []
        for i, wi in enumerate(widths):
            row: list[nn.Module] = []
            for j, wj in enumerate(widths):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(wj, wi, 1, bias=False), nn.BatchNorm2d(wi)))
                elif j < i:
                    row.append(_downsample(wj, wi, i - j))
                else:
                    row.append(nn.Identity())
            fuse.append(nn.ModuleList(row))
        self.fuse = nn.ModuleList(fuse)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                z = layer(xs[j])
                if j > i:
                    # Resize to the target's size, not by 2**(j-i): ceil-halving breaks the power-of-two ratio.
                    z = F.interpolate(z, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                y = y + z
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNetV2: stem (stride 4) → stage 1 (Bottlenecks) → stages with 2, 3, 4 branches → HRNetV2 head.

    Args:
        num_classes: classes including background.
        in_channels: image channels.
        width: width of the stride-4 branch; the others are ``2×, 4×, 8×`` (18 → 18-36-72-144).
        stem_width: channels of the two stride-2 stem convs and the Bottleneck mid-width of stage 1 (64).
        stage1_blocks: Bottlenecks of stage 1.
        blocks: BasicBlocks per branch in every module.
        modules_per_stage: HR modules in stages 2, 3, 4.
        head_width: channels of the head's 1x1 ConvBNReLU; ``None``: the concatenation's width (270 for W18),
            as HRNetV2's ``last_layer``.

    Shapes: ``(N, in_channels, H, W)`` → logits ``(N, num_classes, H, W)`` for any ``H, W`` ≥ 1.
    """

    def __init__(
        self,
        num_classes: int = 4,
        in_channels: int = 3,
        width: int = 18,
        stem_width: int = 64,
        stage1_blocks: int = 2,
        blocks: int = 2,
        modules_per_stage: tuple[int, int, int] = (1, 1, 1),
        head_width: int | None = None,
    ) -> None:
        super().__init__()
        self.config = dict(num_classes=num_classes, in_channels=in_channels, width=width, stem_width=stem_width,
                           stage1_blocks=stage1_blocks, blocks=blocks, modules_per_stage=tuple(modules_per_stage),
                           head_width=head_width)
        widths = tuple(width * 2**k for k in range(4))
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, stem_width, 3, 2, bias=False),
            ConvBNReLU(stem_width, stem_width, 3, 2, bias=False),
        )
        stage1_out = 4 * stem_width
        self.stage1 = nn.Sequential(
            *[Bottleneck(stem_width if k == 0 else stage1_out, stem_width) for k in range(stage1_blocks)]
        )
        # Transition into stage 2: both branches come from stage 1's single output.
        self.transition1 = nn.ModuleList([
            ConvBNReLU(stage1_out, widths[0], 3, bias=False),
            ConvBNReLU(stage1_out, widths[1], 3, 2, bias=False),
        ])
        # Later transitions only add a branch, from the lowest-resolution one: existing widths already match.
        self.transition2 = ConvBNReLU(widths[1], widths[2], 3, 2, bias=False)
        self.transition3 = ConvBNReLU(widths[2], widths[3], 3, 2, bias=False)
        self.stage2 = nn.Sequential(*[HRModule(widths[:2], blocks) for _ in range(modules_per_stage[0])])
        self.stage3 = nn.Sequential(*[HRModule(widths[:3], blocks) for _ in range(modules_per_stage[1])])
        self.stage4 = nn.Sequential(*[HRModule(widths, blocks) for _ in range(modules_per_stage[2])])
        concat = sum(widths)
        head_width = concat if head_width is None else head_width
        self.head = nn.Sequential(ConvBNReLU(concat, head_width, 1, bias=False),
                                  nn.Conv2d(head_width, num_classes, 1))
        self.num_classes = num_classes
        self.apply(init_weights)

    @staticmethod
    def _run(stage: nn.Sequential, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        for module in stage:
            xs = module(xs)
        return xs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.stage1(self.stem(x))
        xs = [t(y) for t in self.transition1]
        xs = self._run(self.stage2, xs)
        xs = self._run(self.stage3, xs + [self.transition2(xs[-1])])
        xs = self._run(self.stage4, xs + [self.transition3(xs[-1])])
        hi = xs[0].shape[-2:]
        feats = [xs[0]] + [F.interpolate(t, size=hi, mode="bilinear", align_corners=False) for t in xs[1:]]
        logits = self.head(torch.cat(feats, dim=1))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register_model
def hrnet(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> HRNet:
    """HRNetV2, W18-small-like: widths 18-36-72-144, stage 1 of 2 Bottlenecks, 1 module per stage, 2 BasicBlocks
    per branch, head 270 wide (2.1 M parameters, 1.15 G multiply-adds at 200×200)."""
    return HRNet(num_classes, in_channels, **overrides)
