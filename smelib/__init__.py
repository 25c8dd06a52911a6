"""smelib: SME-DeepLabV3+ (StarNet + MSAA + ELA) for steel surface defect segmentation.

The package is organised as the book is: :mod:`smelib.models` (backbones, attention modules, heads and a
registry of named configurations), :mod:`smelib.tools.flops` (parameter and FLOP counting), :mod:`smelib.data`
(NEU-Seg and VOC datasets, splits, augmentation), :mod:`smelib.losses`, :mod:`smelib.metrics`,
:mod:`smelib.training` (training and evaluation) and :mod:`smelib.cli` (the ``smelib`` command).
"""

from smelib.settings import data_root, quick_mode, repo_root

__version__ = "0.1.0"

__all__ = ["__version__", "data_root", "quick_mode", "repo_root"]
