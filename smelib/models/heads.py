"""The DeepLabV3+ decoder and segmentation head, in the template's form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smelib.models.layers import ConvBNReLU


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse the context features with the low-level features and predict classes at stride 4.

    The low-level feature goes through a 1x1 conv to ``low_level_width`` (48 in DeepLabV3+); the context feature
    is bilinearly resized to the low-level size (``align_corners=True``, as the template); the concatenation
    passes two 3x3 ConvBNReLU of ``width`` with dropout ``dropout[0]`` and ``dropout[1]``, then a 1x1 classifier.

    Shapes: ``context (N, context_channels, h, w)``, ``low (N, low_channels, H4, W4)`` →
    ``(N, num_classes, H4, W4)``.

    Written out in the book's chapter :ref:`chap-sme-deeplabv3plus` and checked equal to this class there and in
    ``tests/test_book_modules.py``.
    """

    def __init__(
        self,
        context_channels: int,
        low_channels: int,
        num_classes: int,
        width: int = 256,
        low_level_width: int = 48,
        dropout: tuple[float, float] = (0.5, 0.1),
    ) -> None:
        super().__init__()
        self.shortcut = ConvBNReLU(low_channels, low_level_width, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(context_channels + low_level_width, width, 3),
            nn.Dropout(dropout[0]),
            ConvBNReLU(width, width, 3),
            nn.Dropout(dropout[1]),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.shortcut(low)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([context, low], dim=1)))
