"""The paper's conclusions tested against our runs: summary rows as the book's tables show them, the seed spread,
the official-versus-grouped gap, and a verdict for each conclusion.

:func:`summary_value`, :func:`mean_std_text` and :func:`summary_table` format the rows of
:func:`smelib.study.results.summarize`; :data:`CONCLUSIONS` lists the paper's claims with :data:`PAPER_MIOU`, its
numbers; :func:`conclusion_verdict` and :func:`conclusions_table` read each claim against the seed spread.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from smelib.study.plan import DEFAULT_CONFIGS, TABLE_MODELS, pick_row

if TYPE_CHECKING:
    from smelib.study.tables import Table



def summary_value(row: Mapping[str, Any] | None, key: str) -> float | None:
    """``row[key]`` as a float; None when the row is None or the field is missing or empty (CSV rows hold
    strings, :func:`smelib.study.results.summarize` rows numbers)."""
    v = row.get(key) if row else None
    return None if v in (None, "") else float(v)


def mean_std_text(row: Mapping[str, Any] | None, key: str = "miou") -> str:
    """``"<mean> ± <std>"`` of metric ``key`` in percent with 2 decimals (from the row's ``<key>_mean`` and
    ``<key>_std``); ``" ± –"`` when there is no std (one seed), ``"not yet measured"`` when there is no mean."""
    mean, std = summary_value(row, f"{key}_mean"), summary_value(row, f"{key}_std")
    if mean is None:
        return "not yet measured"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else " ± –")


def summary_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Every summary row: config, model, split, epochs, number of seeds, seeds, and test mIoU, defect-class mIoU (mean ±
    std, :func:`mean_std_text`), precision and MPA (means), in percent.

    Args:
        rows: ``results/summary.csv`` rows (:func:`smelib.study.status.read_summary`) or
            :func:`smelib.study.results.summarize`
            output; each needs ``config``, ``model``, ``split``, ``n_seeds``, ``seeds``, ``miou_mean``,
            ``miou_defects_mean``, ``precision_mean`` and ``mpa_mean`` (``*_std`` optional).
    """
    from smelib.study.tables import Table

    def pct(row: Mapping[str, Any], key: str) -> str:
        v = summary_value(row, key)
        return "–" if v is None else f"{100 * v:.2f}"

    def minutes(row: Mapping[str, Any]) -> str:
        v = summary_value(row, "train_minutes")
        return "–" if v is None else f"{v:.0f}"

    return Table(["config", "model", "split", "epochs", "n", "seed ids", "mIoU %", "defects mIoU %", "precision %",
                  "MPA %", "minutes", "machines"],
                 [[r["config"], r["model"], r["split"], r.get("epochs") or "–", int(r["n_seeds"]), r["seeds"],
                   mean_std_text(r),
                   mean_std_text(r, "miou_defects"), pct(r, "precision_mean"), pct(r, "mpa_mean"), minutes(r),
                   short_hosts(r.get("hosts"))] for r in rows],
                 title="All aggregated runs (mean ± sample std over seeds; minutes: mean wall time per run)")


def short_hosts(hosts: str | None) -> str:
    """A summary row's ``hosts`` (:func:`smelib.study.results.host_label`, ``" | "``-separated) shortened to vendor and
    vector ISA, e.g. ``"Intel(R) Xeon(R) Processor [avx512] x2 | AMD EPYC [isa unknown] x2"`` ->
    ``"Intel avx512, AMD ?"`` (``?``: the record predates the ISA field); ``"–"`` when there is none."""
    if not hosts:
        return "–"
    out = []
    for label in str(hosts).split(" | "):
        vendor = label.split(" ", 1)[0].replace("(R)", "")
        isa = label.split("[", 1)[1].split("]", 1)[0] if "[" in label else "?"
        out.append(f"{vendor} {'?' if isa == 'isa unknown' else isa}" if label != "unknown" else "?")
    return ", ".join(dict.fromkeys(out))


def seed_scores(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                models: Sequence[str] = TABLE_MODELS, splits: Sequence[str] = ("official", "grouped"),
                configs: Collection[str] = DEFAULT_CONFIGS, key: str = "miou") -> list[dict[str, Any]]:
    """The single runs behind the summary rows the tables read: for each model and split, the row
    :func:`~smelib.study.plan.pick_row` picks, and for each run id it lists, that run's final metric.

    Args:
        rows: summary rows (their ``run_ids`` name the runs averaged).
        records: run records (:func:`smelib.study.results.load_records`).
        key: a metric of the record's ``final.test`` (``final.val`` when a run has no test metrics).

    Returns:
        ``[{"model", "split", "config", "seed", "run_id", "value" (points)}]``, models in ``models`` order; a run id
        without a record is left out.
    """
    by_id = {str(r.get("run_id")): r for r in records}
    out = []
    for model in models:
        for split in splits:
            row = pick_row(rows, model, split, configs)
            for run_id in str((row or {}).get("run_ids") or "").split():
                rec = by_id.get(run_id)
                final = (rec or {}).get("final") or {}
                metrics = final.get("test") or final.get("val")
                if rec is None or not metrics or metrics.get(key) is None:
                    continue
                out.append({"model": model, "split": split, "config": row["config"],  # type: ignore[index]
                            "seed": int(rec.get("seed", 0)), "run_id": run_id, "value": 100 * float(metrics[key])})
    return out


def learning_curve(records: Sequence[Mapping[str, Any]], model: str = "sme_deeplabv3plus", split: str = "grouped",
                   seed: int = 0, config: str = "cpu_budget") -> list[dict[str, Any]]:
    """The learning curve behind the protocol's epoch count: one point per epoch count that ``model`` was
    trained for (same ``config``, ``split`` and ``seed``; the latest completed run when one count was run twice),
    sorted by epochs. Each run has its own cosine schedule, so every point is a finished training, not an
    intermediate epoch of a longer one.

    Returns:
        ``[{"epochs", "minutes" (wall time of the whole run), "images_per_s", "val_miou", "test_miou",
        "test_miou_defects", "channels_last" (False for runs from before the layout was recorded), "run_id"}]``;
        metrics are fractions.
    """
    latest: dict[int, Mapping[str, Any]] = {}
    for r in records:
        if (r.get("status") != "completed" or r.get("model") != model or r.get("config_name") != config
                or (r.get("split") or {}).get("kind") != split or int(r.get("seed", -1)) != seed):
            continue
        e = int(r["epochs"])
        if e not in latest or str(r["run_id"]) > str(latest[e]["run_id"]):
            latest[e] = r
    out = []
    for e in sorted(latest):
        r = latest[e]
        final = r.get("final") or {}
        out.append({
            "epochs": e, "minutes": float(r["wall_seconds"]) / 60, "images_per_s": r.get("images_per_s"),
            "val_miou": (final.get("val") or {}).get("miou"), "test_miou": (final.get("test") or {}).get("miou"),
            "test_miou_defects": ((final.get("test") or {}).get("defects_only") or {}).get("miou"),
            "channels_last": bool((r.get("host") or {}).get("channels_last", False)),
            "thread_env": (r.get("host") or {}).get("thread_env"), "run_id": r["run_id"],
        })
    return out


def budget_table(rows: Sequence[Mapping[str, Any]], budgets: Sequence[int], split: str = "grouped",
                 models: Sequence[str] = TABLE_MODELS, configs: Collection[str] = DEFAULT_CONFIGS) -> Table:
    """Test mIoU of each model trained for each of several epoch counts (:func:`~smelib.study.plan.pick_row` with
    ``epochs``):
    mean ± std and seeds per budget, and the change from the first budget to the last where both exist.
    Models with no row at any of the budgets are left out.

    Args:
        rows: summary rows (``results/summary.csv`` or :func:`smelib.study.results.summarize`).
        budgets: epoch counts, shortest first (e.g. ``(3, 6)``: the first protocol and the current one).
    """
    from smelib.study.tables import Table

    if len(budgets) < 2:
        raise ValueError(f"budget_table compares at least 2 epoch counts, got {list(budgets)}")
    body = []
    for model in models:
        picked = [pick_row(rows, model, split, configs, epochs=e) for e in budgets]
        if all(r is None for r in picked):
            continue
        first, last = summary_value(picked[0], "miou_mean"), summary_value(picked[-1], "miou_mean")
        cells: list[object] = [model]
        for r in picked:
            cells += [mean_std_text(r), "–" if r is None else int(r["n_seeds"])]
        cells.append("–" if first is None or last is None else f"{100 * (last - first):+.2f}")
        body.append(cells)
    cols = ["model"] + [c for e in budgets for c in (f"{e} epochs mIoU %", "n")]
    return Table(cols + [f"{budgets[0]} → {budgets[-1]} epochs (points)"], body,
                 title=f"Test mIoU by training length, {split} split (each length its own finished runs)")


@dataclass(frozen=True)
class Conclusion:
    """One of the paper's qualitative conclusions, as "``better`` scores higher test mIoU than ``worse``"."""

    claim: str
    better: str
    worse: str


#: The paper's conclusions that our tables can test (Table 1 and Table 3 rows as registered models).
CONCLUSIONS: tuple[Conclusion, ...] = (
    Conclusion("StarNet beats MobileNetV2 (SME vs DeepLabV3+ MobileNetV2)", "sme_deeplabv3plus",
               "deeplabv3plus_mobilenetv2"),
    Conclusion("StarNet beats Xception (SME vs DeepLabV3+ Xception)", "sme_deeplabv3plus", "deeplabv3plus_xception"),
    Conclusion("MSAA helps (StarNet + MSAA vs StarNet + ASPP)", "starnet_msaa", "starnet_aspp"),
    Conclusion("ELA helps (StarNet + ASPP + ELA vs StarNet + ASPP)", "starnet_aspp_ela", "starnet_aspp"),
    Conclusion("ELA helps with MSAA (SME vs StarNet + MSAA)", "sme_deeplabv3plus", "starnet_msaa"),
    Conclusion("together they help most (SME vs StarNet + ASPP)", "sme_deeplabv3plus", "starnet_aspp"),
    Conclusion("SME beats HRNet (Table 1)", "sme_deeplabv3plus", "hrnet"),
    Conclusion("SME beats PSPNet (Table 1)", "sme_deeplabv3plus", "pspnet"),
    Conclusion("SME beats Res-UNet (Table 1)", "sme_deeplabv3plus", "resunet"),
)


#: Test mIoU (%) that the paper's text states, by our registry model (official split, 300 epochs, 512 px); the
#: Table 1 baselines' numbers are not in the surviving text.
PAPER_MIOU: dict[str, float] = {"sme_deeplabv3plus": 88.87, "starnet_aspp": 88.77, "starnet_msaa": 88.52,
                                "starnet_aspp_ela": 88.57}


def paper_difference(c: Conclusion) -> str:
    """The paper's own difference for a conclusion, from :data:`PAPER_MIOU`, or that the text states none."""
    if c.better in PAPER_MIOU and c.worse in PAPER_MIOU:
        return f"{PAPER_MIOU[c.better] - PAPER_MIOU[c.worse]:+.2f} points (one run each, official split)"
    return "claimed; numbers not in the text"


def pooled_seed_std(rows: Sequence[Mapping[str, Any]], split: str = "grouped", epochs: int | None = None,
                    key: str = "miou") -> tuple[float | None, int]:
    """The run-to-run spread of one training, pooled over every model's row on ``split`` that has 2+ seeds.

    Each model's row is the one :func:`~smelib.study.plan.pick_row` reads (the protocol's epochs, or ``epochs``); the
    pooled variance
    is ``sum((n_i - 1) s_i²) / sum(n_i - 1)``, i.e. the models are assumed to differ in mean, not in seed noise.

    Returns:
        ``(pooled standard deviation as a fraction, or None when no row has 2+ seeds, its degrees of freedom)``.
    """
    num, dof = 0.0, 0
    for model in sorted({str(r.get("model")) for r in rows if r.get("split") == split}):
        r = pick_row(rows, model, split, epochs=epochs)
        std = summary_value(r, f"{key}_std")
        if r is None or std is None or int(r["n_seeds"]) < 2:
            continue
        num += (int(r["n_seeds"]) - 1) * std**2
        dof += int(r["n_seeds"]) - 1
    return (math.sqrt(num / dof), dof) if dof else (None, 0)


@dataclass(frozen=True)
class SplitGap:
    """How much the official split's training copies of its test images raise test mIoU (:func:`split_gap`).
    Fractions, not points."""

    #: ``(model, official − grouped mean, official seeds, grouped seeds)`` per model measured on both splits
    pairs: tuple[tuple[str, float, int, int], ...]
    #: the unweighted mean of the models' gaps
    mean: float | None
    #: its standard error from the scatter of the models' gaps, ``std / sqrt(k)`` (None below 2 models)
    se: float | None
    #: the grouped split's pooled seed spread (:func:`pooled_seed_std`) the homogeneity check assumes
    seed_std: float | None
    #: ``sum((g_i - g_w)² / v_i)`` with ``v_i = seed_std² (1/n_official + 1/n_grouped)`` and ``g_w`` the
    #: ``1/v_i``-weighted mean: chi-squared with ``k - 1`` degrees of freedom if every model had the same gap
    chi2: float | None
    dof: int
    #: the chance of a ``chi2`` at least this large under one common gap
    p_common: float | None


def split_gap(rows: Sequence[Mapping[str, Any]], configs: Collection[str] = DEFAULT_CONFIGS,
              key: str = "miou") -> SplitGap:
    """Official − grouped test mIoU (or another metric: ``<key>_mean`` of the rows, e.g. ``key="iou_inclusion"``) for
    every model whose :func:`~smelib.study.plan.pick_row` rows on both splits share a protocol, their mean over
    models, and whether the
    models' gaps differ by more than seed noise alone would make them (only for a metric whose rows hold a
    ``<key>_std``; otherwise ``seed_std``, ``chi2`` and ``p_common`` are None).

    Each model's gap is one draw: a single official run against the grouped mean scatters with the seed noise of
    both sides. Under one common gap for every model, ``chi2`` follows a chi-squared law with ``k - 1`` degrees of
    freedom, so a small ``p_common`` says the duplicates help some models more than others; a large one says the
    records cannot tell the models' gaps apart (not that they are equal). The seed noise is the grouped split's
    pooled spread, assumed for the official side too.
    """
    pairs = []
    for model in sorted({str(r.get("model")) for r in rows if r.get("split") == "official"}):
        o, g = pick_row(rows, model, "official", configs), pick_row(rows, model, "grouped", configs)
        mo, mg = summary_value(o, f"{key}_mean"), summary_value(g, f"{key}_mean")
        if o is None or g is None or mo is None or mg is None or o["config"] != g["config"]:
            continue
        pairs.append((model, mo - mg, int(o["n_seeds"]), int(g["n_seeds"])))
    k = len(pairs)
    gaps = [p[1] for p in pairs]
    mean = sum(gaps) / k if k else None
    se = statistics.stdev(gaps) / math.sqrt(k) if k > 1 else None
    s, _ = pooled_seed_std(rows, "grouped", key=key)
    chi2 = p = None
    if k > 1 and s:
        var = [s**2 * (1 / no + 1 / ng) for _, _, no, ng in pairs]
        w = sum(g / v for g, v in zip(gaps, var)) / sum(1 / v for v in var)
        chi2 = sum((g - w) ** 2 / v for g, v in zip(gaps, var))
        p = float(torch.special.gammaincc(torch.tensor((k - 1) / 2, dtype=torch.float64),
                                          torch.tensor(chi2 / 2, dtype=torch.float64)))
    return SplitGap(tuple(pairs), mean, se, s, chi2, max(k - 1, 0), p)


def _difference_and_se(better: Mapping[str, Any] | None, worse: Mapping[str, Any] | None, key: str,
                       pooled: tuple[float | None, int] | None, pooled_from: str | None,
                       pooled_for_all: bool) -> tuple[float | None, float | None, str, int, int]:
    """``(difference in points, its standard error in points, the borrowed-spread note, n1, n2)`` of two summary
    rows, with :func:`conclusion_verdict`'s rules for borrowing a spread; the difference is None when a row or its
    mean is missing, the standard error None when no spread can be estimated."""
    a, b = summary_value(better, f"{key}_mean"), summary_value(worse, f"{key}_mean")
    if a is None or b is None:
        return None, None, "", 0, 0
    diff = 100 * (a - b)
    n1, n2 = int(better["n_seeds"]), int(worse["n_seeds"])  # type: ignore[index]
    s1, s2 = summary_value(better, f"{key}_std"), summary_value(worse, f"{key}_std")
    borrowed = ""
    if n1 < 2 and n2 >= 2 and s2 is not None:
        s1, borrowed = s2, f" (seeds: 1 vs {n2}; the single run assumed to scatter like the {n2})"
    elif n2 < 2 and n1 >= 2 and s1 is not None:
        s2, borrowed = s1, f" (seeds: {n1} vs 1; the single run assumed to scatter like the {n1})"
    if (pooled_for_all or (n1 < 2 and n2 < 2)) and pooled is not None and pooled[0] is not None:
        s1 = s2 = pooled[0]
        rows_of = "the pooled multi-seed rows" + ("" if pooled_from is None else f" of the {pooled_from} split")
        borrowed = (f" (seeds: {n1} vs {n2}; both {'runs' if n1 < 2 and n2 < 2 else 'rows'} assumed to scatter "
                    f"like {rows_of}, s = {100 * pooled[0]:.2f} points, {pooled[1]} degrees of freedom)")
    if s1 is None or s2 is None or (n1 < 2 and n2 < 2 and not borrowed):
        return diff, None, borrowed, n1, n2
    return diff, 100 * math.sqrt(s1**2 / n1 + s2**2 / n2), borrowed, n1, n2


def _verdict_word(diff: float, se: float, z: float) -> str:
    """``"holds"``, ``"reversed"`` or ``"within the seed spread"``: ``diff`` against ``z`` standard errors ``se``."""
    if se == 0:
        return "holds" if diff > 0 else ("reversed" if diff < 0 else "within the seed spread")
    t = diff / se
    return "holds" if t > z else ("reversed" if t < -z else "within the seed spread")


def conclusion_verdict(better: Mapping[str, Any] | None, worse: Mapping[str, Any] | None,
                       key: str = "miou", z: float = 2.0,
                       pooled: tuple[float | None, int] | None = None,
                       pooled_from: str | None = None, pooled_for_all: bool = False) -> tuple[float | None, str]:
    """Whether two summary rows support "``better`` > ``worse``" on ``<key>_mean``.

    The difference of the means is compared with its standard error, ``sqrt(s1²/n1 + s2²/n2)`` from the rows'
    sample standard deviations: ``"holds"`` when the difference exceeds ``z`` standard errors, ``"reversed"``
    when it is below ``-z``, ``"within the seed spread"`` otherwise. When one side has a single seed and the
    other several, the single run is assumed to scatter like the measured side (``s1 = s2``, so the standard
    error is ``s * sqrt(1/n + 1)``): :data:`~smelib.study.plan.REQUIRED_RUNS` asks only one seed of most rows, and the
    seed spread
    of the multi-seed row is the only estimate of run-to-run noise there is. Such a verdict names the assumption.
    With a single seed on both sides the comparison itself holds no spread: given ``pooled`` (from
    :func:`pooled_seed_std`) both runs are assumed to scatter like the pooled multi-seed rows (standard error
    ``s * sqrt(2)``), and the verdict names that assumption (and ``pooled_from``, the split the pool comes from, when
    given); without it the verdict says no spread can be estimated. With ``pooled_for_all`` the pooled spread
    replaces both rows' own spreads whatever their seed counts (standard error ``s * sqrt(1/n1 + 1/n2)``): a second
    reading for rows whose own spread rests on few seeds.

    Returns:
        ``(difference in points or None, verdict)``.
    """
    diff, se, borrowed, n1, n2 = _difference_and_se(better, worse, key, pooled, pooled_from, pooled_for_all)
    if diff is None:
        return None, "not yet measured"
    if se is None:
        return diff, f"no spread yet (seeds: {n1} vs {n2})"
    return diff, _verdict_word(diff, se, z) + borrowed


@dataclass(frozen=True)
class ConclusionEffect:
    """One of :data:`CONCLUSIONS` read on one split (:func:`conclusion_effects`); points, not fractions."""

    conclusion: Conclusion
    split: str
    #: ``better`` − ``worse`` mean test mIoU, None when a row is missing
    difference: float | None
    #: its standard error from the seed spread (:func:`conclusion_verdict`'s rules), None when none can be estimated
    se: float | None
    #: how many standard errors a difference must exceed to count as holding or reversed
    z: float
    #: ``"holds"``, ``"reversed"``, ``"within the seed spread"``, ``"no spread yet"`` or ``"not yet measured"``
    verdict: str
    #: which spread was borrowed and from where (empty when both rows have their own)
    assumption: str
    n_better: int
    n_worse: int

    @property
    def low(self) -> float | None:
        """``difference - z * se`` (None without a standard error)."""
        return None if self.difference is None or self.se is None else self.difference - self.z * self.se

    @property
    def high(self) -> float | None:
        """``difference + z * se`` (None without a standard error)."""
        return None if self.difference is None or self.se is None else self.difference + self.z * self.se


def conclusion_effects(rows: Sequence[Mapping[str, Any]], split: str = "grouped", spread_split: str | None = None,
                       epochs: int | None = None, z: float = 2.0,
                       conclusions: Sequence[Conclusion] | None = None) -> list[ConclusionEffect]:
    """Each conclusion (default :data:`CONCLUSIONS`) on ``split`` as a difference with a seed-based interval,
    ``difference ± z * se``, read as :func:`conclusions_table` reads it (single runs on both sides borrow
    :func:`pooled_seed_std` of ``spread_split``, default ``split``).

    Args:
        rows: summary rows (``results/summary.csv`` or :func:`smelib.study.results.summarize`).
        epochs: compare the rows trained for this many epochs (default: each protocol's own).
    """
    source = spread_split or split
    pooled = pooled_seed_std(rows, source, epochs=epochs)
    out = []
    for c in CONCLUSIONS if conclusions is None else conclusions:
        hi, lo = pick_row(rows, c.better, split, epochs=epochs), pick_row(rows, c.worse, split, epochs=epochs)
        diff, se, borrowed, n1, n2 = _difference_and_se(hi, lo, "miou", pooled,
                                                        None if source == split else source, False)
        if diff is None:
            verdict = "not yet measured"
        elif se is None:
            verdict = "no spread yet"
        else:
            verdict = _verdict_word(diff, se, z)
        out.append(ConclusionEffect(c, split, diff, se, z, verdict, borrowed.strip(" ()"), n1, n2))
    return out


def conclusions_table(rows: Sequence[Mapping[str, Any]], split: str = "grouped", epochs: int | None = None,
                      spread_split: str | None = None) -> Table:
    """One row per :data:`CONCLUSIONS` entry on ``split``: both models' mIoU (mean ± std, n), the difference in
    points and :func:`conclusion_verdict`'s reading (single runs on both sides: against :func:`pooled_seed_std`).

    Args:
        epochs: compare the rows trained for this many epochs (see :func:`~smelib.study.plan.pick_row`); default: each
            protocol's
            own epochs.
        spread_split: pool the seed spread of single-run comparisons from this split's rows (default ``split``):
            the official split has one seed per row, so its single runs can only borrow the grouped split's spread.
    """
    from smelib.study.tables import Table

    body = []
    source = spread_split or split
    pooled = pooled_seed_std(rows, source, epochs=epochs)
    for c in CONCLUSIONS:
        hi, lo = pick_row(rows, c.better, split, epochs=epochs), pick_row(rows, c.worse, split, epochs=epochs)
        diff, verdict = conclusion_verdict(hi, lo, pooled=pooled, pooled_from=None if source == split else source)
        n = lambda r: "–" if r is None else int(r["n_seeds"])  # noqa: E731
        body.append([c.claim, paper_difference(c), mean_std_text(hi), n(hi), mean_std_text(lo), n(lo),
                     "–" if diff is None else f"{diff:+.2f}", verdict])
    return Table(["the paper's conclusion", "paper's difference", "first mIoU %", "n", "second mIoU %", "n",
                  "our difference (points)", "on our records"], body,
                 title=f"The paper's conclusions on our {split}-split records"
                       + ("" if epochs is None else f", {epochs}-epoch runs"))


#: The short word :func:`verdict_table` shows for each :class:`ConclusionEffect` verdict.
VERDICT_WORDS: dict[str, str] = {"holds": "holds", "reversed": "reversed", "within the seed spread": "within spread",
                                 "no spread yet": "no spread", "not yet measured": "–"}


def verdict_table(effects: Mapping[str, Sequence[ConclusionEffect]], title: str | None = None) -> Table:
    """One row per conclusion, one column per split of ``effects`` (``{split: conclusion_effects(...)}``): our
    difference in points and its verdict in a word (:data:`VERDICT_WORDS`), beside the paper's own difference
    (from :data:`PAPER_MIOU`; "–" where its text states only the claim). Narrow enough for the page: the claims
    are shortened to the words before their parenthesis."""
    from smelib.study.tables import Table

    splits = list(effects)
    body = []
    for i, first in enumerate(effects[splits[0]]):
        c = first.conclusion
        paper = (f"{PAPER_MIOU[c.better] - PAPER_MIOU[c.worse]:+.2f}" if c.better in PAPER_MIOU
                 and c.worse in PAPER_MIOU else "–")
        cells: list[object] = [c.claim.split(" (", 1)[0], paper]
        for split in splits:
            e = effects[split][i]
            word = VERDICT_WORDS.get(e.verdict, e.verdict)
            cells.append(word if e.difference is None else f"{e.difference:+.2f} {word}")
        body.append(cells)
    return Table(["the paper's conclusion", "paper", *(f"ours, {s}" for s in splits)], body, title=title)


def resolution_table(rows: Sequence[Mapping[str, Any]], split: str = "grouped", z: float = 2.0) -> Table:
    """Whether the paper's own differences (:data:`PAPER_MIOU`) are larger than what one run against one run can
    resolve when runs scatter like ours: one row per :data:`CONCLUSIONS` entry with both paper numbers, holding
    the paper's difference, the smallest difference ``z * s * sqrt(2)`` that two single runs resolve at the pooled
    seed spread ``s`` of ``split`` (:func:`pooled_seed_std`), and their ratio.

    Our spread is that of a 6-epoch, 200 px protocol; a 300-epoch run may scatter less, so the ratio says what
    single runs like ours could show, not what the paper's runs could.

    Raises:
        ValueError: no row of ``split`` has two or more seeds, so there is no spread to compare with.
    """
    from smelib.study.tables import Table

    s, dof = pooled_seed_std(rows, split)
    if s is None:
        raise ValueError(f"no {split}-split summary row has 2+ seeds: no seed spread to compare the paper's "
                         "differences with")
    smallest = 100 * z * s * math.sqrt(2)
    body = []
    for c in CONCLUSIONS:
        if c.better in PAPER_MIOU and c.worse in PAPER_MIOU:
            d = PAPER_MIOU[c.better] - PAPER_MIOU[c.worse]
            body.append([c.claim, f"{d:+.2f}", f"{smallest:.2f}", f"{abs(d) / smallest:.2f}"])
    return Table(["the paper's conclusion", "paper's difference (points)", "smallest resolvable, 1 vs 1 run",
                  "|paper's| / resolvable"], body,
                 title=f"The paper's differences against our pooled {split}-split seed spread "
                       f"(s = {100 * s:.2f} points, {dof} degrees of freedom, z = {z:g})")
