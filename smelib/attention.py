"""Reading the attention of MSAA and ELA out of a DeepLabV3+ model with forward hooks.

>>> from smelib.attention import attention_maps
>>> maps = attention_maps(model, images)        # images: (N, 3, H, W) normalised
>>> maps["ela"].shape, maps["msaa_spatial"].shape   # (N, H/4, W/4), (N, H/8, W/8) for StarNet

The model must have ``low_attention`` (an :class:`~smelib.models.modules.ELA`) and ``context`` (an
:class:`~smelib.models.modules.MSAA`, whose ``fusion`` holds the channel and spatial attention), as the SME
DeepLabV3+ models of :mod:`smelib.models.deeplabv3plus` do. Nothing in the model is changed; the hooks are removed
before returning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from smelib.models.modules import ELA, MSAA

__all__ = ["attention_maps", "ela_map", "spatial_mass", "upsample_map"]


def ela_map(a_h: Tensor, a_w: Tensor, top_k: int | None = None) -> Tensor:
    """The 2-D ELA attention ``a_h ⊗ a_w`` averaged over channels.

    Args:
        a_h: ``(N, C, H, 1)`` (or ``(N, C, H)``) attention along the height.
        a_w: ``(N, C, 1, W)`` (or ``(N, C, W)``) attention along the width.
        top_k: average only over the ``top_k`` channels whose map varies most over space (per image);
            None averages over all channels.

    Returns:
        ``(N, H, W)`` in ``(0, 1)``.
    """
    if a_h.ndim == 3:
        a_h = a_h.unsqueeze(3)
    if a_w.ndim == 3:
        a_w = a_w.unsqueeze(2)
    full = a_h * a_w  # (N, C, H, W)
    if top_k is None or top_k >= full.shape[1]:
        return full.mean(dim=1)
    spread = full.flatten(2).std(dim=2)  # (N, C)
    idx = spread.topk(top_k, dim=1).indices  # (N, k)
    chosen = torch.gather(full, 1, idx[:, :, None, None].expand(-1, -1, *full.shape[-2:]))
    return chosen.mean(dim=1)


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor, top_k: int | None = None) -> dict[str, Tensor]:
    """Run ``model`` once and collect its ELA and MSAA attention.

    Args:
        model: a DeepLabV3+ with ``low_attention`` (ELA) and ``context`` (MSAA); used in its current mode
            (call ``.eval()`` first).
        images: ``(N, C, H, W)`` normalised images on the model's device.
        top_k: passed to :func:`ela_map`.

    Returns:
        A dict of CPU float32 tensors:

        * ``"ela"``: ``(N, h4, w4)``, the channel-averaged ``a_h ⊗ a_w`` over the stride-4 feature;
        * ``"ela_h"``, ``"ela_w"``: ``(N, C4, h4)`` and ``(N, C4, w4)``, the two strips;
        * ``"msaa_channel"``: ``(N, d)``, the channel attention of MSAA's fusion block (``d = width / 4``);
        * ``"msaa_spatial"``: ``(N, h8, w8)``, the output of its :class:`SpatialAttention` (stride 8 for StarNet);
        * ``"logits"``: ``(N, K, H, W)``, the model's output.

    Raises:
        TypeError: the model has no ELA ``low_attention`` or no MSAA ``context``.
    """
    ela = getattr(model, "low_attention", None)
    msaa = getattr(model, "context", None)
    if not isinstance(ela, ELA) or not isinstance(msaa, MSAA):
        raise TypeError("attention_maps needs a model with an ELA `low_attention` and an MSAA `context`")
    got: dict[str, Any] = {}

    def on_ela(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        got["ela_hw"] = module.attention(inputs[0])  # type: ignore[operator]

    def on_channel(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        got["msaa_channel"] = output

    def on_spatial(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        got["msaa_spatial"] = output

    handles = [
        ela.register_forward_hook(on_ela),
        msaa.fusion.channel_attention.register_forward_hook(on_channel),
        msaa.fusion.spatial_attention.register_forward_hook(on_spatial),
    ]
    try:
        logits = model(images)
    finally:
        for h in handles:
            h.remove()
    a_h, a_w = got["ela_hw"]
    return {
        "ela": ela_map(a_h, a_w, top_k).float().cpu(),
        "ela_h": a_h.squeeze(3).float().cpu(),
        "ela_w": a_w.squeeze(2).float().cpu(),
        "msaa_channel": got["msaa_channel"].flatten(1).float().cpu(),
        "msaa_spatial": got["msaa_spatial"].squeeze(1).float().cpu(),
        "logits": logits.float().cpu(),
    }


def upsample_map(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize maps ``(N, h, w)`` to ``(N, *size)`` (for overlays on the input image)."""
    return torch.nn.functional.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def spatial_mass(m: Tensor, level: float | None = None) -> Tensor:
    """How much of each map is "on": the mean value (``level=None``) or the fraction of cells above ``level``.

    Args:
        m: ``(N, h, w)`` maps in ``[0, 1]``.
        level: a threshold, or None.

    Returns:
        ``(N,)``.
    """
    if level is None:
        return m.flatten(1).mean(dim=1)
    return (m.flatten(1) > level).float().mean(dim=1)
