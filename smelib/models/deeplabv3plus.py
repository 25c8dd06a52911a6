"""DeepLabV3+ composed of backbone, context module, optional low-level attention, decoder and head; and the
named configurations of the SME-DeepLabV3+ paper (its model, its ablation rows and its baselines).

How the paper's model is wired (our reading, re-derived from its Table 2 in the book's FLOP chapter): a
StarNet-s4 backbone; the low-level feature is stage 0 (32 channels, stride 4); the high-level feature is
stage 3 (256 channels, stride 32), upsampled ×4 by two ×2 bilinear ``nn.Upsample`` modules so the context
module works at stride 8; the context module is MSAA (or ASPP, or ASPP then MSAA); ELA reweights the
low-level feature; then the DeepLabV3+ template's decoder (width 256, dropout 0.5 and 0.1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smelib.models.heads import DeepLabV3PlusDecoder
from smelib.models.aspp import ASPP
from smelib.models.msaa_ela import ELA, MSAA
from smelib.models.registry import build_backbone, register_model

CONTEXTS = ("aspp", "msaa", "aspp+msaa", "none")
ATTENTIONS = ("ela", "none")


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a pluggable backbone, context module and low-level attention.

    Args:
        backbone: name for :func:`~smelib.models.registry.build_backbone`.
        num_classes: classes including background.
        in_channels: image channels.
        context: ``"aspp"``, ``"msaa"``, ``"aspp+msaa"`` (ASPP followed by MSAA) or ``"none"`` (a 1x1 ConvBNReLU).
        attention: ``"ela"`` (ELA on the low-level feature) or ``"none"``.
        context_width: output channels of the context module (256 in the paper).
        decoder_width: width of the decoder's 3x3 convs (256 in the paper).
        low_level_width: width of the low-level projection (48 in DeepLabV3+).
        dropout: the decoder's two dropout rates.
        ela_variant: ``"T"``, ``"B"``, ``"S"`` or ``"L"``; ELA-B (kernel 7) by default, the paper naming 7x7.
        ela_gn_groups: override ELA's GroupNorm groups (``None``: the variant's).
        context_upsample: how many ×2 bilinear upsamplings run before the context module (2 for StarNet in the
            paper's wiring: stride 32 → 8); 0 for the dilated baselines.
        output_stride: stride of the dilated baselines' high-level feature (8 or 16).
        drop_path_rate: StarNet's stochastic depth.

    Shapes: ``(N, in_channels, H, W)`` → logits ``(N, num_classes, H, W)`` for any ``H, W`` ≥ 1.

    The ``sme_deeplabv3plus`` configuration is written out as one class in the book's chapter
    :ref:`chap-sme-deeplabv3plus` and checked equal to this class there.
    """

    def __init__(
        self,
        backbone: str = "starnet_s4",
        num_classes: int = 4,
        in_channels: int = 3,
        context: str = "msaa",
        attention: str = "ela",
        context_width: int = 256,
        decoder_width: int = 256,
        low_level_width: int = 48,
        dropout: tuple[float, float] = (0.5, 0.1),
        ela_variant: str = "B",
        ela_gn_groups: int | None = None,
        context_upsample: int | None = None,
        output_stride: int = 16,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.config = dict(backbone=backbone, num_classes=num_classes, in_channels=in_channels, context=context,
                           attention=attention, context_width=context_width, decoder_width=decoder_width,
                           low_level_width=low_level_width, dropout=tuple(dropout), ela_variant=ela_variant,
                           ela_gn_groups=ela_gn_groups,
                           context_upsample=context_upsample, output_stride=output_stride,
                           drop_path_rate=drop_path_rate)
        self.backbone = build_backbone(backbone, in_channels, output_stride, drop_path_rate)
        low_ch, high_ch = self.backbone.out_channels[0], self.backbone.out_channels[-1]
        high_stride = self.backbone.reductions[-1]
        if context_upsample is None:
            context_upsample = 2 if backbone.startswith("starnet_") else 0
        self.upsample = nn.Sequential(
            *[nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True) for _ in range(context_upsample)]
        )
        context_stride = max(1, high_stride // 2**context_upsample)

        if context == "aspp":
            self.context = ASPP(high_ch, context_width, output_stride=context_stride)
        elif context == "msaa":
            self.context = MSAA(high_ch, context_width)
        elif context == "aspp+msaa":
            self.context = nn.Sequential(ASPP(high_ch, context_width, context_stride),
                                         MSAA(context_width, context_width))
        else:
            self.context = nn.Sequential(
                nn.Conv2d(high_ch, context_width, 1), nn.BatchNorm2d(context_width), nn.ReLU(inplace=True)
            )
        self.low_attention = ELA(low_ch, ela_variant, ela_gn_groups) if attention == "ela" else nn.Identity()
        self.decoder = DeepLabV3PlusDecoder(context_width, low_ch, num_classes, decoder_width, low_level_width, dropout)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = self.backbone.forward_features(x)
        low, high = feats[0], feats[-1]
        context = self.context(self.upsample(high))
        logits = self.decoder(context, self.low_attention(low))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def _deeplab(num_classes: int, in_channels: int, defaults: dict[str, Any], overrides: dict[str, Any]) -> DeepLabV3Plus:
    return DeepLabV3Plus(num_classes=num_classes, in_channels=in_channels, **{**defaults, **overrides})


@register_model
def sme_deeplabv3plus(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """The paper's model: StarNet-s4 + MSAA + ELA, widths 256 (8.98 M parameters)."""
    return _deeplab(num_classes, in_channels, dict(backbone="starnet_s4", context="msaa", attention="ela"), overrides)


@register_model
def sme_deeplabv3plus_lite(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """The same design on a CPU budget: StarNet-s1, MSAA and decoder 96 wide, low-level projection 32.

    StarNet-s1's stage 0 has 24 channels, which no ELA variant's GroupNorm divides; ELA-B runs with
    GroupNorm(8) here.
    """
    defaults = dict(backbone="starnet_s1", context="msaa", attention="ela", context_width=96, decoder_width=96,
                    low_level_width=32, ela_gn_groups=8)
    return _deeplab(num_classes, in_channels, defaults, overrides)


@register_model
def starnet_msaa_ela(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """Table 3's "StarNet + MSAA + ELA" row: the same configuration as ``sme_deeplabv3plus``."""
    return sme_deeplabv3plus(num_classes, in_channels, **overrides)


@register_model
def starnet_msaa(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """StarNet-s4 + MSAA, no ELA."""
    return _deeplab(num_classes, in_channels, dict(backbone="starnet_s4", context="msaa", attention="none"), overrides)


@register_model
def starnet_aspp(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """StarNet-s4 + ASPP, no ELA (DeepLabV3+ with the backbone swapped)."""
    return _deeplab(num_classes, in_channels, dict(backbone="starnet_s4", context="aspp", attention="none"), overrides)


@register_model
def starnet_aspp_ela(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """StarNet-s4 + ASPP + ELA."""
    return _deeplab(num_classes, in_channels, dict(backbone="starnet_s4", context="aspp", attention="ela"), overrides)


@register_model
def starnet_aspp_msaa(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """StarNet-s4 + ASPP followed by MSAA: what the paper's Table 2 "StarNet + ASPP" row measured."""
    return _deeplab(num_classes, in_channels, dict(backbone="starnet_s4", context="aspp+msaa", attention="none"),
                    overrides)


@register_model
def deeplabv3plus_mobilenetv2(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """The DeepLabV3+ baseline with MobileNetV2 (output stride 16) and ASPP."""
    defaults = dict(backbone="mobilenetv2", context="aspp", attention="none", output_stride=16)
    return _deeplab(num_classes, in_channels, defaults, overrides)


@register_model
def deeplabv3plus_xception(num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> DeepLabV3Plus:
    """The DeepLabV3+ baseline with aligned Xception (output stride 16) and ASPP."""
    defaults = dict(backbone="xception", context="aspp", attention="none", output_stride=16)
    return _deeplab(num_classes, in_channels, defaults, overrides)
