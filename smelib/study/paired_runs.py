"""Seed-paired comparison of two training protocols: does a training option change the test metrics by more
than training noise?

A training option such as ``model_init.classifier_prior`` can only be measured by training with it. Run with
the same seed, the option's run and the protocol's own run share everything else — the data order, the
augmentation draws and every random initial weight (the prior sets one bias and draws no random number) — so
each seed gives one *paired* difference ``option − base``. :func:`seed_pairs` matches the two protocols' run
records seed by seed; :func:`paired_verdict` applies the book's criterion for an effect:

* at least ``min_seeds`` pairs (3, the plan of chapter "What the paper leaves unspecified");
* every paired difference of the same sign;
* the mean difference larger than the base protocol's own seed-to-seed standard deviation.

Anything else is "within the seed spread"; with too few pairs the verdict says so instead of guessing. With 3
seeds no significance test is meaningful; the criterion is a stated rule, not a p-value.

:func:`paired_curve_table` follows the pairs through training (validation mIoU after every epoch, from the
records' ``history``), for claims about how fast a model learns rather than where it ends.

>>> from smelib.study.results import load_records
>>> pairs = seed_pairs(load_records("results/runs"), "cpu_budget_prior")   # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smelib.study.tables import Table

__all__ = ["PAIRED_METRICS", "SeedPair", "curve_rows", "effect_rows", "effect_summary", "effect_table",
           "effect_verdict", "paired_curve", "paired_curve_table", "paired_seed_table", "paired_summary_table",
           "paired_verdict", "plot_paired_curves", "plot_paired_effects", "seed_pairs"]

#: The metrics compared, as (label, path into a run record's ``final.test``).
PAIRED_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mIoU", ("miou",)), ("defects-only mIoU", ("defects_only", "miou")), ("precision", ("precision",)),
    ("MPA", ("mpa",)),
)


@dataclass(frozen=True)
class SeedPair:
    """One seed's two runs: ``base`` (the protocol) and ``option`` (the protocol with the option), as run records."""

    seed: int
    base: Mapping[str, Any]
    option: Mapping[str, Any]

    def value(self, which: str, path: Sequence[str]) -> float:
        """The test metric at ``path`` of the ``"base"`` or ``"option"`` run, as a fraction."""
        v: Any = (self.base if which == "base" else self.option)["final"]["test"]
        for key in path:
            v = v[key]
        return float(v)

    def difference(self, path: Sequence[str]) -> float:
        """``option − base`` of the test metric at ``path``, in points."""
        return 100 * (self.value("option", path) - self.value("base", path))

    def class_differences(self) -> list[float]:
        """``option − base`` of each class's test IoU, in points (class order of the records)."""
        a, b = self.option["final"]["test"]["iou"], self.base["final"]["test"]["iou"]
        return [100 * (x - y) for x, y in zip(a, b)]


def _epochs(rec: Mapping[str, Any]) -> int | None:
    e = rec.get("epochs", (rec.get("checkpoint") or {}).get("epochs_trained"))
    return None if e is None else int(e)


def _latest_by_seed(records: Sequence[Mapping[str, Any]], config: str, model: str, split: str,
                    epochs: int | None) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for r in records:
        if r.get("status") != "completed" or not (r.get("final") or {}).get("test"):
            continue
        if r.get("config_name") != config or r.get("model") != model:
            continue
        if (r.get("split") or {}).get("kind") != split:
            continue
        if epochs is not None and _epochs(r) != epochs:
            continue
        seed = int(r["seed"])
        # a seed trained twice (e.g. re-run to store predictions) counts once: its latest run, as in summarize()
        if seed not in out or str(r.get("finished_utc", "")) >= str(out[seed].get("finished_utc", "")):
            out[seed] = r
    return out


def seed_pairs(records: Sequence[Mapping[str, Any]], option_config: str, base_config: str = "cpu_budget",
               model: str = "sme_deeplabv3plus", split: str = "grouped",
               epochs: int | None = None) -> list[SeedPair]:
    """Match the completed runs of ``option_config`` with those of ``base_config`` by seed.

    Args:
        records: run records (:func:`smelib.study.results.load_records`).
        option_config: the option's ``config_name`` (e.g. ``"cpu_budget_prior"``, set with ``name=``).
        base_config: the protocol it modifies.
        model, split: which runs (``split`` is the split kind, ``"grouped"`` or ``"official"``).
        epochs: the training length both must have; None: the base protocol's
            (:func:`~smelib.study.plan.protocol_epochs`), so learning-curve runs of other lengths never pair up.

    Returns:
        one :class:`SeedPair` per seed that both protocols have, sorted by seed.

    Raises:
        ValueError: the two runs of a seed score different numbers of classes (runs of other lengths or
            splits are not paired at all).
    """
    from smelib.study.plan import protocol_epochs

    want = protocol_epochs(base_config) if epochs is None else epochs
    base = _latest_by_seed(records, base_config, model, split, want)
    option = _latest_by_seed(records, option_config, model, split, want)
    pairs = []
    for seed in sorted(set(base) & set(option)):
        b, o = base[seed], option[seed]
        nb, no = len(b["final"]["test"]["iou"]), len(o["final"]["test"]["iou"])
        if nb != no:
            raise ValueError(f"seed {seed}: run {b.get('run_id')} has {nb} classes, run {o.get('run_id')} {no}")
        pairs.append(SeedPair(seed, b, o))
    return pairs


def paired_verdict(pairs: Sequence[SeedPair], base_std: float | None, path: Sequence[str] = ("miou",),
                   min_seeds: int = 3) -> str:
    """The book's criterion for an effect of the option on the metric at ``path`` (module docstring).

    Args:
        pairs: from :func:`seed_pairs`.
        base_std: the base protocol's seed-to-seed sample standard deviation of that metric, in points.
        min_seeds: the fewest pairs a verdict needs.

    Returns:
        ``"helps"``, ``"hurts"``, ``"within the seed spread"``, or a sentence saying how many seeds are missing.
    """
    return effect_verdict([p.difference(path) for p in pairs], base_std, min_seeds)


def effect_verdict(diffs: Sequence[float], base_std: float | None, min_seeds: int = 3) -> str:
    """The effect criterion on paired differences ``diffs`` (points, one per seed) against ``base_std``, the
    base's own seed-to-seed standard deviation (points): see :func:`paired_verdict`. Decision rules, paired on
    one checkpoint's probabilities per seed, are judged by the same rule."""
    if len(diffs) < min_seeds:
        return f"no verdict: {len(diffs)} of {min_seeds} seeds paired"
    if base_std is None:
        return "no verdict: the base protocol has no seed spread"
    mean = statistics.fmean(diffs)
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    if same_sign and abs(mean) > base_std:
        return "helps" if mean > 0 else "hurts"
    return "within the seed spread"


def paired_seed_table(pairs: Sequence[SeedPair], option_name: str, class_names: Sequence[str] = ()) -> Table:
    """One row per seed: both runs' ids and test mIoU, and the paired differences (points) of
    :data:`PAIRED_METRICS` and, given ``class_names``, of each class's IoU."""
    from smelib.study.tables import Table

    rows = []
    for p in pairs:
        rows.append([p.seed, p.base.get("run_id"), p.option.get("run_id"), 100 * p.value("base", ("miou",)),
                     100 * p.value("option", ("miou",)), *(p.difference(path) for _, path in PAIRED_METRICS),
                     *(p.class_differences()[: len(class_names)])])
    return Table(["seed", "base run", "option run", "base mIoU %", "option mIoU %",
                  *(f"Δ {label}" for label, _ in PAIRED_METRICS), *(f"Δ IoU {n}" for n in class_names)],
                 rows, decimals=2, title=f"{option_name} − base, per seed (test set, points)")


def paired_summary_table(pairs: Sequence[SeedPair], option_name: str, min_seeds: int = 3) -> Table:
    """One row per metric of :data:`PAIRED_METRICS`: base mean ± std, option mean ± std, the paired difference's
    mean ± std, how many seeds moved up, and :func:`paired_verdict` against the base's own seed spread."""
    from smelib.study.tables import Table

    def mean_std(values: list[float]) -> str:
        if not values:
            return "–"
        s = f"{statistics.fmean(values):.2f}"
        return s + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else " ± –")

    rows = []
    for label, path in PAIRED_METRICS:
        base = [100 * p.value("base", path) for p in pairs]
        opt = [100 * p.value("option", path) for p in pairs]
        diffs = [p.difference(path) for p in pairs]
        base_std = statistics.stdev(base) if len(base) > 1 else None
        d = "–" if not diffs else f"{statistics.fmean(diffs):+.2f}" + (
            f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else " ± –")
        rows.append([label, len(pairs), mean_std(base), mean_std(opt), d,
                     f"{sum(x > 0 for x in diffs)} of {len(diffs)}",
                     paired_verdict(pairs, base_std, path, min_seeds)])
    return Table(["metric", "seeds", "base %", f"{option_name} %", "paired Δ (points)", "seeds with Δ > 0",
                  "verdict"], rows,
                 title=f"{option_name} against its base protocol over seeds (mean ± sample std; verdict: same sign "
                       f"in every seed and |mean Δ| above the base's seed std)")


def paired_curve(pairs: Sequence[SeedPair], key: str = "val_miou") -> dict[int, list[float]]:
    """``{epoch: [option − base of history[key], one per pair, in points]}`` for every epoch both runs of every
    pair logged (records' ``history``: one entry per epoch, validation metrics as fractions)."""
    per_pair = []
    for p in pairs:
        a = {int(h["epoch"]): h.get(key) for h in p.option.get("history") or []}
        b = {int(h["epoch"]): h.get(key) for h in p.base.get("history") or []}
        per_pair.append({e: 100 * (a[e] - b[e]) for e in a.keys() & b.keys()
                         if a[e] is not None and b[e] is not None})
    epochs = sorted(set.intersection(*(set(d) for d in per_pair))) if per_pair else []
    return {e: [d[e] for d in per_pair] for e in epochs}


def paired_curve_table(pairs: Sequence[SeedPair], option_name: str, key: str = "val_miou") -> Table:
    """One row per epoch: the base's and the option's mean validation metric ``key`` over the pairs, and the
    paired difference per seed and as mean ± std (points)."""
    from smelib.study.tables import Table

    curve = paired_curve(pairs, key)
    rows = []
    for epoch, diffs in curve.items():
        base = [100 * next(h[key] for h in p.base["history"] if int(h["epoch"]) == epoch) for p in pairs]
        rows.append([epoch, statistics.fmean(base), statistics.fmean(base) + statistics.fmean(diffs),
                     *diffs, f"{statistics.fmean(diffs):+.2f}" + (
                         f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else " ± –")])
    return Table(["epoch", f"base {key} %", f"{option_name} {key} %", *(f"Δ seed {p.seed}" for p in pairs),
                  "mean Δ (points)"], rows, decimals=2,
                 title=f"{option_name} − base through training ({key}, validation carve-out, mean over seeds)")


# ----------------------------------------------------------------------------------------------------------
# Long-form effects: one row per (mechanism, metric, seed), shared with the decision rules
# (:func:`smelib.study.decisions.decision_effect_rows`), summarised and drawn together


def effect_rows(pairs: Sequence[SeedPair], mechanism: str) -> list[dict[str, Any]]:
    """The pairs as long-form rows, one per (metric of :data:`PAIRED_METRICS`, seed): ``mechanism``, ``metric``,
    ``seed``, ``delta`` (option − base, points) and ``base`` (the base run's value, percent)."""
    return [{"mechanism": mechanism, "metric": label, "seed": p.seed, "delta": p.difference(path),
             "base": 100 * p.value("base", path)} for p in pairs for label, path in PAIRED_METRICS]


def effect_summary(rows: Sequence[Mapping[str, Any]], min_seeds: int = 3) -> list[dict[str, Any]]:
    """Per (mechanism, metric), in order of first appearance: ``n``, ``mean`` and ``std`` of the paired
    differences, ``base_std`` (the base's seed-to-seed sample std), ``up`` (seeds with a positive difference)
    and ``verdict`` (:func:`effect_verdict`)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["mechanism"], r["metric"]), []).append(r)
    out = []
    for (mechanism, metric), rs in groups.items():
        diffs, base = [float(r["delta"]) for r in rs], [float(r["base"]) for r in rs]
        base_std = statistics.stdev(base) if len(base) > 1 else None
        out.append({"mechanism": mechanism, "metric": metric, "n": len(diffs), "mean": statistics.fmean(diffs),
                    "std": statistics.stdev(diffs) if len(diffs) > 1 else None, "base_std": base_std,
                    "up": sum(d > 0 for d in diffs), "verdict": effect_verdict(diffs, base_std, min_seeds)})
    return out


def effect_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None,
                 title: str | None = None) -> Table:
    """:func:`effect_summary` as one row per mechanism and one column per metric (default: all, in order), each
    cell ``mean ± std`` and the verdict in a word: ``helps``, ``hurts``, ``within`` (the seed spread) or ``–``
    (no verdict)."""
    from smelib.study.tables import Table

    metrics = list(metrics or dict.fromkeys(s["metric"] for s in summary))
    by = {(s["mechanism"], s["metric"]): s for s in summary}
    words = {"helps": "helps", "hurts": "hurts", "within the seed spread": "within"}
    rows = []
    for mechanism in dict.fromkeys(s["mechanism"] for s in summary):
        cells = []
        for m in metrics:
            s = by.get((mechanism, m))
            if s is None:
                cells.append("–")
                continue
            std = "–" if s["std"] is None else f"{s['std']:.2f}"
            cells.append(f"{s['mean']:+.2f} ± {std} {words.get(s['verdict'], '–')}")
        rows.append([mechanism, *cells])
    return Table(["mechanism", *(f"Δ {m}" for m in metrics)], rows, title=title)


def plot_paired_effects(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None,
                        width: float = 6.8) -> Any:
    """Paired effects with intervals: one panel per metric, one row per mechanism; each seed's difference as a
    dot, their mean ± sample std as a diamond with a bar, and the base's own seed-to-seed std as a grey band
    around zero (an effect, by :func:`effect_verdict`, lies outside the band with every dot on one side).

    Args:
        rows: from :func:`effect_rows` and :func:`smelib.study.decisions.decision_effect_rows`.
        metrics: which metrics, in order (default: all in ``rows``).
        width: figure width in inches.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no effect rows to draw")
    metrics = list(metrics or dict.fromkeys(df["metric"]))
    mechanisms = list(dict.fromkeys(df["mechanism"]))
    summary = {(s["mechanism"], s["metric"]): s for s in effect_summary(rows)}
    colours = dict(zip(mechanisms, sns.color_palette("colorblind", len(mechanisms))))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 0.45 * len(mechanisms) + 1.3), dpi=110,
                             layout="constrained", sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = df[df["metric"] == metric]
        for i, mech in enumerate(mechanisms):
            s = summary.get((mech, metric))
            if s and s["base_std"] is not None:
                ax.fill_betweenx([i - 0.3, i + 0.3], -s["base_std"], s["base_std"], color="0.88", lw=0)
        ax.axvline(0, color="0.4", lw=0.8)
        sns.stripplot(sub, x="delta", y="mechanism", order=mechanisms, color="0.35", size=3.5, jitter=0.12, ax=ax)
        sns.pointplot(sub, x="delta", y="mechanism", order=mechanisms, hue="mechanism", palette=colours,
                      errorbar="sd", linestyle="none", markers="D", markersize=5, err_kws={"linewidth": 1.5},
                      legend=False, ax=ax)
        ax.set_title(f"Δ {metric}", fontsize=8)
        ax.set_xlabel("points", fontsize=8)
        ax.set_ylabel("")
        ax.tick_params(labelsize=8)
    return fig


def curve_rows(pairs: Sequence[SeedPair], mechanism: str, key: str = "val_miou") -> list[dict[str, Any]]:
    """:func:`paired_curve` as long-form rows: ``mechanism``, ``epoch``, ``seed`` and ``delta`` (points)."""
    return [{"mechanism": mechanism, "epoch": epoch, "seed": p.seed, "delta": d}
            for epoch, diffs in paired_curve(pairs, key).items() for p, d in zip(pairs, diffs)]


def plot_paired_curves(rows: Sequence[Mapping[str, Any]], width: float = 6.8,
                       ylabel: str = "Δ validation mIoU (points)") -> Any:
    """Paired differences through training: per mechanism, the mean over seeds after every epoch with a ± sample
    std band, and each seed's difference as a dot.

    Args:
        rows: from :func:`curve_rows` (one or several mechanisms).
        width: figure width in inches.
        ylabel: the y axis' label.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no curve rows to draw")
    mechanisms = list(dict.fromkeys(df["mechanism"]))
    palette = dict(zip(mechanisms, sns.color_palette("colorblind", len(mechanisms))))
    fig, ax = plt.subplots(figsize=(width, 2.8), dpi=110, layout="constrained")
    ax.axhline(0, color="0.4", lw=0.8)
    sns.lineplot(df, x="epoch", y="delta", hue="mechanism", hue_order=mechanisms, palette=palette, errorbar="sd",
                 marker="o", ax=ax)
    sns.stripplot(df, x="epoch", y="delta", hue="mechanism", hue_order=mechanisms, palette=palette, native_scale=True,
                  dodge=False, jitter=0.08, size=3, alpha=0.6, legend=False, ax=ax)
    ax.set_xticks(sorted(set(df["epoch"])))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(title=None, fontsize=7, frameon=False)
    return fig
