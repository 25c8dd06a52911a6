"""Block diagrams of the model's modules, drawn with matplotlib from the built modules themselves.

Every label that names a width, a kernel or a shape is read from the module passed in (or from a forward pass
through it), so a diagram cannot disagree with the code it shows. One colour language is used for all of them
and for the book's other figures: :data:`ROLE_COLORS`, built from the Okabe-Ito hues of
:data:`smelib.palette.CLASS_COLORS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from smelib.palette import CLASS_COLORS
from smelib.tools.inspection import trace_shapes


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


#: The colour of each role a box can play, the same in every diagram and chart of the book. Convolutions are sky
#: blue, attention orange, elementwise products and sums vermillion, pooling yellow, resampling reddish purple, the
#: backbone blue, the decoder bluish green, inputs and outputs gray.
ROLE_COLORS: dict[str, str] = {
    "conv": _hex(CLASS_COLORS[2]),
    "attention": _hex(CLASS_COLORS[1]),
    "product": _hex(CLASS_COLORS[4]),
    "pool": _hex(CLASS_COLORS[5]),
    "resample": _hex(CLASS_COLORS[7]),
    "backbone": _hex(CLASS_COLORS[6]),
    "decoder": _hex(CLASS_COLORS[3]),
    "io": "#999999",
}

_FONT = 10.5


def _tint(color: str, amount: float = 0.72) -> tuple[float, float, float]:
    """``color`` mixed with ``amount`` of white: a fill light enough for black text."""
    from matplotlib.colors import to_rgb

    return tuple(c + (1.0 - c) * amount for c in to_rgb(color))  # type: ignore[return-value]


class _Canvas:
    """Boxes, circles and arrows in data coordinates on one axis without frame."""

    def __init__(self, width: float, height: float, figsize: tuple[float, float], title: str | None = None) -> None:
        import matplotlib.pyplot as plt

        self.fig, self.ax = plt.subplots(figsize=figsize, dpi=110)
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height + (0.45 if title else 0.0))
        self.ax.set_aspect("equal")
        self.ax.axis("off")
        if title:
            self.ax.text(width / 2, height + 0.42, title, ha="center", va="top", fontsize=_FONT + 1.5)

    def box(self, x: float, y: float, w: float, h: float, text: str, role: str, size: float = _FONT) -> dict:
        """A rounded box centred at ``(x, y)``; returns its anchor points."""
        from matplotlib.patches import FancyBboxPatch

        color = ROLE_COLORS[role]
        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.12",
                                         facecolor=_tint(color), edgecolor=color, linewidth=1.4))
        self.ax.text(x, y, text, ha="center", va="center", fontsize=size, linespacing=1.25)
        return {"l": (x - w / 2, y), "r": (x + w / 2, y), "t": (x, y + h / 2), "b": (x, y - h / 2), "c": (x, y)}

    def op(self, x: float, y: float, symbol: str, r: float = 0.22) -> dict:
        """An elementwise operation (``×``, ``+``, ``⊗``) as a circle of radius ``r``."""
        from matplotlib.patches import Circle

        color = ROLE_COLORS["product"]
        self.ax.add_patch(Circle((x, y), r, facecolor=_tint(color, 0.55), edgecolor=color, linewidth=1.4))
        self.ax.text(x, y, symbol, ha="center", va="center", fontsize=_FONT + 3)
        return {"l": (x - r, y), "r": (x + r, y), "t": (x, y + r), "b": (x, y - r), "c": (x, y)}

    def arrow(self, *points: tuple[float, float], label: str | None = None, label_at: int = 0,
              offset: tuple[float, float] = (0.0, 0.12)) -> None:
        """A polyline through ``points`` with an arrow head at the end; ``label`` beside segment ``label_at``."""
        xs, ys = zip(*points)
        if len(points) > 2:
            self.ax.plot(xs[:-1], ys[:-1], color="#333333", linewidth=1.0)
        self.ax.annotate("", xy=points[-1], xytext=points[-2],
                         arrowprops=dict(arrowstyle="-|>", color="#333333", linewidth=1.0, shrinkA=0, shrinkB=0))
        if label:
            (x0, y0), (x1, y1) = points[label_at], points[label_at + 1]
            self.ax.text((x0 + x1) / 2 + offset[0], (y0 + y1) / 2 + offset[1], label, ha="center", va="bottom",
                         fontsize=_FONT - 1, color="#333333")

    def note(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        kwargs.setdefault("fontsize", _FONT - 0.5)
        kwargs.setdefault("color", "#333333")
        self.ax.text(x, y, text, **kwargs)

    def done(self) -> Any:
        self.fig.tight_layout(pad=0.2)
        return self.fig


def _conv_text(conv: nn.Module, name: str) -> str:
    """``name: k×k conv c_in→c_out`` (``dw`` when depthwise), read from an ``nn.Conv1d``/``nn.Conv2d``."""
    k = conv.kernel_size
    kernel = f"{k[0]}×{k[1]}" if len(k) == 2 else f"k={k[0]}"
    if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
        return f"{name}\n{kernel} depthwise\n{conv.in_channels} ch"
    return f"{name}\n{kernel} conv\n{conv.in_channels}→{conv.out_channels}"


def star_block_diagram(block: nn.Module) -> Any:
    """The star block ``block`` (a :class:`~smelib.models.backbones.starnet.StarBlock`) as a block diagram.

    Widths and kernels come from the block's layers; ``BN`` is shown where the layer has one.
    """
    def label(seq: nn.Module, name: str) -> str:
        return _conv_text(seq.conv, name) + (" + BN" if "bn" in seq._modules else "")

    d = block.dwconv.conv.in_channels
    c = _Canvas(12.6, 3.8, (9.0, 2.75), f"Star block, width d = {d}, ratio r = {block.f1.conv.out_channels // d}")
    y = 1.5
    x_in = c.box(0.55, y, 0.9, 0.6, f"x\n{d} ch", "io")
    dw = c.box(2.15, y, 1.85, 1.05, label(block.dwconv, "dwconv"), "conv")
    f1 = c.box(4.45, y + 0.95, 1.85, 1.0, label(block.f1, "f1"), "conv")
    f2 = c.box(4.45, y - 0.95, 1.85, 1.0, label(block.f2, "f2"), "conv")
    act = c.box(6.15, y + 0.95, 1.0, 0.55, "ReLU6", "conv")
    star = c.op(7.05, y, "×")
    g = c.box(8.4, y, 1.85, 1.05, label(block.g, "g"), "conv")
    dw2 = c.box(10.45, y, 1.85, 1.05, label(block.dwconv2, "dwconv2"), "conv")
    add = c.op(11.85, y, "+")
    c.arrow(x_in["r"], dw["l"])
    c.arrow(dw["r"], (3.35, y), (3.35, f1["l"][1]), f1["l"])
    c.arrow((3.35, y), (3.35, f2["l"][1]), f2["l"])
    c.arrow(f1["r"], act["l"])
    c.arrow(act["r"], (star["c"][0], act["r"][1]), star["t"])
    c.arrow(f2["r"], (star["c"][0], f2["r"][1]), star["b"])
    c.arrow(star["r"], g["l"])
    c.arrow(g["r"], dw2["l"])
    c.arrow(dw2["r"], add["l"])
    c.arrow(x_in["t"], (0.55, 3.55), (add["c"][0], 3.55), add["t"], label="identity (residual)", label_at=1,
            offset=(0.0, 0.02))
    c.arrow(add["r"], (12.5, y))
    return c.done()


def _stage_rows(backbone: nn.Module, image_size: int) -> list[tuple[str, int, int, int, int]]:
    """``(name, channels, size, stride, blocks)`` for the stem and each stage of a StarNet."""
    with torch.no_grad():
        feats = backbone.forward_features(torch.zeros(1, 3, image_size, image_size), return_stem=True)
    rows = [("stem", feats[0].shape[1], feats[0].shape[-1], 2, 0)]
    for i, (stage, f) in enumerate(zip(backbone.stages, feats[1:])):
        rows.append((f"stage {i}", f.shape[1], f.shape[-1], backbone.reductions[i], len(stage) - 1))
    return rows


def starnet_diagram(backbone: nn.Module, image_size: int = 200) -> Any:
    """A StarNet backbone's stem and stages, with channels, strides, map sizes and blocks per stage.

    Box heights shrink with the map size and widths grow with the channels, so the pyramid reads at a glance.
    """
    rows = _stage_rows(backbone.eval(), image_size)
    c = _Canvas(16.3, 4.4, (9.0, 2.55), f"StarNet backbone on a {image_size} × {image_size} image")
    x = c.box(0.65, 2.2, 1.1, 1.2, f"image\n3 ch\n{image_size}²", "io", size=_FONT - 1.5)["r"]
    max_ch = max(r[1] for r in rows)
    left = 1.55
    for name, ch, size, stride, blocks in rows:
        w = 2.25 + 0.8 * ch / max_ch
        h = 1.0 + 2.3 * size / rows[0][2]
        body = "3×3 s2 conv\nBN, ReLU6" if name == "stem" else f"3×3 s2 conv, BN\n{blocks} star blocks"
        b = c.box(left + 0.35 + w / 2, 2.2, w, h, f"{name}\n{body}", "conv" if name == "stem" else "backbone",
                  size=_FONT - 1.5)
        c.arrow(x, b["l"])
        c.note(b["c"][0], 2.2 - h / 2 - 0.12, f"{ch} ch, {size}×{size}\nstride {stride}", ha="center", va="top")
        x, left = b["r"], left + 0.35 + w
    return c.done()


def msaa_diagram(msaa: nn.Module) -> Any:
    """MSAA (a :class:`~smelib.models.msaa_ela.MSAA`): input repetition, the reduction to ``d``, the channel
    path, the multi-scale spatial path and the output projection, with widths read from the module."""
    fu = msaa.fusion
    num_inputs, dim = getattr(msaa, "num_inputs", 1), fu.down.out_channels
    c_in = fu.down.in_channels // (msaa.repeat * num_inputs)
    c = _Canvas(14.4, 4.45, (9.0, 3.05), f"MSAA, {c_in} → {fu.up.out_channels} channels, fusion width d = {dim}")
    y = 2.3
    x_in = c.box(0.55, y, 0.9, 0.7, f"x\n{c_in} ch", "io")
    if num_inputs > 1:
        cat_text = f"concat {num_inputs}\ninputs → {fu.down.in_channels}"
    else:
        cat_text = f"repeat ×{msaa.repeat}\n→ {fu.down.in_channels} ch"
    cat = c.box(1.95, y, 1.4, 0.8, cat_text, "resample")
    down = c.box(3.9, y, 2.1, 1.05, _conv_text(fu.down, "down"), "conv")
    hidden = fu.channel_attention.mlp[0].out_channels
    ca = c.box(6.4, y + 1.35, 2.5, 1.05, f"channel attention\navg+max pool\nMLP {dim}→{hidden}→{dim}, σ",
               "attention")
    scales = ((3, fu.conv3x3), (5, fu.conv5x5), (7, fu.conv7x7))
    convs = [c.box(6.4, y - 0.45 - 0.62 * i, 2.3, 0.52,
                   f"{conv.kernel_size[0]}×{conv.kernel_size[1]} conv {conv.in_channels}→{conv.out_channels}", "conv",
                   size=_FONT - 1) for i, (_, conv) in enumerate(scales)]
    ys = y - 1.07
    summ = c.op(8.0, ys, "+")
    k_sa = fu.spatial_attention.conv.kernel_size[0]
    sa = c.box(9.8, y - 0.2, 2.2, 1.05, f"spatial attention\n[mean, max]\n{k_sa}×{k_sa} conv, σ", "attention")
    mul_s = c.op(11.25, ys, "×")
    mul_c = c.op(8.8, y + 1.3, "×")
    add = c.op(11.95, y, "+")
    up = c.box(13.3, y, 2.1, 1.05, _conv_text(fu.up, "up"), "conv")
    c.arrow(x_in["r"], cat["l"])
    c.arrow(cat["r"], down["l"])
    split = 5.1
    c.arrow(down["r"], (split, y), (split, ca["l"][1]), ca["l"], label="f", label_at=0, offset=(-0.05, 0.02))
    c.arrow((split, ca["l"][1] - 0.7), (mul_c["c"][0], ca["l"][1] - 0.7), mul_c["b"])
    c.arrow(ca["r"], mul_c["l"])
    for b, end in zip(convs, (summ["t"], summ["l"], summ["b"])):
        c.arrow((split, y), (split, b["l"][1]), b["l"])
        c.arrow(b["r"], (end[0], b["r"][1]), end) if b is not convs[1] else c.arrow(b["r"], end)
    c.arrow(summ["r"], mul_s["l"], label="f_s", offset=(0.0, -0.38))
    branch = 8.5
    c.arrow((branch, ys), (branch, sa["c"][1]), sa["l"])
    c.arrow(sa["r"], (mul_s["c"][0], sa["c"][1]), mul_s["t"])
    c.arrow(mul_c["r"], (add["c"][0], mul_c["r"][1]), add["t"], label="f_c", offset=(0.0, 0.02))
    c.arrow(mul_s["r"], (add["c"][0], mul_s["r"][1]), add["b"])
    c.arrow(add["r"], up["l"])
    return c.done()


def ela_diagram(ela: nn.Module, size: tuple[int, int] = (50, 50)) -> Any:
    """ELA (a :class:`~smelib.models.msaa_ela.ELA`): two strip poolings, the one shared Conv1d → GroupNorm → σ,
    and the rescaling of the input by both strips, for a ``size`` map."""
    ch, (h, w) = ela.conv.in_channels, size
    k, groups, gn = ela.conv.kernel_size[0], ela.conv.groups, ela.norm.num_groups
    name = f"ELA-{ela.variant}" if hasattr(ela, "variant") else "ELA"
    c = _Canvas(12.45, 3.3, (9.0, 2.4), f"{name} on {ch} × {h} × {w}")
    y = 1.6
    x_in = c.box(0.8, y, 1.5, 0.7, f"x\n{ch}×{h}×{w}", "io")
    shared = f"Conv1d k={k}, {'depthwise' if groups == ch else f'{groups} groups'}\n→ GroupNorm({gn}) → σ"
    pool_h = c.box(3.0, y + 0.85, 1.9, 0.7, f"mean over W\n{ch}×{h}", "pool")
    pool_w = c.box(3.0, y - 0.85, 1.9, 0.7, f"mean over H\n{ch}×{w}", "pool")
    att_h = c.box(6.0, y + 0.85, 2.9, 0.7, shared, "attention", size=_FONT - 0.5)
    att_w = c.box(6.0, y - 0.85, 2.9, 0.7, shared, "attention", size=_FONT - 0.5)
    c.note(6.0, y + 1.35, "one Conv1d and GroupNorm, shared by both strips", ha="center", va="center",
           style="italic")
    mul = c.op(9.6, y, "×")
    out = c.box(11.6, y, 1.5, 0.7, f"y\n{ch}×{h}×{w}", "io")
    c.arrow(x_in["r"], (1.75, y), (1.75, pool_h["l"][1]), pool_h["l"])
    c.arrow((1.75, y), (1.75, pool_w["l"][1]), pool_w["l"])
    c.arrow(pool_h["r"], att_h["l"])
    c.arrow(pool_w["r"], att_w["l"])
    c.arrow(att_h["r"], (mul["c"][0], att_h["r"][1]), mul["t"], label=f"a_h {ch}×{h}×1", offset=(0.2, 0.04))
    c.arrow(att_w["r"], (mul["c"][0], att_w["r"][1]), mul["b"], label=f"a_w {ch}×1×{w}", offset=(0.2, -0.35))
    c.arrow((1.75, y), mul["l"], label="x", offset=(0.0, 0.02))
    c.arrow(mul["r"], out["l"])
    return c.done()


def _shape(rows: Sequence[Any], name: str) -> str:
    row = next(r for r in rows if r.name == name)
    return "×".join(map(str, row.output[0][1:]))


def network_diagram(model: nn.Module, image_size: int = 200) -> Any:
    """The whole DeepLabV3+ model (e.g. SME-DeepLabV3+): backbone stages, the upsampling and context module on
    the deep branch, the attention on the shallow branch and the decoder, with the shapes of one
    ``image_size`` image recorded by forward hooks."""
    names = ["backbone.stem", *[f"backbone.stages.{i}" for i in range(len(model.backbone.stages))], "context",
             "low_attention", "decoder.shortcut", "decoder.fuse", "decoder.classifier"]
    was_training = model.training
    rows = trace_shapes(model.eval(), torch.zeros(1, 3, image_size, image_size), names)
    model.train(was_training)
    c = _Canvas(15.0, 6.6, (9.6, 4.6), f"{type(model).__name__}: {model.config['backbone']}, "
                f"{type(model.context).__name__}, {type(model.low_attention).__name__}, {image_size} px input")
    top = 5.9
    x = c.box(0.65, top, 1.0, 0.85, f"image\n3×{image_size}\n×{image_size}", "io", size=_FONT - 0.5)["r"]
    stages = []
    for i, name in enumerate(names[:1 + len(model.backbone.stages)]):
        label = "stem" if i == 0 else f"stage {i - 1}"
        stride = 2 if i == 0 else model.backbone.reductions[i - 1]
        extra = "" if i == 0 else f"\n{len(model.backbone.stages[i - 1]) - 1} blocks"
        b = c.box(2.35 + 2.45 * i, top, 2.05, 1.0, f"{label}, s{stride}{extra}\n{_shape(rows, name)}",
                  "conv" if i == 0 else "backbone", size=_FONT - 0.5)
        c.arrow(x, b["l"])
        x = b["r"]
        stages.append(b)
    c.note((stages[2]["c"][0] + stages[3]["c"][0]) / 2, top - 0.7,
           "StarNet backbone" if model.config["backbone"].startswith("starnet") else "backbone",
           ha="center", va="top", color=ROLE_COLORS["backbone"], fontsize=_FONT + 0.5)
    deep, low = stages[-1], stages[1]
    n_up = len(model.upsample)
    up = c.box(deep["c"][0], 4.2, 2.05, 0.75, f"{n_up} × bilinear ×2" if n_up else "(no resampling)", "resample",
               size=_FONT - 0.5)
    ctx = c.box(deep["c"][0], 2.85, 2.05, 0.85, f"{type(model.context).__name__}\n{_shape(rows, 'context')}",
                "attention")
    att = c.box(low["c"][0], 4.2, 2.05, 0.85, f"{type(model.low_attention).__name__}\n"
                f"{_shape(rows, 'low_attention')}", "attention")
    short = c.box(low["c"][0], 2.75, 2.05, 1.1, f"1×1 conv\n+ BN + ReLU\n{_shape(rows, 'decoder.shortcut')}",
                  "decoder", size=_FONT - 0.5)
    resize = c.box(8.3, 2.85, 1.7, 0.75, "bilinear\nresize", "resample", size=_FONT - 0.5)
    cat = c.op(6.6, 1.35, "‖")
    fuse = c.box(8.9, 1.35, 2.9, 1.1, f"2 × 3×3 conv\n+ BN + ReLU, dropout\n{_shape(rows, 'decoder.fuse')}",
                 "decoder", size=_FONT - 0.5)
    cls = c.box(11.4, 1.35, 1.6, 0.85, f"1×1 conv\n{_shape(rows, 'decoder.classifier')}", "decoder",
                size=_FONT - 0.5)
    out = c.box(13.75, 1.35, 2.1, 0.85, f"resize → logits\n{model.num_classes}×{image_size}×{image_size}", "io",
                size=_FONT - 0.5)
    c.arrow(deep["b"], up["t"])
    c.arrow(up["b"], ctx["t"])
    c.arrow(ctx["l"], resize["r"])
    c.arrow(resize["l"], (cat["c"][0], resize["l"][1]), cat["t"], label="context", label_at=1, offset=(0.55, -0.1))
    c.arrow(low["b"], att["t"], label="low-level", offset=(0.55, -0.05))
    c.arrow(att["b"], short["t"])
    c.arrow(short["b"], (short["b"][0], cat["c"][1]), cat["l"])
    c.arrow(cat["r"], fuse["l"])
    c.arrow(fuse["r"], cls["l"])
    c.arrow(cls["r"], out["l"])
    c.note(13.35, 4.2, "deep branch:\ncontext at\nstride " + str(model.backbone.reductions[-1] // 2 ** n_up),
           ha="left", va="center")
    c.note(0.2, 3.5, "shallow branch:\nstride " + str(model.backbone.reductions[0]), ha="left", va="center")
    c.note(8.9, 0.45, "DeepLabV3+ decoder", ha="center", color=ROLE_COLORS["decoder"], fontsize=_FONT + 0.5)
    return c.done()
