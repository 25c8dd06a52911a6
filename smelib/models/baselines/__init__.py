"""The paper's Table 1 networks that are not DeepLabV3+: HRNet, PSPNet and Res-UNet (each registered by name)."""

from smelib.models.baselines.hrnet import HRNet
from smelib.models.baselines.pspnet import PSPNet
from smelib.models.baselines.resunet import ResUNet

__all__ = ["HRNet", "PSPNet", "ResUNet"]
