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

__all__ = ["PAIRED_METRICS", "SeedPair", "effect_verdict", "paired_curve", "paired_curve_table", "paired_seed_table",
           "paired_summary_table", "paired_verdict", "seed_pairs"]

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
