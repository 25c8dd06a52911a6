"""One checkpoint scored under several decision rules in one pass, and the committed decision records.

:func:`evaluate_decisions` runs a model once over a dataset and scores every given
:class:`smelib.mechanisms.DecisionRule` on the same probabilities, also recording the threshold each image
received. Batches are formed exactly as :func:`smelib.inference.evaluate` forms them, so each rule's metrics
equal that function's with ``decision=rule`` (a test checks this). :func:`decision_record` stores the result
for one trained run (``smelib decisions``).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from smelib.metrics import ConfusionMatrix, SegMetrics
from smelib.study.plan import protocol_epochs

if TYPE_CHECKING:
    from smelib.study.tables import Table

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
# Decision records: one trained run's test subset scored under several decision rules, as a committed record

#: Format version of the files :func:`write_decision_record` writes.
DECISION_FORMAT = 1

#: The largest absolute difference between the record's mIoU and the argmax mIoU recomputed here that counts as
#: agreement (float noise of a different memory layout can flip a handful of pixels; a different test subset moves
#: mIoU far more).
DECISION_TOLERANCE = 1e-4

#: The metrics whose paired differences the book reports, as (label, path into ``SegMetrics.to_dict()``).
DECISION_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mIoU", ("miou",)), ("defects-only mIoU", ("defects_only", "miou")), ("precision", ("precision",)),
    ("MPA", ("mpa",)),
)


class DecisionRecordError(ValueError):
    """A decision record cannot be built, written or read; the message names the run or file and the problem."""


def _cross_check(run: Mapping[str, Any], subset: str, outcomes: Mapping[str, DecisionOutcome]) -> dict[str, Any]:
    """The run record's own argmax mIoU on ``subset`` against the one recomputed here (comparable only when the
    record scored argmax without TTA)."""
    final = run.get("final") or {}
    rec_metrics = final.get(subset) or {}
    comparable = bool(rec_metrics) and not final.get("tta") and (final.get("decision") or {}).get(
        "mode", "argmax") == "argmax" and "argmax" in outcomes
    here = outcomes["argmax"].metrics.miou if "argmax" in outcomes else None
    there = rec_metrics.get("miou")
    diff = None if here is None or there is None else float(here) - float(there)
    return {"record_miou": there, "argmax_miou_here": here, "difference": diff, "tolerance": DECISION_TOLERANCE,
            "comparable": comparable, "agree": (abs(diff) <= DECISION_TOLERANCE) if comparable and diff is not None
            else None}


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
    from smelib.data.loading import checkpoint_data
    from smelib.config import DECISIONS
    from smelib.mechanisms import rule_for_checkpoint
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

    cross = _cross_check(run, subset, outcomes)
    if strict and cross["agree"] is False:
        raise DecisionRecordError(
            f"{ckpt}: argmax {subset} mIoU recomputed here is {100 * cross['argmax_miou_here']:.4f} %, the run "
            f"record says {100 * cross['record_miou']:.4f} %: not the subset the run was scored on (check --data-root)")

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
    :func:`~smelib.study.plan.protocol_epochs`; None: any), one per seed (the latest run id when a seed was trained
    twice), sorted
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
    from smelib.study.tables import Table

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
    from smelib.study.tables import Table

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


#: Display names of the decision rules in the book's figures.
RULE_NAMES: dict[str, str] = {"static": "static threshold", "dynamic": "dynamic threshold"}


def decision_effect_rows(records: Sequence[Mapping[str, Any]], base: str = "argmax",
                         names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The records' paired differences from ``base`` as long-form rows, one per (rule, metric of
    :data:`DECISION_METRICS`, seed): ``mechanism`` (the rule's display name, :data:`RULE_NAMES` by default),
    ``metric``, ``seed``, ``delta`` (rule − base, points) and ``base`` (the base rule's value, percent), the format of
    :func:`smelib.study.paired_runs.effect_rows`."""
    names = RULE_NAMES if names is None else names
    rows = []
    for r in records:
        for rule, diffs in decision_differences(r, base).items():
            for label, path in DECISION_METRICS:
                if diffs[label] is None:
                    continue
                rows.append({"mechanism": names.get(rule, rule), "metric": label, "seed": int(r["seed"]),
                             "delta": diffs[label], "base": 100 * float(_metric(r["metrics"][base], path))})
    return rows


def plot_decision_outcomes(outcomes: Mapping[str, DecisionOutcome], base: str = "argmax", rule: str = "dynamic",
                           width: float = 6.8) -> Any:
    """One checkpoint under several rules: how many images received each threshold under ``rule`` (left), and
    every other rule's paired difference from ``base`` per metric of :data:`DECISION_METRICS` (right, points).

    Args:
        outcomes: from :func:`evaluate_decisions` (must hold ``base`` and ``rule``).
        width: figure width in inches.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if base not in outcomes or rule not in outcomes:
        raise DecisionRecordError(f"outcomes need {base!r} and {rule!r}, have {list(outcomes)}")
    ref = outcomes[base].metrics.to_dict()
    diffs = pd.DataFrame([{"rule": RULE_NAMES.get(name, name), "metric": label,
                           "delta": 100 * (_metric(o.metrics.to_dict(), path) - _metric(ref, path))}
                          for name, o in outcomes.items() if name != base for label, path in DECISION_METRICS])
    counts = tau_counts(outcomes[rule].taus)
    fig, (left, right) = plt.subplots(1, 2, figsize=(width, 2.8), dpi=110, layout="constrained",
                                      width_ratios=[1, 1.6])
    # the colours of the rules in the chapter's other figures (initialisation options first, then the rules)
    colours = dict(zip(["", "", *RULE_NAMES.values()], sns.color_palette("colorblind")))
    sns.barplot(x=[f"{t:g}" for t in counts], y=list(counts.values()),
                color=colours.get(RULE_NAMES.get(rule, rule), "0.5"), ax=left)
    left.set_xlabel(f"τ the {RULE_NAMES.get(rule, rule)} chose")
    left.set_ylabel("test images")
    palette = {name: colours.get(name, "0.5") for name in diffs["rule"].unique()}
    sns.barplot(diffs, y="metric", x="delta", hue="rule", palette=palette, ax=right)
    right.axvline(0, color="0.4", lw=0.8)
    right.set_xlabel(f"paired difference from {base} (points)")
    right.set_ylabel("")
    right.legend(title=None, fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    return fig
