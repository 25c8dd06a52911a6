"""Models: backbones, the paper's modules, DeepLabV3+, the baselines and two registries of named factories.

Where each piece lives:

- ``backbones/starnet.py``: StarNet and its :class:`~smelib.models.backbones.starnet.StarBlock` (the paper's
  backbone); ``backbones/mobilenetv2.py``
  and ``backbones/xception.py``: the DeepLabV3+ baselines' backbones.
- ``msaa_ela.py``: MSAA and ELA, the paper's two added modules; ``aspp.py``: ASPP, the template's context module.
- ``heads.py``: the DeepLabV3+ decoder; ``deeplabv3plus.py``: the composed model and its named configurations.
- ``baselines/``: the paper's Table 1 networks that are not DeepLabV3+ (HRNet, PSPNet, Res-UNet).
- ``registry.py``: :func:`~smelib.models.registry.build` / :func:`~smelib.models.registry.names` for models,
  :func:`~smelib.models.registry.build_backbone` / :func:`~smelib.models.registry.backbone_names`.

>>> from smelib.models import build, names
>>> model = build("sme_deeplabv3plus", num_classes=4)
"""

# Importing the model files registers their factories (order: backbones before the models that use them).
from smelib.models.backbones import MobileNetV2Backbone, StarBlock, StarNet, XceptionBackbone, starnet
from smelib.models.aspp import ASPP
from smelib.models.msaa_ela import ELA, MSAA
from smelib.models.heads import DeepLabV3PlusDecoder
from smelib.models.deeplabv3plus import DeepLabV3Plus
from smelib.models.baselines import HRNet, PSPNet, ResUNet
from smelib.models.registry import backbone_names, build, build_backbone, names, register_backbone, register_model

__all__ = [
    "ASPP", "DeepLabV3Plus", "DeepLabV3PlusDecoder", "ELA", "HRNet", "MSAA", "MobileNetV2Backbone", "PSPNet",
    "ResUNet", "StarBlock", "StarNet", "XceptionBackbone", "backbone_names", "build", "build_backbone", "names",
    "register_backbone", "register_model", "starnet",
]
