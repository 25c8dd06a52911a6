"""Two registries of named factories: whole models and backbones.

Each model configuration is a small factory function decorated with :func:`register_model`; :func:`build` looks
it up by name and passes ``num_classes``, ``in_channels`` and any overrides through. Names are the vocabulary of
the whole project: configs, run records and the book all refer to models by these names.

Backbones register the same way (:func:`register_backbone`), so :func:`build_backbone` has no list of its own:
adding a backbone file adds its names. Importing :mod:`smelib.models` imports every model file, which fills both
registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}
_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def _register(table: dict[str, Callable[..., nn.Module]], kind: str, fn: Callable[..., nn.Module],
              name: str | None = None) -> Callable[..., nn.Module]:
    name = name or fn.__name__
    if name in table:
        raise ValueError(f"{kind} {name!r} is registered twice")
    table[name] = fn
    return fn


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` under its ``__name__``; a second registration of the same name is an error."""
    return _register(_REGISTRY, "model", fn)


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a backbone factory ``f(in_channels, output_stride, drop_path_rate) -> nn.Module`` under ``name``.

    The module it returns has ``forward_features(x) -> list[Tensor]``, ``out_channels`` and ``reductions``.
    """
    return lambda fn: _register(_BACKBONES, "backbone", fn, name)


def names() -> list[str]:
    """All registered configuration names, sorted."""
    return sorted(_REGISTRY)


def backbone_names() -> list[str]:
    """All registered backbone names, sorted."""
    return sorted(_BACKBONES)


def build(name: str, num_classes: int = 4, in_channels: int = 3, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`names`, e.g. ``"sme_deeplabv3plus"``.
        num_classes: output channels of the segmentation head (NEU-Seg: 4, background included).
        in_channels: image channels (3 for RGB or replicated grayscale, 1 for raw grayscale).
        **overrides: keyword arguments of the configuration's factory, e.g. ``decoder_width=64``.

    Returns:
        A freshly initialised ``nn.Module`` mapping ``(N, in_channels, H, W)`` to ``(N, num_classes, H, W)``.

    Raises:
        KeyError: unknown name; the message lists the registered names.
        TypeError: an override the configuration does not accept.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **overrides)


def build_backbone(name: str, in_channels: int = 3, output_stride: int = 16, drop_path_rate: float = 0.0) -> nn.Module:
    """A segmentation backbone by name (:func:`backbone_names`: ``starnet_<variant>``, ``mobilenetv2``,
    ``xception``).

    ``output_stride`` applies to the dilated backbones; StarNet always reaches stride 32 and ignores it.
    ``drop_path_rate`` applies to StarNet only.

    Raises:
        KeyError: unknown name; the message lists the registered backbones.
    """
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered backbones: {', '.join(sorted(_BACKBONES))}")
    return _BACKBONES[name](in_channels=in_channels, output_stride=output_stride, drop_path_rate=drop_path_rate)
