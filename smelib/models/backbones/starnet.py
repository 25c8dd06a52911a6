"""StarNet (Ma et al., "Rewrite the Stars", CVPR 2024), on torch alone.

A StarNet stage is a stride-2 3x3 ConvBN followed by star blocks. A star block fuses two 1x1 projections of the
same input by an elementwise product, ``ReLU6(f1(x)) * f2(x)``, which is what gives the network an implicit
high-dimensional (quadratic) feature space at the width of a narrow CNN; the book's "star operation" chapter
derives this.

Seven variants are registered by size (``starnet_s050`` ... ``starnet_s4``). Segmentation models use
``features_only=True``: no classifier, and :meth:`StarNet.forward_features` returns the four stage outputs at
strides 4, 8, 16 and 32 (optionally the stem's, stride 2, first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from smelib.models.layers import ConvBN, DropPath
from smelib.models.registry import register_backbone

STEM_WIDTH = 32  # every variant


@dataclass(frozen=True)
class StarNetSpec:
    """One StarNet variant: stage-0 width (doubling per stage), blocks per stage, MLP ratio."""

    base: int
    depths: tuple[int, int, int, int]
    mlp_ratio: int


#: The official variants (sizes with a 1000-class head are s1 2.9 M, s2 3.7 M, s3 5.8 M, s4 7.5 M parameters).
STARNET_SPECS: dict[str, StarNetSpec] = {
    "s050": StarNetSpec(16, (1, 1, 3, 1), 3),
    "s100": StarNetSpec(20, (1, 2, 4, 1), 4),
    "s150": StarNetSpec(24, (1, 2, 4, 2), 3),
    "s1": StarNetSpec(24, (2, 2, 8, 3), 4),
    "s2": StarNetSpec(32, (1, 2, 6, 2), 4),
    "s3": StarNetSpec(32, (2, 2, 8, 4), 4),
    "s4": StarNetSpec(32, (3, 3, 12, 5), 4),
}


class StarBlock(nn.Module):
    """The star block: dw7x7+BN → (f1, f2) 1x1 → ReLU6(f1)·f2 → g 1x1+BN → dw7x7 → drop-path → +x.

    Input and output ``(N, dim, H, W)``. Written out in the book's chapter :ref:`chap-starnet`, together with a
    StarNet stage, and checked equal to this class there and in ``tests/test_book_modules.py``.
    """

    def __init__(self, dim: int, mlp_ratio: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = mlp_ratio * dim
        self.dwconv = ConvBN(dim, dim, 7, 1, 3, groups=dim, with_bn=True)
        self.f1 = ConvBN(dim, hidden, 1, with_bn=False)
        self.f2 = ConvBN(dim, hidden, 1, with_bn=False)
        self.g = ConvBN(hidden, dim, 1, with_bn=True)
        self.dwconv2 = ConvBN(dim, dim, 7, 1, 3, groups=dim, with_bn=False)
        self.act = nn.ReLU6()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def star(self, x: torch.Tensor) -> torch.Tensor:
        """The star operation on ``(N, dim, H, W)``: ``ReLU6(f1(x)) * f2(x)``, shape ``(N, r·dim, H, W)``."""
        return self.act(self.f1(x)) * self.f2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.star(self.dwconv(x))
        y = self.dwconv2(self.g(y))
        return x + self.drop_path(y)


class StarNet(nn.Module):
    """StarNet backbone or classifier.

    Args:
        base: width of stage 0; stage i has ``base * 2**i`` channels.
        depths: star blocks per stage.
        mlp_ratio: expansion ``r`` of the star block's f1/f2.
        in_channels: image channels.
        num_classes: classifier classes; ignored when ``features_only``.
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0 over the blocks.
        features_only: build no classifier (norm, pool and head); for segmentation backbones.

    Shapes: ``forward`` maps ``(N, in_channels, H, W)`` to logits ``(N, num_classes)`` (classifier) or to the
    list of :meth:`forward_features` (``features_only``).
    """

    def __init__(
        self,
        base: int = 32,
        depths: tuple[int, ...] = (3, 3, 12, 5),
        mlp_ratio: int = 4,
        in_channels: int = 3,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
    ) -> None:
        super().__init__()
        self.features_only = features_only
        self.stem = nn.Sequential(ConvBN(in_channels, STEM_WIDTH, 3, 2, 1), nn.ReLU6())
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        in_ch, cur = STEM_WIDTH, 0
        self.out_channels: list[int] = []
        for i, depth in enumerate(depths):
            width = base * 2**i
            blocks = [StarBlock(width, mlp_ratio, dpr[cur + j]) for j in range(depth)]
            self.stages.append(nn.Sequential(ConvBN(in_ch, width, 3, 2, 1), *blocks))
            self.out_channels.append(width)
            in_ch, cur = width, cur + depth
        #: Strides of the stage outputs, aligned with ``out_channels``.
        self.reductions = [4, 8, 16, 32]
        if not features_only:
            self.norm = nn.BatchNorm2d(in_ch)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(in_ch, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official code writes `isinstance(m, nn.Linear or nn.Conv2d)`, which only ever tests Linear and
        # leaves convolutions at PyTorch's default; we apply the intended truncated normal to both, as timm
        # does. Unlike timm we also zero the convolution biases, as the official code does for Linear.
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, return_stem: bool = False) -> list[torch.Tensor]:
        """Stage outputs for ``x`` of shape ``(N, C, H, W)``.

        Returns:
            ``[s4, s8, s16, s32]`` with shapes ``(N, base·2**i, ⌈H/2**(i+2)⌉, ⌈W/2**(i+2)⌉)``; with
            ``return_stem`` the stem's ``(N, 32, ⌈H/2⌉, ⌈W/2⌉)`` comes first.
        """
        x = self.stem(x)
        feats = [x] if return_stem else []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feats = self.forward_features(x)
        if self.features_only:
            return feats
        y = self.avgpool(self.norm(feats[-1])).flatten(1)
        return self.head(y)


def _starnet(variant: str) -> Callable[..., StarNet]:
    spec = STARNET_SPECS[variant]

    def factory(**kwargs: object) -> StarNet:
        return StarNet(spec.base, spec.depths, spec.mlp_ratio, **kwargs)  # type: ignore[arg-type]

    factory.__name__ = f"starnet_{variant}"
    factory.__doc__ = f"StarNet-{variant}: base {spec.base}, depths {spec.depths}, ratio {spec.mlp_ratio}."
    return factory


#: Backbone factories by name (``starnet_s1`` ... ); keyword arguments go to :class:`StarNet`.
STARNETS: dict[str, Callable[..., StarNet]] = {f"starnet_{v}": _starnet(v) for v in STARNET_SPECS}


def _register_features(variant: str) -> None:
    # Segmentation backbones: the stage outputs (features_only), every variant under its registry name.
    @register_backbone(f"starnet_{variant}")
    def factory(in_channels: int = 3, output_stride: int = 16, drop_path_rate: float = 0.0) -> StarNet:
        return starnet(variant, in_channels=in_channels, features_only=True, drop_path_rate=drop_path_rate)


for _variant in STARNET_SPECS:
    _register_features(_variant)


def starnet(variant: str, **kwargs: object) -> StarNet:
    """Build StarNet-``variant`` (``"s050"``, ``"s100"``, ``"s150"``, ``"s1"`` ... ``"s4"``)."""
    if variant not in STARNET_SPECS:
        raise KeyError(f"unknown StarNet variant {variant!r}; known: {', '.join(STARNET_SPECS)}")
    return STARNETS[f"starnet_{variant}"](**kwargs)
