"""Backbones: StarNet (the paper's), MobileNetV2 and Xception (its baselines' DeepLabV3+ backbones).

Every backbone has ``forward_features(x) -> list[Tensor]``, ``out_channels`` and ``reductions`` (strides).
"""

from smelib.models.backbones.mobilenetv2 import MobileNetV2Backbone
from smelib.models.backbones.starnet import STARNET_SPECS, STARNETS, StarBlock, StarNet, starnet
from smelib.models.backbones.xception import XceptionBackbone

__all__ = ["MobileNetV2Backbone", "STARNETS", "STARNET_SPECS", "StarBlock", "StarNet", "XceptionBackbone", "starnet"]
