"""The study's run plan: which runs Table 1 and Table 3 need, which are missing or resumable, and how long the
missing ones will take here.

>>> from smelib.study.results import load_records, summarize
>>> from smelib.study.plan import missing_runs
>>> todo = missing_runs(summarize(load_records("results/runs")))   # what the planned tables still lack

:func:`missing_runs` compares the rows of :func:`smelib.study.results.summarize` (or of ``results/summary.csv``,
read with :func:`smelib.study.status.read_summary`) with :data:`REQUIRED_RUNS`, the plan of Table 1 and Table 3:
on the grouped split 3 seeds of SME-DeepLabV3+ and the two DeepLabV3+ baselines and at least one of every
other model, and on the official split at least one of each.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any



if TYPE_CHECKING:
    pass

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

#: The plan, grouped split first (3 seeds for :data:`THREE_SEED_MODELS`, else 1), then official split (1 seed each).
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
        """The protocol name its run record will carry (a ``name=`` override's, else ``config``)."""
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
    from smelib.study.results import _read_object

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
    :func:`smelib.study.results.summarize`); an empty or missing field gives ``[]``."""
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
        rows: summary rows (:func:`smelib.study.results.summarize` output or ``results/summary.csv`` rows).
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


#: The initialisation ablation of chapter "What the paper leaves unspecified", each option's protocol name and the
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
    (:mod:`smelib.study.paired_runs`), and the base's plan trains seeds 0, 1 and 2.
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
    :func:`smelib.study.results.host_label` labels), from the models with completed records on both: per model the ratio
    of the median minutes per epoch on each, then the median over models. Runs with other work beside them
    (:func:`smelib.study.results.timed_alone`) are left out.

    Returns:
        ``(factor, models used)``, or None when no model was timed on both machines.
    """
    from smelib.study.results import host_label, timed_alone, timed_on_one_host

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
    (:func:`smelib.study.results.timed_alone`) while a record of the model trained alone exists.

    With ``host`` (:func:`smelib.records.host_info` of this machine), the latest record from a machine with the same
    :func:`smelib.study.results.host_label` is used when there is one, because the same model trains about twice as fast
    on an AVX-512 host as on an AVX2 one. Otherwise the latest record of any machine is used, multiplied by
    :func:`host_speed_factor` between this machine and that record's when other models were timed on both. Steal by
    the hypervisor (``cpu_steal_fraction``) still varies between runs on one kind of machine, so this plans a queue,
    it does not promise a time.

    Returns:
        The estimate, or None when no completed record of ``model`` exists.
    """
    from smelib.study.results import host_label, timed_alone, timed_on_one_host

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
