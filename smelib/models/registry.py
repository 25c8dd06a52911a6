"""A registry of named model configurations.

Each configuration is a small factory function decorated with :func:`register_model`; :func:`build` looks it up
by name and passes ``num_classes``, ``in_channels`` and any overrides through. Names are the vocabulary of the
whole project: configs, run records and the book all refer to models by these names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` under its ``__name__``; a second registration of the same name is an error."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def names() -> list[str]:
    """All registered configuration names, sorted."""
    _import_all()
    return sorted(_REGISTRY)


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
    _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **overrides)


def _import_all() -> None:
    # Importing the model files runs their @register_model decorators.
    from smelib.models import deeplabv3plus, hrnet, pspnet, resunet  # noqa: F401
