"""Figures of "Ablations (Table 3) and comparison (Table 1)": test mIoU per model and split, the paper's conclusions
as paired differences with intervals, the official-versus-grouped gap, and per-class bootstrap differences.

Every figure is drawn from the run records and their summaries (:func:`smelib.study.conclusions.seed_scores`,
:func:`smelib.study.conclusions.conclusion_effects`, :func:`smelib.study.conclusions.split_gap`,
:func:`smelib.study.bootstrap.load_bootstrap_records`); none holds a typed-in number. One colour language: the two
splits take two palette hues no NEU-Seg class uses (:data:`smelib.study.data_figures.SPLIT_COLORS`), classes keep
their own (:func:`smelib.palette.class_color`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from smelib.study.conclusions import PAPER_MIOU, ConclusionEffect, seed_scores, split_gap
from smelib.study.data_figures import SPLIT_COLORS, rgb01, split_color
from smelib.study.plan import DEFAULT_CONFIGS, TABLE_MODELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Short display names of the registered models (figure labels; the registry names stay in the tables).
MODEL_LABELS: dict[str, str] = {
    "sme_deeplabv3plus": "SME-DeepLabV3+", "deeplabv3plus_mobilenetv2": "DLV3+ MobileNetV2",
    "deeplabv3plus_xception": "DLV3+ Xception", "starnet_aspp": "StarNet + ASPP",
    "starnet_aspp_ela": "StarNet + ASPP + ELA", "starnet_msaa": "StarNet + MSAA", "resunet": "Res-UNet",
    "pspnet": "PSPNet", "hrnet": "HRNet", "sme_deeplabv3plus_lite": "SME lite",
}



def model_label(model: str) -> str:
    """:data:`MODEL_LABELS` entry of ``model``, or the registry name itself."""
    return MODEL_LABELS.get(model, model)


def short_claim(claim: str) -> str:
    """A conclusion's claim without its parenthesis: ``"MSAA helps (StarNet + MSAA vs ...)"`` -> ``"MSAA helps"``
    (the same shortening :func:`~smelib.study.conclusions.verdict_table` makes)."""
    return claim.split(" (", 1)[0]


def score_figure(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                 models: Sequence[str] = TABLE_MODELS, paper: Mapping[str, float] = PAPER_MIOU,
                 figsize: tuple[float, float] = (6.8, 4.2), dpi: int = 110) -> Figure:
    """Test mIoU of each model on both splits: every seed a small dot, mean ± sample std over seeds as a diamond
    with a bar (no bar with one seed), and, in a narrow panel on the right with its own axis, the paper's value.

    Args:
        rows: summary rows; records: run records (the seeds of each row are read from them,
            :func:`~smelib.study.conclusions.seed_scores`).
        models: the rows of the figure, top to bottom; paper: the paper's mIoU by model (official split).
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    runs = pd.DataFrame(seed_scores(rows, records, models))
    if runs.empty:
        raise ValueError("no run record behind the summary rows of these models: nothing to plot")
    runs["label"] = runs["model"].map(model_label)
    order = [model_label(m) for m in models]
    hue_order = [s for s in ("official", "grouped") if s in set(runs["split"])]
    palette = {s: SPLIT_COLORS[s] for s in hue_order}
    with sns.axes_style("whitegrid"):
        fig, (ax, axp) = plt.subplots(1, 2, figsize=figsize, dpi=dpi, sharey=True, layout="constrained",
                                      gridspec_kw={"width_ratios": [5, 1.2]})
        sns.stripplot(runs, x="value", y="label", hue="split", order=order, hue_order=hue_order, palette=palette,
                      dodge=True, jitter=False, size=3.5, alpha=0.55, ax=ax, legend=False)
        sns.pointplot(runs, x="value", y="label", hue="split", order=order, hue_order=hue_order, palette=palette,
                      dodge=0.4, errorbar="sd", linestyle="none", markers="D", markersize=5, capsize=0.15,
                      err_kws={"linewidth": 1.3}, ax=ax)
        ax.set_xlabel("our test mIoU (%)")
        ax.set_ylabel("")
        ax.legend(title=None, loc="upper right", fontsize=8, frameon=True)
        shown = [(order.index(model_label(m)), v) for m, v in paper.items() if model_label(m) in order]
        axp.scatter([v for _, v in shown], [i for i, _ in shown], marker="X", s=45, color="0.15", zorder=3)
        lo, hi = (min(v for _, v in shown), max(v for _, v in shown)) if shown else (88.0, 89.0)
        axp.set_xlim(lo - 0.35, hi + 0.35)
        axp.set_xlabel("paper (%)")
        axp.tick_params(axis="x", labelsize=8)
        axp.set_title("official, 300 ep.", fontsize=8)
        ax.set_title("ours: seeds (dots), mean ± std (diamonds)", fontsize=9)
    return fig


def _record_models(rec: Mapping[str, Any]) -> tuple[str, str]:
    runs = rec.get("runs") or [{}, {}]
    return str(runs[0].get("model")), str(runs[1].get("model"))


def conclusion_forest(effects: Mapping[str, Sequence[ConclusionEffect]],
                      bootstrap_records: Sequence[Mapping[str, Any]] = (), paper: Mapping[str, float] = PAPER_MIOU,
                      figsize: tuple[float, float] = (6.9, 4.6), dpi: int = 110) -> Figure:
    """The paper's conclusions as paired differences "better − worse" in mIoU points, one panel per split.

    For each conclusion: the difference of the seed means with ``± z`` standard errors of the seed spread (a
    thick bar; :func:`~smelib.study.conclusions.conclusion_effects`), below it every paired-bootstrap record of the
    same two models on that split (a thin bar: the test-set interval of one seed of each), and on the official
    panel the paper's own difference where its text states both numbers. A marker is filled when its interval
    lies on one side of zero.

    Args:
        effects: ``{split: conclusion_effects(rows, split, ...)}``, one panel per key in order.
        bootstrap_records: :func:`~smelib.study.bootstrap.load_bootstrap_records` output; records of other
            pairs or splits are ignored.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.lines import Line2D

    splits = list(effects)
    claims = [e.conclusion for e in effects[splits[0]]]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(splits), figsize=figsize, dpi=dpi, sharey=True, sharex=True,
                                 layout="constrained", squeeze=False)
        for ax, split in zip(axes[0], splits):
            color = split_color(split)
            ax.axvline(0, color="0.2", linewidth=1)
            for i, e in enumerate(effects[split]):
                if e.low is not None and e.difference is not None:
                    sided = e.low > 0 or e.high < 0  # type: ignore[operator]
                    ax.plot([e.low, e.high], [i - 0.15] * 2, color=color, linewidth=3, solid_capstyle="butt")
                    ax.plot(e.difference, i - 0.15, "o", ms=6, mec=color, mfc=color if sided else "white")
                pairs = [r for r in bootstrap_records if r.get("split", {}).get("kind") == split
                         and _record_models(r) == (e.conclusion.better, e.conclusion.worse)]
                for j, rec in enumerate(pairs):
                    o, y = rec["outcome"], i + 0.15 + 0.13 * j
                    ax.plot([100 * o["low"], 100 * o["high"]], [y, y], color="0.25", linewidth=1.1)
                    ax.plot(100 * o["difference"], y, "D", ms=4, mec="0.25",
                            mfc="0.25" if o["low"] > 0 or o["high"] < 0 else "white")
                c = e.conclusion
                if split == "official" and c.better in paper and c.worse in paper:
                    ax.plot(paper[c.better] - paper[c.worse], i - 0.4, "X", ms=6, color="black", zorder=4)
            ax.set_title(f"{split} split", fontsize=10, color=color)
            ax.set_xlabel("difference in test mIoU (points)")
        axes[0][0].set_yticks(range(len(claims)), [short_claim(c.claim) for c in claims])
        axes[0][0].set_ylim(len(claims) - 0.45, -0.7)
        z = effects[splits[0]][0].z
        level = next((float(r["outcome"].get("level", 0.95)) for r in bootstrap_records), 0.95)
        handles = [
            Line2D([], [], color="0.45", linewidth=3, marker="o", mfc="0.45", label=f"seeds: mean ± {z:g} s.e."),
            Line2D([], [], color="0.25", linewidth=1.1, marker="D", ms=4,
                   label=f"test set: bootstrap {100 * level:.0f} %, 1 seed each"),
            Line2D([], [], linestyle="none", marker="X", ms=7, color="black", label="paper's difference"),
            Line2D([], [], linestyle="none", marker="o", mec="0.45", mfc="white", label="hollow: interval spans 0"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def split_gap_figure(rows: Sequence[Mapping[str, Any]], leak_records: Sequence[Mapping[str, Any]] = (),
                     configs: Sequence[str] = DEFAULT_CONFIGS, figsize: tuple[float, float] = (6.6, 3.4),
                     dpi: int = 110) -> Figure:
    """Official − grouped test score of every model measured on both splits under one protocol, for mIoU and for
    each class's IoU: one dot per model, the mean over models ± 2 standard errors of that mean
    (:func:`~smelib.study.conclusions.split_gap`), and, as open triangles, the leak alone: leaky- against
    grouped-split training of one model and seed, scored on the same test pictures (``leak_records``, the
    ``"leaky vs grouped"`` paired-bootstrap records).
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.lines import Line2D

    classes = [k[len("iou_"):-len("_mean")] for k in rows[0] if k.startswith("iou_") and k.endswith("_mean")]
    metrics = [("mIoU", "miou", (0.45, 0.45, 0.45))] + [(c, f"iou_{c}", rgb01(i)) for i, c in enumerate(classes)]
    metrics = [(n, k, col if col != (0.0, 0.0, 0.0) else (0.25, 0.25, 0.25)) for n, k, col in metrics]
    gaps = pd.DataFrame([{"metric": name, "model": m, "gap": 100 * g}
                         for name, key, _ in metrics for m, g, _, _ in split_gap(rows, configs, key=key).pairs])
    if gaps.empty:
        raise ValueError("no model is measured on both splits under one protocol: no gap to plot")
    order = [n for n, _, _ in metrics]
    palette = {n: col for n, _, col in metrics}
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi, layout="constrained")
        ax.axvline(0, color="0.2", linewidth=1)
        sns.stripplot(gaps, x="gap", y="metric", hue="metric", order=order, palette=palette, size=4.5, alpha=0.7,
                      jitter=0.12, legend=False, ax=ax)
        sns.pointplot(gaps, x="gap", y="metric", order=order, errorbar=("se", 2), color="black", markers="|",
                      markersize=14, linestyle="none", capsize=0.3, err_kws={"linewidth": 1.2}, ax=ax)
        names = list(classes)
        for rec in leak_records:
            o = rec["outcome"]
            for i, name in enumerate(rec.get("class_names") or names):
                if name in order and o["class_difference"][i] is not None:
                    ax.plot(100 * o["class_difference"][i], order.index(name) + 0.3, "^", ms=5, mfc="white",
                            mec="0.15")
            ax.plot(100 * o["difference"], 0.3, "^", ms=5, mfc="white", mec="0.15")
        ax.set_xlabel("official − grouped (points)")
        ax.set_ylabel("")
        handles = [Line2D([], [], linestyle="none", marker="o", color="0.5", label="one model"),
                   Line2D([], [], color="black", marker="|", ms=10, label="mean ± 2 s.e. over models")]
        if leak_records:
            handles.append(Line2D([], [], linestyle="none", marker="^", mfc="white", mec="0.15",
                                  label="copies alone (same test pictures)"))
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    return fig


def class_difference_figure(records: Sequence[Mapping[str, Any]], better: str = "sme_deeplabv3plus",
                            splits: Sequence[str] = ("official", "grouped"),
                            figsize: tuple[float, float] = (6.8, 4.6), dpi: int = 110) -> Figure:
    """Per-class IoU difference of ``better`` against each other network it was paired with, one panel per class:
    the difference and its joint (Bonferroni over the classes) 95 % interval from the paired bootstrap records,
    one bar per record, coloured by split. Pairs of two seeds of one model are left out.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    picked = [r for r in records if r.get("split", {}).get("kind") in splits
              and _record_models(r)[0] == better and _record_models(r)[1] != better
              and r["outcome"].get("class_low_joint")]
    if not picked:
        raise ValueError(f"no paired-bootstrap record of {better} against another model on {list(splits)}")

    opponents = list(dict.fromkeys(_record_models(r)[1] for r in sorted(picked, key=lambda r: _record_models(r)[1])))
    rank: dict[int, float] = {}  # each record's row offset: official above the model's tick, grouped below it
    seen: dict[tuple[str, str], int] = {}
    for rec in picked:
        key = (_record_models(rec)[1], rec["split"]["kind"])
        j, seen[key] = seen.get(key, 0), seen.get(key, 0) + 1
        rank[id(rec)] = (-0.2 if key[1] == "official" else 0.1) + 0.16 * j
    names = picked[0].get("class_names") or [f"class {i}" for i in range(len(picked[0]["outcome"]["class_difference"]))]
    n = len(names)
    cols = 2 if n > 1 else 1
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=figsize, dpi=dpi, sharey=True,
                                 layout="constrained", squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= n:
                ax.set_visible(False)
                continue
            ax.axvline(0, color="0.2", linewidth=1)
            labelled = set()
            for rec in picked:
                o, split = rec["outcome"], rec["split"]["kind"]
                y = opponents.index(_record_models(rec)[1]) + rank[id(rec)]
                lo, hi = o["class_low_joint"][k], o["class_high_joint"][k]
                if lo is None or hi is None:
                    continue
                col = split_color(split)
                ax.plot([100 * lo, 100 * hi], [y, y], color=col, linewidth=2)
                ax.plot(100 * o["class_difference"][k], y, "o", ms=4.5, color=col,
                        label=f"{split} split" if split not in labelled else None)
                labelled.add(split)
            ax.set_title(names[k], fontsize=10, color=rgb01(k) if k else "black")
            ax.set_yticks(range(len(opponents)), [model_label(m) for m in opponents], fontsize=8)
            ax.set_ylim(len(opponents) - 0.5, -0.5)
            ax.tick_params(axis="x", labelsize=8)
            if k >= n - cols:
                ax.set_xlabel(f"IoU, {model_label(better)} − other (points)", fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    return fig


__all__ = ["MODEL_LABELS", "class_difference_figure", "conclusion_forest", "model_label",
           "score_figure", "short_claim", "split_gap_figure"]
