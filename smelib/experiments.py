"""Experiment bookkeeping for the book's result chapters: which runs are still missing, and one checkpoint scored
under several decision rules in one pass.

>>> from smelib.results import load_records, summarize
>>> from smelib.experiments import missing_runs
>>> todo = missing_runs(summarize(load_records("results/runs")))   # what the planned tables still lack

:func:`missing_runs` compares the rows of :func:`smelib.results.summarize` (or of ``results/summary.csv``,
read with :func:`smelib.status.read_summary`) with :data:`REQUIRED_RUNS`, the plan of Table 1 and Table 3:
on the grouped split 3 seeds of SME-DeepLabV3+ and the two DeepLabV3+ baselines and at least one of every
other model, and on the official split at least one of each.

:func:`evaluate_decisions` runs a model once over a dataset and scores every given
:class:`smelib.mechanisms.DecisionRule` on the same probabilities, also recording the threshold each image
received. Batches are formed exactly as :func:`smelib.inference.evaluate` forms them, so each rule's metrics
equal that function's with ``decision=rule`` (a test checks this).

:func:`summary_value`, :func:`mean_std_text` and :func:`summary_table` format summary rows for the book's
ablation chapter.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from smelib.metrics import ConfusionMatrix, SegMetrics

if TYPE_CHECKING:
    from smelib.viz import Table

__all__ = [
    "CONCLUSIONS", "PAPER_MIOU", "Conclusion", "budget_table", "conclusion_verdict", "conclusions_table",
    "paper_difference",
    "DEFAULT_CONFIGS", "OPTION_RUNS", "REQUIRED_RUNS", "DecisionOutcome", "MissingRun", "RunRequirement",
    "evaluate_decisions", "missing_option_runs",
    "pooled_seed_std", "resolution_table", "SplitGap", "split_gap", "short_hosts", "time_estimate", "TimeEstimate",
    "host_speed_factor",
    "learning_curve", "mean_std_text", "missing_runs", "pick_row", "protocol_epochs", "seeds_of", "summary_table",
    "summary_value",
    "tau_counts",
    "DECISION_FORMAT", "DECISION_METRICS", "DECISION_TOLERANCE", "DecisionRecordError", "decision_differences",
    "decision_record", "decision_record_path", "decision_seed_table", "decision_spread", "decision_spread_table",
    "load_decision_records", "select_decision_records", "write_decision_record",
]


@dataclass(frozen=True)
class RunRequirement:
    """A planned cell of the result tables: ``model`` on the ``split`` split, with at least ``n_seeds`` seeds."""

    model: str
    split: str
    n_seeds: int


#: The models of the paper's Table 1 (comparison) and Table 3 (ablation) as registered in :mod:`smelib.models`.
TABLE_MODELS: tuple[str, ...] = (
    "sme_deeplabv3plus", "deeplabv3plus_mobilenetv2", "deeplabv3plus_xception", "starnet_aspp",
    "starnet_aspp_ela", "starnet_msaa", "resunet", "pspnet", "hrnet",
)

#: Models that need 3 seeds on the grouped split (the headline comparison); every other needs 1.
THREE_SEED_MODELS: tuple[str, ...] = ("sme_deeplabv3plus", "deeplabv3plus_mobilenetv2", "deeplabv3plus_xception")

#: The plan: grouped split (3 seeds for :data:`THREE_SEED_MODELS`, else 1), then official split (1 seed each).
REQUIRED_RUNS: tuple[RunRequirement, ...] = (
    *(RunRequirement(m, "grouped", 3 if m in THREE_SEED_MODELS else 1) for m in TABLE_MODELS),
    *(RunRequirement(m, "official", 1) for m in TABLE_MODELS),
)

#: Training protocols whose runs count towards the plan (ablation variants such as ``cpu_budget_prior`` do not).
DEFAULT_CONFIGS: tuple[str, ...] = ("cpu_budget", "paper")


def protocol_epochs(config: str) -> int | None:
    """``train.epochs`` of ``configs/<config>.yaml`` in this repository (None when there is no such file).

    A run of that config counts towards the plan only when it trained this many epochs: learning-curve runs
    (``--epochs N``) share the config's name but are other protocols.
    """
    from smelib.config import load_config
    from smelib.settings import repo_root

    path = repo_root() / "configs" / f"{config}.yaml"
    return int(load_config(path)["train"]["epochs"]) if path.is_file() else None


def _epochs_match(row: Mapping[str, Any], epochs: Mapping[str, int | None]) -> bool:
    """Whether a summary row was trained for its config's protocol epochs (rows without an ``epochs`` field,
    from summaries older than that column, and configs without a file count)."""
    want = epochs.get(str(row.get("config")))
    have = row.get("epochs")
    return want is None or have in (None, "") or int(have) == want


@dataclass(frozen=True)
class MissingRun:
    """One training run the plan still needs.

    Attributes:
        model, split, seed: what to train.
        config: the protocol to train it with (``configs/<config>.yaml``).
        have: seeds of this model and split already measured under ``config``.
        need: seeds the plan asks for.
    """

    model: str
    split: str
    seed: int
    config: str
    have: int
    need: int
    overrides: tuple[str, ...] = ()

    @property
    def config_name(self) -> str:
        """The protocol name its run record will carry: a ``name=`` override's, else ``config``."""
        return next((o.split("=", 1)[1] for o in self.overrides if o.startswith("name=")), self.config)

    @property
    def command(self) -> str:
        """The ``smelib train`` command line for this run (``KEY=VALUE`` overrides last)."""
        return (f"smelib train --config configs/{self.config}.yaml --model {self.model} "
                f"--split {self.split} --seed {self.seed}" + "".join(f" {o}" for o in self.overrides))


@dataclass(frozen=True)
class ResumableRun:
    """A run record still marked ``running``: a run that was stopped after writing its resumable state
    ``checkpoints/last.pt``, or one that is training now (``live``).

    Attributes:
        run_dir: its run directory.
        model, split, seed, config: what it trains (``config`` is the record's ``config_name``).
        steps_done: steps of its last checkpoint, as the record last said (0: not said).
        steps_total: steps of the whole run (epochs x steps per epoch, or ``train.max_steps`` when smaller).
        live: its last training process is still running on this machine: do not resume it. None: the record
            predates process information (``segments``), so whether it still trains is unknown.
    """

    run_dir: Path
    model: str
    split: str
    seed: int
    config: str
    steps_done: int
    steps_total: int
    live: bool | None

    @property
    def command(self) -> str:
        """The ``smelib train`` command line that continues it."""
        return f"smelib train --out {self.run_dir} --resume"

    @property
    def fraction_left(self) -> float:
        """The share of its steps still to train, in [0, 1]."""
        return 1.0 - min(self.steps_done, self.steps_total) / self.steps_total if self.steps_total else 1.0

    def matches(self, m: MissingRun) -> bool:
        """Whether it is the run ``m`` asks for (same protocol name, model, split and seed)."""
        return (self.config, self.model, self.split, self.seed) == (m.config_name, m.model, m.split, m.seed)


def _process_alive(segment: Mapping[str, Any]) -> bool:
    """Whether a record segment's process still trains on this machine (same host name, a live ``smelib`` process
    under its pid); a pid reused by another program does not count."""
    import socket

    pid = segment.get("pid")
    if not isinstance(pid, int) or segment.get("host", {}).get("hostname") != socket.gethostname():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"smelib" in cmdline and b"train" in cmdline


def _running_runs(runs_dir: str | os.PathLike) -> list[tuple[ResumableRun, bool]]:
    """Every record under ``runs_dir`` still marked ``running``, sorted by run id, with whether its
    ``checkpoints/last.pt`` exists."""
    from smelib.results import _read_object

    out = []
    for path in sorted(Path(runs_dir).glob("*/record.json")):
        rec, run_dir = _read_object(path, "run record"), path.parent
        if rec.get("status") != "running":
            continue
        segs = rec.get("segments") or []
        live = _process_alive(segs[-1]) if segs else None
        total = int(rec.get("epochs") or 0) * int(rec.get("steps_per_epoch") or 0)
        max_steps = (rec.get("config") or {}).get("train", {}).get("max_steps")
        if max_steps:
            total = min(total, int(max_steps)) if total else int(max_steps)
        run = ResumableRun(run_dir, str(rec.get("model")), str((rec.get("split") or {}).get("kind")),
                           int(rec.get("seed", 0)), str(rec.get("config_name")), int(rec.get("steps_done") or 0),
                           total, live)
        out.append((run, (run_dir / "checkpoints" / "last.pt").is_file()))
    return out


def resumable_runs(runs_dir: str | os.PathLike) -> list[ResumableRun]:
    """Every run under ``runs_dir`` that stopped before its end and can be continued with ``--resume`` (records
    with status ``running`` and a ``checkpoints/last.pt``), or that trains now (``live``, checkpoint or not), sorted
    by run id. A :func:`missing_runs` item that one of them matches should resume it, or wait for it, rather than
    start again (``smelib results --missing`` does)."""
    return [run for run, checkpoint in _running_runs(runs_dir) if run.live or checkpoint]


def abandoned_runs(runs_dir: str | os.PathLike) -> list[ResumableRun]:
    """Every run under ``runs_dir`` still marked ``running`` that neither trains now nor has a checkpoint to resume
    from, sorted by run id: it stopped before its first checkpoint, or its checkpoint is gone. Checkpoints are not
    committed (git ignores ``checkpoints/``), so a record left behind by a run that a clone or a fresh machine
    carries over is one of these: ``steps_done`` says how far it had come, and the run must start again."""
    return [run for run, checkpoint in _running_runs(runs_dir) if not run.live and not checkpoint]


def seeds_of(row: Mapping[str, Any]) -> list[int]:
    """The seeds of a summary row: its ``seeds`` field (``"0 1 2"`` in the CSV, the same string from
    :func:`smelib.results.summarize`); an empty or missing field gives ``[]``."""
    raw = row.get("seeds")
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)):
        return [int(s) for s in raw]
    return [int(s) for s in str(raw).split()]


def missing_runs(
    rows: Sequence[Mapping[str, Any]],
    required: Sequence[RunRequirement] = REQUIRED_RUNS,
    configs: Collection[str] = DEFAULT_CONFIGS,
) -> list[MissingRun]:
    """The runs still needed to fill ``required``, given the summary ``rows`` measured so far.

    For each requirement, only rows of that model and split whose ``config`` is in ``configs`` and trained that
    config's epochs (:func:`protocol_epochs`) count, and the
    seeds of different configs are never pooled: the config with the most seeds is taken (ties: the first in
    ``configs``), and the seeds it lacks become :class:`MissingRun` items, the smallest unused seed numbers
    first, trained with that config (with the first of ``configs`` when nothing was measured).

    Args:
        rows: summary rows (:func:`smelib.results.summarize` output or ``results/summary.csv`` rows).
        required: the plan (default :data:`REQUIRED_RUNS`).
        configs: protocols that count, in order of preference.

    Returns:
        One item per missing (model, split, seed), in the order of ``required``.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs must name at least one training protocol")
    epochs = {c: protocol_epochs(c) for c in configs}
    out: list[MissingRun] = []
    for req in required:
        by_config: dict[str, set[int]] = {c: set() for c in configs}
        for row in rows:
            if (row.get("model") == req.model and row.get("split") == req.split and row.get("config") in by_config
                    and _epochs_match(row, epochs)):
                by_config[str(row["config"])].update(seeds_of(row))
        config = max(configs, key=lambda c: (len(by_config[c]), -configs.index(c)))
        have = by_config[config]
        seed = 0
        for _ in range(max(0, req.n_seeds - len(have))):
            while seed in have:
                seed += 1
            out.append(MissingRun(req.model, req.split, seed, config, len(have), req.n_seeds))
            seed += 1
    return out


#: The initialisation ablation of chapter "What the paper leaves unspecified": each option's protocol name and the
#: overrides that turn ``configs/cpu_budget.yaml`` into it. Trained on SME-DeepLabV3+, grouped split, 3 seeds.
OPTION_RUNS: dict[str, tuple[str, ...]] = {
    "cpu_budget_prior": ("model_init.classifier_prior=true",),
    "cpu_budget_cw": ("model_init.class_weights=inverse_sqrt",),
}


def missing_option_runs(rows: Sequence[Mapping[str, Any]], options: Mapping[str, Sequence[str]] = OPTION_RUNS,
                        base: str = "cpu_budget", model: str = "sme_deeplabv3plus", split: str = "grouped",
                        n_seeds: int = 3) -> list[MissingRun]:
    """The option runs the initialisation ablation still needs: for each option, seeds ``0 .. n_seeds-1`` of
    ``model`` on ``split`` trained with ``base``'s config, its epochs and the option's overrides (``name=<option>``
    first, so the run is recorded under the option's name and never mixes into ``base``'s rows).

    The seeds are fixed, not "any n": an option run is paired with the base's run of the same seed
    (:mod:`smelib.paired_runs`), and the base's plan trains seeds 0, 1 and 2.
    """
    want = {base: protocol_epochs(base)}
    out: list[MissingRun] = []
    for option, overrides in options.items():
        have = {s for r in rows if r.get("model") == model and r.get("split") == split and r.get("config") == option
                and _epochs_match({**r, "config": base}, want) for s in seeds_of(r)}
        for seed in range(n_seeds):
            if seed not in have:
                out.append(MissingRun(model, split, seed, base, len(have), n_seeds,
                                      (f"name={option}", *overrides)))
    return out


@dataclass(frozen=True)
class TimeEstimate:
    """A planning guess of one run's wall time (:func:`time_estimate`)."""

    minutes: float
    #: the record whose ``wall_seconds`` per epoch was scaled
    run_id: str
    #: whether that record ran on a machine like this one (None when no host was given)
    same_host: bool | None
    #: the factor applied for this machine's speed relative to the record's, when they differ and some other
    #: model was timed on both; None otherwise
    host_factor: float | None = None
    #: the models whose records on both machines gave ``host_factor``
    factor_models: tuple[str, ...] = ()


def _minutes_per_epoch(rec: Mapping[str, Any]) -> float:
    return float(rec["wall_seconds"]) / int(rec["epochs_done"]) / 60


def host_speed_factor(records: Sequence[Mapping[str, Any]], here: str,
                      there: str) -> tuple[float, tuple[str, ...]] | None:
    """How many times longer an epoch takes on machine ``here`` than on machine ``there`` (two
    :func:`smelib.results.host_label` labels), from the models with completed records on both: per model the ratio
    of the median minutes per epoch on each, then the median over models. Runs with other work beside them
    (:func:`smelib.results.timed_alone`) are left out.

    Returns:
        ``(factor, models used)``, or None when no model was timed on both machines.
    """
    from smelib.results import host_label, timed_alone, timed_on_one_host

    per: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if (r.get("status") == "completed" and r.get("wall_seconds") and r.get("epochs_done")
                and timed_on_one_host(r) and timed_alone(r)):
            per.setdefault((str(r.get("model")), host_label(r)), []).append(_minutes_per_epoch(r))
    models = sorted({m for m, lab in per if lab == here} & {m for m, lab in per if lab == there})
    if not models or here == there:
        return None
    ratios = [statistics.median(per[m, here]) / statistics.median(per[m, there]) for m in models]
    return statistics.median(ratios), tuple(models)


def time_estimate(
    records: Sequence[Mapping[str, Any]], model: str, epochs: int, host: Mapping[str, Any] | None = None,
) -> TimeEstimate | None:
    """Wall minutes a run of ``model`` for ``epochs`` epochs may take, scaled from one completed run record of that
    model (any split or protocol): ``wall_seconds * epochs / epochs_done``. Runs resumed on another kind of machine
    are skipped (their wall time mixes two speeds), and so are runs that shared the machine with other work
    (:func:`smelib.results.timed_alone`) while a record of the model trained alone exists.

    With ``host`` (:func:`smelib.records.host_info` of this machine), the latest record from a machine with the same
    :func:`smelib.results.host_label` is used when there is one, because the same model trains about twice as fast
    on an AVX-512 host as on an AVX2 one. Otherwise the latest record of any machine is used, multiplied by
    :func:`host_speed_factor` between this machine and that record's when other models were timed on both. Steal by
    the hypervisor (``cpu_steal_fraction``) still varies between runs on one kind of machine, so this plans a queue,
    it does not promise a time.

    Returns:
        The estimate, or None when no completed record of ``model`` exists.
    """
    from smelib.results import host_label, timed_alone, timed_on_one_host

    done = [r for r in records if r.get("model") == model and r.get("status") == "completed"
            and r.get("wall_seconds") and r.get("epochs_done") and timed_on_one_host(r)]
    if not done:
        return None
    done = [r for r in done if timed_alone(r)] or done
    same: bool | None = None
    label = None
    if host is not None:
        label = host_label({"host": host})
        alike = [r for r in done if host_label(r) == label]
        same = bool(alike)
        done = alike or done
    latest = max(done, key=lambda r: str(r.get("finished_utc", "")))
    minutes = _minutes_per_epoch(latest) * epochs
    if label is not None and not same:
        found = host_speed_factor(records, label, host_label(latest))
        if found is not None:
            return TimeEstimate(minutes * found[0], str(latest.get("run_id")), same, found[0], found[1])
    return TimeEstimate(minutes, str(latest.get("run_id")), same)


def pick_row(
    rows: Sequence[Mapping[str, Any]], model: str, split: str, configs: Collection[str] = DEFAULT_CONFIGS,
    epochs: int | None = None,
) -> Mapping[str, Any] | None:
    """The summary row of ``model`` on ``split`` under the protocol in ``configs`` (at its epochs) with the most
    seeds (ties: the first in ``configs``), or None when none of them has one; the same choice
    :func:`missing_runs` makes.

    Args:
        epochs: read the rows trained for this many epochs instead of each config's protocol epochs (an earlier
            protocol's budget, or a learning-curve point); rows without an ``epochs`` field never match it.
    """
    order = list(configs)
    if epochs is None:
        epochs_of = {c: protocol_epochs(c) for c in order}

        def at_length(r: Mapping[str, Any]) -> bool:
            return _epochs_match(r, epochs_of)
    else:
        def at_length(r: Mapping[str, Any]) -> bool:
            return r.get("epochs") not in (None, "") and int(r["epochs"]) == epochs
    found = [r for r in rows if r.get("model") == model and r.get("split") == split and r.get("config") in order
             and at_length(r)]
    if not found:
        return None
    return max(found, key=lambda r: (len(seeds_of(r)), -order.index(str(r["config"]))))


@dataclass
class DecisionOutcome:
    """One decision rule's result on a dataset.

    Attributes:
        name: the rule's label (the key it was given under).
        rule: its parameters (:meth:`smelib.mechanisms.DecisionRule.to_dict`; ``{"mode": "argmax"}`` for None).
        metrics: the metrics at each image's original resolution.
        taus: the threshold each image received, in dataset order (NaN for argmax).
    """

    name: str
    rule: dict[str, Any]
    metrics: SegMetrics
    taus: list[float] = field(default_factory=list)


def tau_counts(taus: Sequence[float], decimals: int = 3) -> dict[float, int]:
    """How many images received each threshold (rounded to ``decimals``), sorted by threshold; NaN skipped."""
    counts: dict[float, int] = {}
    for t in taus:
        if not math.isnan(t):
            key = round(float(t), decimals)
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


@torch.no_grad()
def evaluate_decisions(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    dataset: Any,
    rules: Mapping[str, Any],
    num_classes: int | None = None,
    ignore_index: int = 255,
    size: int | Sequence[int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> dict[str, DecisionOutcome]:
    """Score several decision rules on the same forward passes.

    Args:
        model_or_checkpoint: a model or a checkpoint path / release name (as :func:`smelib.inference.evaluate`).
        dataset: items ``(image, mask)`` (or dicts), images normalised as the model expects.
        rules: label -> :class:`smelib.mechanisms.DecisionRule` (or None for argmax).
        num_classes, ignore_index, size, batch_size, device: as :func:`smelib.inference.evaluate` (no TTA,
            no autocast); a dynamic rule with ``scope="batch"`` pools batches of ``batch_size`` images.

    Returns:
        label -> :class:`DecisionOutcome`, in the order of ``rules``.
    """
    from smelib.inference import _eval_batches, _eval_setup, predict_proba
    from smelib.mechanisms import decide

    model, meta, size_t, dev, k = _eval_setup(model_or_checkpoint, device, size, num_classes)
    cms = {name: ConfusionMatrix(k, ignore_index=ignore_index, device=dev) for name in rules}
    taus: dict[str, list[float]] = {name: [] for name in rules}
    was_training = model.training
    model.eval()
    try:
        for images, masks in _eval_batches(dataset, list(range(len(dataset))), batch_size):
            images, masks = images.to(dev), masks.to(dev)
            probs = predict_proba(model, images, tuple(masks.shape[-2:]), size_t)
            for name, rule in rules.items():
                if rule is None or rule.mode == "argmax":
                    labels: Tensor = probs.argmax(1)
                    taus[name] += [float("nan")] * probs.shape[0]
                else:
                    labels = decide(probs, rule)
                    taus[name] += [float(t) for t in rule.thresholds(probs).cpu()]
                cms[name].update(labels, masks)
    finally:
        model.train(was_training)
    return {
        name: DecisionOutcome(name, {"mode": "argmax"} if rule is None else rule.to_dict(), cms[name].compute(),
                              taus[name])
        for name, rule in rules.items()
    }


# ----------------------------------------------------------------------------------------------------------
# Summary rows as the book's tables show them


def summary_value(row: Mapping[str, Any] | None, key: str) -> float | None:
    """``row[key]`` as a float; None when the row is None or the field is missing or empty (CSV rows hold
    strings, :func:`smelib.results.summarize` rows numbers)."""
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
        rows: ``results/summary.csv`` rows (:func:`smelib.status.read_summary`) or :func:`smelib.results.summarize`
            output; each needs ``config``, ``model``, ``split``, ``n_seeds``, ``seeds``, ``miou_mean``,
            ``miou_defects_mean``, ``precision_mean`` and ``mpa_mean`` (``*_std`` optional).
    """
    from smelib.viz import Table

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
    """A summary row's ``hosts`` (:func:`smelib.results.host_label`, ``" | "``-separated) shortened to vendor and
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
    """Test mIoU of each model trained for each of several epoch counts (:func:`pick_row` with ``epochs``):
    mean ± std and seeds per budget, and the change from the first budget to the last where both exist.
    Models with no row at any of the budgets are left out.

    Args:
        rows: summary rows (``results/summary.csv`` or :func:`smelib.results.summarize`).
        budgets: epoch counts, shortest first (e.g. ``(3, 6)``: the first protocol and the current one).
    """
    from smelib.viz import Table

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

    Each model's row is the one :func:`pick_row` reads (the protocol's epochs, or ``epochs``); the pooled variance
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
    every model whose :func:`pick_row` rows on both splits share a protocol, their mean over models, and whether the
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


def conclusion_verdict(better: Mapping[str, Any] | None, worse: Mapping[str, Any] | None,
                       key: str = "miou", z: float = 2.0,
                       pooled: tuple[float | None, int] | None = None,
                       pooled_from: str | None = None, pooled_for_all: bool = False) -> tuple[float | None, str]:
    """Whether two summary rows support "``better`` > ``worse``" on ``<key>_mean``.

    The difference of the means is compared with its standard error, ``sqrt(s1²/n1 + s2²/n2)`` from the rows'
    sample standard deviations: ``"holds"`` when the difference exceeds ``z`` standard errors, ``"reversed"``
    when it is below ``-z``, ``"within the seed spread"`` otherwise. When one side has a single seed and the
    other several, the single run is assumed to scatter like the measured side (``s1 = s2``, so the standard
    error is ``s * sqrt(1/n + 1)``): :data:`REQUIRED_RUNS` asks only one seed of most rows, and the seed spread
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
    a, b = summary_value(better, f"{key}_mean"), summary_value(worse, f"{key}_mean")
    if a is None or b is None:
        return None, "not yet measured"
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
        return diff, f"no spread yet (seeds: {n1} vs {n2})"
    se = 100 * math.sqrt(s1**2 / n1 + s2**2 / n2)
    if se == 0:
        word = "holds" if diff > 0 else ("reversed" if diff < 0 else "within the seed spread")
    else:
        t = diff / se
        word = "holds" if t > z else ("reversed" if t < -z else "within the seed spread")
    return diff, word + borrowed


def conclusions_table(rows: Sequence[Mapping[str, Any]], split: str = "grouped", epochs: int | None = None,
                      spread_split: str | None = None) -> Table:
    """One row per :data:`CONCLUSIONS` entry on ``split``: both models' mIoU (mean ± std, n), the difference in
    points and :func:`conclusion_verdict`'s reading (single runs on both sides: against :func:`pooled_seed_std`).

    Args:
        epochs: compare the rows trained for this many epochs (see :func:`pick_row`); default: each protocol's
            own epochs.
        spread_split: pool the seed spread of single-run comparisons from this split's rows (default ``split``):
            the official split has one seed per row, so its single runs can only borrow the grouped split's spread.
    """
    from smelib.viz import Table

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
    from smelib.viz import Table

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


# ----------------------------------------------------------------------------------------------------------
# Decision records: one trained run's test subset scored under several decision rules, as a committed record

#: Format version of the files :func:`write_decision_record` writes.
DECISION_FORMAT = 1

#: The largest |record mIoU - argmax mIoU recomputed| that counts as agreement (float noise of a different
#: memory layout can flip a handful of pixels; a different test subset moves mIoU far more).
DECISION_TOLERANCE = 1e-4

#: The metrics whose paired differences the book reports: (label, path into ``SegMetrics.to_dict()``).
DECISION_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mIoU", ("miou",)), ("defects-only mIoU", ("defects_only", "miou")), ("precision", ("precision",)),
    ("MPA", ("mpa",)),
)


class DecisionRecordError(ValueError):
    """A decision record cannot be built, written or read; the message names the run or file and the problem."""


def decision_record(
    checkpoint_or_run_dir: str | os.PathLike,
    rules: Sequence[str] = ("argmax", "static", "dynamic"),
    data_root: str | None = None,
    device: str = "cpu",
    subset: str = "test",
    strict: bool = True,
) -> dict[str, Any]:
    """Score one trained run's test subset under several decision rules, as a JSON-able record.

    The checkpoint is the run's best one (its ``record.json``'s ``checkpoint.relpath``, via
    :func:`smelib.records.resolve_run`) or a ``.pt`` given directly. The dataset is rebuilt exactly as
    ``smelib eval`` rebuilds it (the checkpoint config's split, split seed, groups and validation carve-out,
    optionally re-rooted at ``data_root``), each rule comes from :func:`smelib.mechanisms.rule_for_checkpoint`
    (a checkpoint without ``train_stats`` has them counted on its whole training subset), and all rules are
    scored on the same probabilities by :func:`evaluate_decisions` (no TTA, no autocast).

    Args:
        checkpoint_or_run_dir: a run folder (``results/runs/<id>``) or a checkpoint file.
        rules: decision modes to score (``argmax``, ``static``, ``dynamic``), each with the checkpoint config's
            ``eval.threshold`` parameters.
        data_root: dataset folder (default: the one the run was trained on).
        device: where to run the model.
        subset: ``"test"`` (default) or ``"val"``.
        strict: raise when the run record's own argmax mIoU on ``subset`` (measured without TTA) and the one
            recomputed here disagree by more than :data:`DECISION_TOLERANCE`: then this is not the subset
            the run was scored on.

    Returns:
        ``format``, ``kind``, ``run_id``, ``config_name``, ``model``, ``seed`` (training seed), ``epochs`` (the
        run's training length, which its best checkpoint may undercut), ``split`` (kind,
        split seed, groups file, validation fraction, subset sizes, root), ``subset``, ``images``,
        ``class_names``, ``checkpoint`` (path relative to the run, kind, sha256 of the file read here and
        whether it matches the run record's, epochs trained when it was saved), ``train_stats_source``,
        ``rules`` (mode -> parameters),
        ``metrics`` (mode -> ``SegMetrics.to_dict()``), ``tau_counts`` (mode -> ``[[tau, images], ...]``, for
        the threshold rules), ``cross_check``, ``git``, ``host``, ``wall_seconds``, ``created_utc``.

    Raises:
        DecisionRecordError: no such run or checkpoint, an unknown rule, an empty subset, or (``strict``) a
            failed cross-check.
    """
    import time

    from smelib.checkpoint import load_checkpoint, sha256_file
    from smelib.loading import checkpoint_data
    from smelib.mechanisms import DECISIONS, rule_for_checkpoint
    from smelib.records import RunDirError, git_info, host_info, resolve_run, utc_iso

    start = time.perf_counter()
    rules = list(rules)
    bad = [r for r in rules if r not in DECISIONS]
    if not rules or bad or len(set(rules)) != len(rules):
        raise DecisionRecordError(f"rules must be distinct modes out of {', '.join(DECISIONS)}, got {rules}")
    if subset not in ("test", "val"):
        raise DecisionRecordError(f"subset must be 'test' or 'val', not {subset!r}")
    try:
        ckpt, run = resolve_run(checkpoint_or_run_dir)
    except RunDirError as err:
        raise DecisionRecordError(str(err)) from None
    run = run or {}
    model, meta = load_checkpoint(ckpt, device=device)
    cfg = meta["config"]
    bundle = checkpoint_data(meta, data_root)
    dataset = bundle.test if subset == "test" else bundle.val
    if dataset is None or len(dataset) == 0:
        raise DecisionRecordError(f"{ckpt}: the dataset under {bundle.split.get('root')} has no {subset} images")
    dc = cfg["data"]
    stats_source = "checkpoint" if meta.get("train_stats") is not None else "counted from the training subset"
    built = {mode: rule_for_checkpoint(meta, mode=mode, train_dataset=lambda: bundle.train) for mode in rules}
    outcomes = evaluate_decisions(model, dataset, built, num_classes=int(meta["num_classes"]),
                                  ignore_index=int(dc["ignore_index"]), size=dc.get("size"),
                                  batch_size=int(dc["eval_batch_size"]), device=device)

    final = run.get("final") or {}
    rec_metrics = final.get(subset) or {}
    comparable = bool(rec_metrics) and not final.get("tta") and (final.get("decision") or {}).get(
        "mode", "argmax") == "argmax" and "argmax" in outcomes
    here = outcomes["argmax"].metrics.miou if "argmax" in outcomes else None
    there = rec_metrics.get("miou")
    diff = None if here is None or there is None else float(here) - float(there)
    cross = {"record_miou": there, "argmax_miou_here": here, "difference": diff, "tolerance": DECISION_TOLERANCE,
             "comparable": comparable, "agree": (abs(diff) <= DECISION_TOLERANCE) if comparable and diff is not None
             else None}
    if strict and cross["agree"] is False:
        raise DecisionRecordError(
            f"{ckpt}: argmax {subset} mIoU recomputed here is {100 * here:.4f} %, the run record says "
            f"{100 * there:.4f} %: not the subset the run was scored on (check --data-root)")

    sha = sha256_file(ckpt)
    run_ckpt = run.get("checkpoint") or {}
    run_dir = Path(ckpt).parent.parent
    return {
        "format": DECISION_FORMAT,
        "kind": "decisions",
        "run_id": run.get("run_id") or meta.get("run_id") or Path(ckpt).stem,
        "config_name": run.get("config_name") or cfg.get("name"),
        "model": meta["model_name"],
        "seed": int(run.get("seed", cfg["train"]["seed"])),
        "epochs": int(run.get("epochs", cfg["train"]["epochs"])),
        "split": {**bundle.split, "kind": dc["split"], "seed": dc["seed"], "groups": dc.get("groups"),
                  "val_fraction": dc["val_fraction"], "limit": dc.get("limit"), "train": len(bundle.train),
                  "val": len(bundle.val) if bundle.val is not None else 0,
                  "test": len(bundle.test) if bundle.test is not None else 0},
        "subset": subset,
        "images": len(dataset),
        "class_names": list(meta.get("class_names") or bundle.class_names),
        "checkpoint": {"relpath": os.path.relpath(ckpt, run_dir) if run else str(ckpt),
                       "kind": run_ckpt.get("kind") or Path(ckpt).stem, "sha256": sha,
                       "epochs_trained": len(meta["history"]) if meta.get("history") is not None else None,
                       "matches_run_record": (sha == run_ckpt["sha256"]) if run_ckpt.get("sha256") else None},
        "train_stats_source": stats_source,
        "rules": {mode: rule.to_dict() for mode, rule in built.items()},
        "metrics": {mode: o.metrics.to_dict() for mode, o in outcomes.items()},
        "tau_counts": {mode: [[t, c] for t, c in tau_counts(o.taus).items()]
                       for mode, o in outcomes.items() if built[mode].mode != "argmax"},
        "cross_check": cross,
        "git": git_info(),
        "host": host_info(device),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "created_utc": utc_iso(),
    }


def decision_record_path(record: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Where :func:`write_decision_record` puts ``record``: ``<out_dir>/decisions_<run_id>.json``."""
    run_id = str(record.get("run_id") or "")
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise DecisionRecordError(f"record has no usable run_id ({run_id!r})")
    return Path(out_dir) / f"decisions_{run_id}.json"


def write_decision_record(record: Mapping[str, Any], out_dir: str | os.PathLike = "results/mechanisms",
                          force: bool = False) -> Path:
    """Write ``record`` (from :func:`decision_record`) to ``<out_dir>/decisions_<run_id>.json``.

    Raises:
        DecisionRecordError: the file exists and ``force`` is False.
    """
    from smelib.records import write_json

    path = decision_record_path(record, out_dir)
    if path.exists() and not force:
        raise DecisionRecordError(f"{path} exists; pass force=True (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, record)


def load_decision_records(folder: str | os.PathLike = "results/mechanisms") -> list[dict[str, Any]]:
    """Every ``decisions_*.json`` under ``folder``, sorted by file name; ``[]`` when the folder does not exist.

    Raises:
        DecisionRecordError: a file that is not valid JSON or not a decision record (the message names it).
    """
    import json

    out = []
    for path in sorted(Path(folder).glob("decisions_*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DecisionRecordError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("kind") != "decisions" or not isinstance(doc.get("metrics"), dict):
            raise DecisionRecordError(f"{path}: not a decision record (no kind 'decisions' or no metrics)")
        if doc.get("format") != DECISION_FORMAT:
            raise DecisionRecordError(f"{path}: format {doc.get('format')!r}, this smelib reads {DECISION_FORMAT}")
        out.append(doc)
    return out


def select_decision_records(records: Sequence[Mapping[str, Any]], model: str = "sme_deeplabv3plus",
                            split: str = "grouped", config: str | None = "cpu_budget") -> list[Mapping[str, Any]]:
    """The records of ``model`` on the ``split`` split (and training protocol ``config`` at its epochs,
    :func:`protocol_epochs`; None: any), one per seed (the latest run id when a seed was trained twice), sorted
    by seed."""
    by_seed: dict[int, Mapping[str, Any]] = {}
    want = protocol_epochs(config) if config is not None else None
    for r in records:
        if r.get("model") != model or (r.get("split") or {}).get("kind") != split:
            continue
        if config is not None and r.get("config_name") != config:
            continue
        # records from before ``epochs`` was stored fall back to their best checkpoint's length (equal to the
        # run's when its last epoch was its best, as in the one such record committed)
        epochs = r.get("epochs", (r.get("checkpoint") or {}).get("epochs_trained"))
        if want is not None and epochs is not None and int(epochs) != want:
            continue
        seed = int(r["seed"])
        if seed not in by_seed or str(r["run_id"]) > str(by_seed[seed]["run_id"]):
            by_seed[seed] = r
    return [by_seed[s] for s in sorted(by_seed)]


def _metric(metrics: Mapping[str, Any], path: Sequence[str]) -> float | None:
    v: Any = metrics
    for key in path:
        v = v.get(key) if isinstance(v, Mapping) else None
    return None if v is None else float(v)


def decision_differences(record: Mapping[str, Any], base: str = "argmax") -> dict[str, dict[str, float | None]]:
    """Paired differences ``rule - base`` in points for every other rule of a record, for each of
    :data:`DECISION_METRICS`: ``{rule: {metric label: difference or None}}``."""
    metrics = record["metrics"]
    if base not in metrics:
        raise DecisionRecordError(f"record {record.get('run_id')}: no {base!r} rule to compare with")
    out: dict[str, dict[str, float | None]] = {}
    for rule, m in metrics.items():
        if rule == base:
            continue
        row: dict[str, float | None] = {}
        for label, path in DECISION_METRICS:
            a, b = _metric(m, path), _metric(metrics[base], path)
            row[label] = None if a is None or b is None else 100 * (a - b)
        out[rule] = row
    return out


def decision_seed_table(records: Sequence[Mapping[str, Any]], base: str = "argmax") -> Table:
    """One row per (record, rule other than ``base``): seed, rule, the base's test mIoU and the paired
    differences of :data:`DECISION_METRICS` in points."""
    from smelib.viz import Table

    body = []
    for r in records:
        base_miou = _metric(r["metrics"][base], ("miou",))
        for rule, diffs in decision_differences(r, base).items():
            body.append([int(r["seed"]), f"{rule} − {base}", None if base_miou is None else 100 * base_miou,
                         *diffs.values()])
    return Table(["seed", "difference", f"{base} mIoU %", *(f"Δ {label}" for label, _ in DECISION_METRICS)], body,
                 decimals=3, title=f"Paired differences from {base} per seed (points, same probabilities)")


def decision_spread(records: Sequence[Mapping[str, Any]], base: str = "argmax"
                    ) -> dict[str, dict[str, tuple[float, float | None, int]]]:
    """Mean, sample standard deviation (None with one seed) and number of seeds of each paired difference:
    ``{rule: {metric label: (mean, std, n)}}``, in points."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in records:
        for rule, diffs in decision_differences(r, base).items():
            for label, v in diffs.items():
                if v is not None:
                    values.setdefault(rule, {}).setdefault(label, []).append(v)
    return {rule: {label: (statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else None, len(vs))
                   for label, vs in by.items()} for rule, by in values.items()}


def decision_spread_table(records: Sequence[Mapping[str, Any]], base: str = "argmax") -> Table:
    """:func:`decision_spread` as a table: ``mean ± std`` of each paired difference over the seeds, with how
    many of them are positive (``"± –"`` when one seed gives no spread)."""
    from smelib.viz import Table

    body = []
    for rule, by in decision_spread(records, base).items():
        cells = []
        for label, _ in DECISION_METRICS:
            if label not in by:
                cells.append("–")
                continue
            mean, std, _n = by[label]
            cells.append(f"{mean:+.3f} ± " + ("–" if std is None else f"{std:.3f}"))
        n = max((v[2] for v in by.values()), default=0)
        ups = sum(1 for r in records if (decision_differences(r, base).get(rule, {}).get("mIoU") or 0.0) > 0)
        body.append([f"{rule} − {base}", n, *cells, f"{ups} of {n}"])
    return Table(["difference", "seeds", *(f"Δ {label}" for label, _ in DECISION_METRICS), "seeds with Δ mIoU > 0"],
                 body, title=f"Paired differences from {base}: mean ± sample std over seeds (points)")
