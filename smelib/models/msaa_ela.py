"""The SME-DeepLabV3+ paper's two added modules: MSAA (multi-scale attention aggregation, from CM-UNet) and ELA
(efficient local attention), with the CBAM-style channel and spatial attention MSAA is built from.

Each is written from its source's description (see the book's "MSAA and ELA" chapter for the references and
for what the SME-DeepLabV3+ paper says these modules do that their design does not contain).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn



class ChannelAttention(nn.Module):
    """CBAM-style channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, shape ``(N, C, 1, 1)``.

    Written out in the book's chapter :ref:`chap-msaa-ela`.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention: ``sigmoid(conv7x7([mean_c(x), max_c(x)]))``, shape ``(N, 1, H, W)``.

    Written out in the book's chapter :ref:`chap-msaa-ela`.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.sigmoid(self.conv(pooled))


class MSAAFusion(nn.Module):
    """The fusion block of MSAA (CM-UNet's ``FusionConv``), on an already concatenated input.

    With ``d = out_channels // factor``: ``f = conv1x1(x)`` (to d); channel path ``fc = f · CA(f)``; spatial path
    ``fs = conv3x3(f) + conv5x5(f) + conv7x7(f)`` (full d→d convolutions), ``fs = fs · SA(fs)``; output
    ``conv1x1(fs + fc)`` (to ``out_channels``). No residual, normalisation or activation at the output.

    Shapes: ``(N, in_channels, H, W)`` → ``(N, out_channels, H, W)``. Written out in the book's chapter
    :ref:`chap-msaa-ela`.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int = 4) -> None:
        super().__init__()
        dim = out_channels // factor
        if dim < 1:
            raise ValueError(f"MSAA out_channels={out_channels} is too small for factor {factor}")
        self.dim = dim
        self.down = nn.Conv2d(in_channels, dim, 1)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2)
        self.conv7x7 = nn.Conv2d(dim, dim, 7, padding=3)
        self.channel_attention = ChannelAttention(dim)
        self.spatial_attention = SpatialAttention(7)
        self.up = nn.Conv2d(dim, out_channels, 1)
        # CM-UNet's FusionConv also defines a second 1x1 conv (`down_2`) that forward never uses; we leave it
        # out: it would add in_channels·d + d dead parameters (49,216 for the paper's 768 → 64).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.down(x)
        fc = f * self.channel_attention(f)
        fs = self.conv3x3(f) + self.conv5x5(f) + self.conv7x7(f)
        fs = fs * self.spatial_attention(fs)
        return self.up(fs + fc)


class MSAA(nn.Module):
    """Multi-scale attention aggregation (CM-UNet), in two forms.

    * ``num_inputs=3`` with a list of three features of ``in_channels`` each (CM-UNet's form: three encoder
      levels resized to one size and concatenated).
    * ``repeat=3`` (the form that matches the SME-DeepLabV3+ paper's parameter counts): one feature is
      concatenated with itself three times, so the fusion block sees ``3 · in_channels`` channels
      (256 → 768 → 64 → 256 in the paper's model).

    Shapes: ``(N, in_channels, H, W)`` (or a list of ``num_inputs`` such tensors, which must share H and W) →
    ``(N, out_channels, H, W)``.

    Written out (the one-input form) in the book's chapter :ref:`chap-msaa-ela` and checked equal to this class
    there and in ``tests/test_book_modules.py``.
    """

    def __init__(
        self, in_channels: int, out_channels: int = 256, num_inputs: int = 1, repeat: int = 3, factor: int = 4
    ) -> None:
        super().__init__()
        if num_inputs < 1 or repeat < 1:
            raise ValueError("MSAA needs num_inputs >= 1 and repeat >= 1")
        if num_inputs > 1 and repeat != 1:
            raise ValueError("MSAA repeats a single input; with num_inputs > 1 use repeat=1")
        self.num_inputs = num_inputs
        self.repeat = repeat
        self.fusion = MSAAFusion(in_channels * num_inputs * repeat, out_channels, factor)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        xs = [x] if isinstance(x, torch.Tensor) else list(x)
        if len(xs) != self.num_inputs:
            raise ValueError(f"MSAA expects {self.num_inputs} input(s), got {len(xs)}")
        return self.fusion(torch.cat(xs * self.repeat, dim=1))


#: ELA variants of Xu & Wan (2024), each with its kernel size, depthwise (groups = C) or C/8 groups, GroupNorm groups.
ELA_VARIANTS: dict[str, tuple[int, str, int]] = {
    "T": (5, "depthwise", 32),
    "B": (7, "depthwise", 16),
    "S": (5, "c/8", 16),
    "L": (7, "c/8", 16),
}


class ELA(nn.Module):
    """Efficient local attention (Xu & Wan 2024).

    Strip-pool ``x`` along each axis (mean over W gives ``(N, C, H)``, mean over H gives ``(N, C, W)``), pass
    both through the same ``Conv1d(C, C, k, groups=g) → GroupNorm(n, C) → sigmoid`` and rescale
    ``x · a_h · a_w`` by broadcasting. One kernel size per module; variants T/B/S/L fix ``(k, g, n)``.

    Shapes: ``(N, C, H, W)`` → ``(N, C, H, W)``. Written out (variant B) in the book's chapter
    :ref:`chap-msaa-ela` and checked equal to this class there and in ``tests/test_book_modules.py``.

    Args:
        channels: C.
        variant: ``"T"``, ``"B"``, ``"S"`` or ``"L"``.
        gn_groups: override the variant's GroupNorm groups (e.g. 8 for a 24-channel feature, which no variant
            divides); ``None`` keeps the variant's.

    Raises:
        ValueError: the GroupNorm groups (or Conv1d groups) do not divide ``channels``.
    """

    def __init__(self, channels: int, variant: str = "B", gn_groups: int | None = None) -> None:
        super().__init__()
        if variant not in ELA_VARIANTS:
            raise ValueError(f"unknown ELA variant {variant!r}; choose one of {', '.join(ELA_VARIANTS)}")
        k, grouping, variant_gn = ELA_VARIANTS[variant]
        gn_groups = variant_gn if gn_groups is None else gn_groups
        groups = channels if grouping == "depthwise" else channels // 8
        if groups < 1 or channels % groups:
            raise ValueError(f"ELA-{variant} needs channels divisible by 8, got {channels}")
        if channels % gn_groups:
            raise ValueError(
                f"ELA-{variant} uses GroupNorm({gn_groups}, C), which needs channels divisible by {gn_groups}; "
                f"got {channels}. Pass gn_groups that divides {channels}, pick another variant or change the width."
            )
        self.variant = variant
        self.conv = nn.Conv1d(channels, channels, k, padding=k // 2, groups=groups, bias=False)
        self.norm = nn.GroupNorm(gn_groups, channels)
        self.sigmoid = nn.Sigmoid()

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two attention strips for ``x`` ``(N, C, H, W)``: ``(N, C, H, 1)`` and ``(N, C, 1, W)``."""
        a_h = self.sigmoid(self.norm(self.conv(x.mean(dim=3))))
        a_w = self.sigmoid(self.norm(self.conv(x.mean(dim=2))))
        return a_h.unsqueeze(3), a_w.unsqueeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.attention(x)
        return x * a_h * a_w
