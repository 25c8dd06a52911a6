"""Models: backbones, context/attention modules, heads and a registry of named configurations.

>>> from smelib.models import build, names
>>> model = build("sme_deeplabv3plus", num_classes=4)
"""

from smelib.models.backbones import MobileNetV2Backbone, StarBlock, StarNet, XceptionBackbone, starnet
from smelib.models.deeplabv3plus import DeepLabV3Plus, build_backbone
from smelib.models.heads import DeepLabV3PlusDecoder
from smelib.models.modules import ASPP, ELA, MSAA
from smelib.models.registry import build, names, register_model

__all__ = [
    "ASPP", "DeepLabV3Plus", "DeepLabV3PlusDecoder", "ELA", "MSAA", "MobileNetV2Backbone", "StarBlock", "StarNet",
    "XceptionBackbone", "build", "build_backbone", "names", "register_model", "starnet",
]
