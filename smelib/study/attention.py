"""Reading the attention of MSAA and ELA out of a DeepLabV3+ model with forward hooks.

>>> from smelib.study.attention import attention_maps
>>> maps = attention_maps(model, images)        # images: (N, 3, H, W) normalised
>>> maps["ela"].shape, maps["msaa_spatial"].shape   # (N, H/4, W/4), (N, H/8, W/8) for StarNet

The model must have ``low_attention`` (an :class:`~smelib.models.msaa_ela.ELA`) and ``context`` (an
:class:`~smelib.models.msaa_ela.MSAA`, whose ``fusion`` holds the channel and spatial attention), as the SME
DeepLabV3+ models of :mod:`smelib.models.deeplabv3plus` do. Nothing in the model is changed; the hooks are removed
before returning.

The rest serves the book's MSAA/ELA chapter: :func:`pick_by_class` and :func:`load_batch` pick and load test
images, :func:`attention_figure` and :func:`channel_attention_figure` draw the maps, and
:func:`collect_attention_stats` with :func:`size_correlation_table` and :func:`mass_vs_area_figure` relate the
attention to defect size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from smelib.data import defect_class
from smelib.models.msaa_ela import ELA, MSAA

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from smelib.data import DatasetInfo
    from smelib.study.tables import Table

__all__ = [
    "STAT_KEYS", "attention_figure", "attention_maps", "channel_attention_figure", "collect_attention_stats",
    "defect_attention_stats", "defect_class", "ela_map", "iter_batches", "load_batch", "mass_vs_area_figure",
    "pearson_spearman", "pick_by_class", "size_correlation_table", "spatial_mass", "to_gray", "upsample_map",
]


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
        * ``"msaa_spatial"``: ``(N, h8, w8)``, the output of its :class:`~smelib.models.msaa_ela.SpatialAttention`
          (stride 8 for StarNet);
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


# ----------------------------------------------------------------------------------------------------------
# Book helpers: picking and loading test images, the attention figures, and attention against defect size


def load_batch(
    info: DatasetInfo, ids: Sequence[str], normalization: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Images and masks of ``ids`` as a batch.

    Args:
        info: the dataset (:func:`smelib.data.dataset.open_dataset`).
        ids: sample ids of ``info``, all of one image size.
        normalization: a checkpoint's ``normalization`` (``{"mean": [...], "std": [...]}``); None or missing keys
            use NEU-Seg's statistics (:func:`smelib.data.loading.normalize_image`).

    Returns:
        ``(N, 3, H, W)`` float images, normalised, and ``(N, H, W)`` int64 masks.
    """
    from smelib.data import read_mask
    from smelib.data.loading import normalize_image

    norm = normalization or {}
    x = torch.stack([normalize_image(info.image_paths[s], mean=norm.get("mean"), std=norm.get("std")) for s in ids])
    m = torch.stack([read_mask(info.mask_paths[s]) for s in ids]).long()
    return x, m


def iter_batches(
    info: DatasetInfo, ids: Sequence[str], normalization: Mapping[str, Any] | None = None, batch_size: int = 32,
) -> Iterator[tuple[Tensor, Tensor]]:
    """:func:`load_batch` over ``ids`` in consecutive chunks of ``batch_size`` (the last may be shorter)."""
    for i in range(0, len(ids), batch_size):
        yield load_batch(info, ids[i:i + batch_size], normalization)


def pick_by_class(
    info: DatasetInfo, ids: Sequence[str], num_classes: int, per_class: int = 2,
) -> dict[int, list[str]]:
    """The first ``per_class`` ids (in the order of ``ids``) whose dominant defect class is each of
    ``1 .. num_classes - 1`` (:func:`defect_class`); a class with fewer such images gets fewer.

    Args:
        info: the dataset, for the mask files.
        ids: candidate sample ids.
        num_classes: number of classes, background included.
        per_class: how many ids to pick per defect class.

    Returns:
        defect class index -> picked ids.
    """
    from smelib.data import read_mask

    by_class: dict[int, list[str]] = {k: [] for k in range(1, num_classes)}
    for sid in ids:
        k = defect_class(read_mask(info.mask_paths[sid]).long())
        if k in by_class and len(by_class[k]) < per_class:
            by_class[k].append(sid)
        if all(len(v) == per_class for v in by_class.values()):
            break
    return by_class


def to_gray(images: Tensor, normalization: Mapping[str, Any] | None = None) -> np.ndarray:
    """Undo the normalisation of the first channel: ``(N, C, H, W)`` float -> ``(N, H, W)`` uint8 gray.

    ``normalization`` as in :func:`load_batch`; its first mean and std are used (NEU-Seg's when missing).
    """
    from smelib.data import NEU_SEG_MEAN, NEU_SEG_STD

    norm = normalization or {}
    mean = norm.get("mean", NEU_SEG_MEAN)[0]
    std = norm.get("std", NEU_SEG_STD)[0]
    # numpy(force=True) here and below: images and maps may live on a GPU (copied to the host, detached)
    return (images[:, 0] * std + mean).clamp(0, 1).mul(255).byte().numpy(force=True)


def attention_figure(
    images: Tensor,
    masks: Tensor,
    maps: Mapping[str, Tensor],
    ids: Sequence[str],
    class_index: int,
    class_name: str,
    normalization: Mapping[str, Any] | None = None,
) -> Figure:
    """One row per image: the ground truth over the image, then ELA's and MSAA's spatial attention over it.

    Each heat map (``magma``) is upsampled to the image size and scaled to its own range, printed in its
    title and at the ends of its colour bar; the defect's outline is drawn in the colour of ``class_index``
    (:data:`smelib.palette.CLASS_COLORS`).

    Args:
        images: ``(N, 3, H, W)`` normalised images, as given to :func:`attention_maps`.
        masks: ``(N, H, W)`` class indices.
        maps: :func:`attention_maps` of ``images`` (``"ela"`` ``(N, h4, w4)``, ``"msaa_spatial"`` ``(N, h8, w8)``).
        ids: the ``N`` sample ids (their last path part titles the rows).
        class_index, class_name: the defect class shown (outline colour and figure title).
        normalization: as in :func:`load_batch`, to recover the gray image.

    Returns:
        The figure: ``N × 3`` image axes and one colour bar per heat map (``5 N`` axes in all).
    """
    import matplotlib.pyplot as plt

    from smelib.study.data_figures import rgb01
    from smelib.palette import overlay

    size = (int(images.shape[-2]), int(images.shape[-1]))
    ela_up = upsample_map(maps["ela"], size)
    sa_up = upsample_map(maps["msaa_spatial"], size)
    he, we = maps["ela"].shape[-2:]
    hs, ws = maps["msaa_spatial"].shape[-2:]
    grays = to_gray(images, normalization)
    fig, axes = plt.subplots(len(ids), 3, figsize=(6.5, 2.3 * len(ids)), dpi=110, squeeze=False)
    for i, sid in enumerate(ids):
        axes[i, 0].imshow(overlay(grays[i], masks[i].numpy(force=True), alpha=0.45))
        axes[i, 0].set_title(f"{sid.split('/')[-1]}: ground truth", fontsize=8)
        for j, (mp, name) in enumerate(((ela_up[i], f"ELA  a_h ⊗ a_w ({he} × {we})"),
                                        (sa_up[i], f"MSAA spatial attention ({hs} × {ws})")), start=1):
            ax = axes[i, j]
            ax.imshow(grays[i], cmap="gray")
            lo, hi = float(mp.min()), float(mp.max())
            im = ax.imshow(mp.numpy(force=True), cmap="magma", alpha=0.6, vmin=lo, vmax=hi)
            ax.contour(masks[i].numpy(force=True) > 0, levels=[0.5], colors=[rgb01(class_index)], linewidths=0.8)
            # .3g keeps tiny ranges readable (MSAA's spatial attention can be ~1e-10); two labelled ticks and no
            # offset text keep the colour bar's labels from overlapping the axes
            ax.set_title(f"{name}\nrange {lo:.3g} to {hi:.3g}", fontsize=7)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=[lo, hi])
            cb.ax.set_yticklabels([f"{lo:.2g}", f"{hi:.2g}"])
            cb.ax.tick_params(labelsize=6)
            cb.set_label("attention", fontsize=6, labelpad=-2)
    for ax in axes.flat:
        ax.set_xlabel("x (px)", fontsize=7)
        ax.set_ylabel("y (px)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{class_name}: attention maps (contour: ground-truth defect)", fontsize=9)
    fig.tight_layout()
    return fig


def channel_attention_figure(channel: Mapping[int, Tensor], class_names: Sequence[str]) -> Figure:
    """Grouped bars of MSAA's channel attention, averaged over images, one colour per defect class.

    Args:
        channel: class index -> ``(N, d)`` channel attention (``attention_maps(...)["msaa_channel"]``) of that
            class's images; every entry has the same ``d``.
        class_names: names by class index (legend).

    Returns:
        A one-axes figure with ``d`` groups of ``len(channel)`` bars.
    """
    import matplotlib.pyplot as plt

    from smelib.study.data_figures import rgb01

    fig, ax = plt.subplots(figsize=(6.5, 3), dpi=110)
    d = next(iter(channel.values())).shape[1]
    width = 0.27
    for j, (k, a) in enumerate(channel.items()):
        ax.bar(np.arange(d) + (j - (len(channel) - 1) / 2) * width, a.mean(0).numpy(force=True), width, color=rgb01(k),
               label=class_names[k])
    ax.set(xlabel="MSAA fusion channel", ylabel="channel attention (sigmoid)", xticks=range(d),
           title="MSAA channel attention, mean over the shown images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: The keys of :func:`defect_attention_stats`: defect area fraction, dominant defect class, the mean of each map
#: (:func:`spatial_mass`), and each map's mean inside and outside the defect (at the image resolution).
STAT_KEYS: tuple[str, ...] = ("area", "cls", "sa_mass", "ela_mass", "sa_in", "sa_out", "ela_in", "ela_out")


def defect_attention_stats(maps: Mapping[str, Tensor], masks: Tensor, ignore_index: int = 255) -> dict[str, list]:
    """Per-image attention against the ground-truth defect, for one batch.

    Args:
        maps: :func:`attention_maps` of the batch (``"ela"`` ``(N, h4, w4)``, ``"msaa_spatial"`` ``(N, h8, w8)``).
        masks: ``(N, H, W)`` class indices; the maps are upsampled to ``(H, W)`` for the inside/outside means.
        ignore_index: the label of unlabelled pixels (not defect: they count as outside).

    Returns:
        One list of ``N`` values per key of :data:`STAT_KEYS` (``"sa"``: MSAA spatial attention, ``"ela"``: ELA's
        ``a_h ⊗ a_w``; ``_in``/``_out``: mean over defect / non-defect pixels, an empty side counted as 1 pixel).
    """
    fg = ((masks > 0) & (masks != ignore_index)).float()
    n_fg, n_bg = fg.flatten(1).sum(1).clamp(min=1), (1 - fg).flatten(1).sum(1).clamp(min=1)
    size = (int(masks.shape[-2]), int(masks.shape[-1]))
    sa, el = upsample_map(maps["msaa_spatial"], size), upsample_map(maps["ela"], size)
    return {
        "area": fg.flatten(1).mean(1).tolist(),
        "cls": [defect_class(m, ignore_index) for m in masks],
        "sa_mass": spatial_mass(maps["msaa_spatial"]).tolist(),
        "ela_mass": spatial_mass(maps["ela"]).tolist(),
        "sa_in": ((sa * fg).flatten(1).sum(1) / n_fg).tolist(),
        "sa_out": ((sa * (1 - fg)).flatten(1).sum(1) / n_bg).tolist(),
        "ela_in": ((el * fg).flatten(1).sum(1) / n_fg).tolist(),
        "ela_out": ((el * (1 - fg)).flatten(1).sum(1) / n_bg).tolist(),
    }


def collect_attention_stats(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, np.ndarray]:
    """:func:`defect_attention_stats` over batches ``(images (N, 3, H, W), masks (N, H, W))`` (e.g.
    :func:`iter_batches`), concatenated: one array per key of :data:`STAT_KEYS`, one value per image."""
    stats: dict[str, list] = {k: [] for k in STAT_KEYS}
    for x, m in batches:
        for k, v in defect_attention_stats(attention_maps(model, x), m).items():
            stats[k] += v
    return {k: np.array(v) for k, v in stats.items()}


def pearson_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Pearson's r and Spearman's rank correlation of two 1-D arrays (ranks by ``argsort``: ties broken by
    position, not averaged)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        return v.argsort().argsort().astype(float)

    return float(np.corrcoef(a, b)[0, 1]), float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def size_correlation_table(stats: Mapping[str, np.ndarray], class_names: Sequence[str], min_images: int = 3) -> Table:
    """Correlation of each attention's mass with the defect area fraction, over all images and per class.

    Args:
        stats: :func:`collect_attention_stats` output.
        class_names: names by class index (defect classes are ``1 ..``).
        min_images: groups with fewer images are left out.

    Returns:
        A :class:`smelib.study.tables.Table`, columns attention, images, n, Pearson r, Spearman ρ.
    """
    from smelib.study.tables import Table

    rows: list[list[Any]] = []
    groups = [(None, "all test images")] + [(k, class_names[k]) for k in range(1, len(class_names))]
    for key, label in (("sa_mass", "MSAA spatial attention"), ("ela_mass", "ELA a_h ⊗ a_w")):
        for k, name in groups:
            sel = np.ones(len(stats["area"]), bool) if k is None else stats["cls"] == k
            if sel.sum() >= min_images:
                p, s = pearson_spearman(stats["area"][sel], stats[key][sel])
                rows.append([label, name, int(sel.sum()), p, s])
    return Table(["attention", "images", "n", "Pearson r", "Spearman ρ"], rows, decimals=2,
                 title="mean attention vs defect area fraction")


def mass_vs_area_figure(stats: Mapping[str, np.ndarray], class_names: Sequence[str]) -> Figure:
    """Scatter of MSAA's spatial attention mass (log scale) against defect area (%), coloured by class.

    Args:
        stats: :func:`collect_attention_stats` output.
        class_names: names by class index; one scatter (and legend entry) per defect class ``1 ..``.
    """
    import matplotlib.pyplot as plt

    from smelib.study.data_figures import rgb01

    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=110)
    for k in range(1, len(class_names)):
        sel = stats["cls"] == k
        ax.scatter(100 * stats["area"][sel], stats["sa_mass"][sel], s=8, alpha=0.6, color=rgb01(k),
                   label=class_names[k])
    ax.set_yscale("log")
    ax.set(xlabel="defect area (% of the image)", ylabel="mean MSAA spatial attention",
           title="MSAA spatial attention mass vs defect size (test images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
