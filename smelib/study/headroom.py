"""Recipe headroom: how far the paper's model goes on the official split within two hours of 2-core CPU training.

The tables (:mod:`smelib.study.plan`) hold every model to one short protocol so rows can be compared. This module
is the other question: with the protocol's SME run as the starting point, which single changes (training length,
full-width heads, loss, augmentation, test-time augmentation, the lite model) buy how much test mIoU, each step a
run record (or, for inference-only steps, an evaluation record written by ``smelib eval --record``), each within a
stated budget; the best training recipe is then re-run on the grouped split over three seeds, and test-time
augmentation measured on its weights::

    >>> from smelib.study.headroom import HEADROOM_STEPS
    >>> [s.key for s in HEADROOM_STEPS][:3]
    ['protocol', 'tta', 'schedule']

A step's number is read from ``results/summary.csv`` (its config name, model, split and epochs) or from an
evaluation record in ``results/headroom/``; a step that has neither is "not yet run" with the command to run it.
The goal is the paper's GPU figure, 88.87 % on the official split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BUDGET_MINUTES", "HEADROOM_STEPS", "HeadroomStep", "budget_epochs", "budget_pair", "budget_pair_table",
           "plot_recipe_steps", "plot_seed_points", "plot_tta_gains", "recipe_points", "run_label", "seed_points",
           "headroom_table", "pending_steps", "plot_step_curves", "seed_table", "seed_tta_pairs", "step_curve",
           "step_result", "step_run", "tta_pairs", "plot_weight_average", "weight_average_pair"]

#: The CPU budget of one headroom run (wall minutes on a 2-core AVX-512 host without steal).
BUDGET_MINUTES = 120


@dataclass(frozen=True)
class HeadroomStep:
    """One change to the recipe, measured against the protocol's SME run.

    Attributes:
        key: short identifier.
        change: what differs from the protocol (the only difference).
        kind: ``"train"`` (a run record; its summary row is ``config``/``model``/``split``/``epochs``) or ``"eval"``
            (evaluation records: ``eval_files``, the file stems in ``results/headroom/`` without and with the change).
        config: the run's config name (``name=`` override of ``configs/cpu_budget.yaml``).
        model: registry model.
        epochs: training epochs, chosen to fill :data:`BUDGET_MINUTES` at the speed the chapter measures.
        overrides: further ``KEY=VALUE`` overrides.
        eval_files: ``(baseline stem, changed stem)`` for an ``"eval"`` step.
        against: for a training step that changes more than one thing against the protocol (its epochs are set to
            fill the budget), the key of the training step that fills the same budget and differs from it only in
            :attr:`change`: :func:`budget_pair` compares the two runs per class.
        split: the split it trains and is scored on; its baseline is the protocol row of the same split.
        seeds: the seeds it asks for (one run each); the step is complete when the summary row has them all.
    """

    key: str
    change: str
    kind: str = "train"
    config: str = "cpu_budget"
    model: str = "sme_deeplabv3plus"
    epochs: int = 6
    overrides: tuple[str, ...] = ()
    eval_files: tuple[str, str] | None = None
    split: str = "official"
    against: str | None = None
    seeds: tuple[int, ...] = (0,)

    @property
    def command(self) -> str:
        """The command line that produces this step's records (one training run, a shell loop over the seeds when
        the step asks for several, or the two evaluations of an inference step)."""
        if self.kind == "eval":
            base, changed = self.eval_files or ("", "")
            return (f"smelib eval --checkpoint <best.pt of the step before> --record results/headroom/{base}.json; "
                    f"smelib eval --checkpoint <same> --tta --record results/headroom/{changed}.json")
        if len(self.seeds) == 1:
            return self.train_command(self.seeds[0])
        return f"for S in {' '.join(map(str, self.seeds))}; do {self.train_command('$S')}; done"

    def train_command(self, seed: int | str) -> str:
        """The ``smelib train`` command line of this training step at one seed (a number, or a shell variable)."""
        name = [] if self.config == "cpu_budget" else [f"name={self.config}"]
        return " ".join(["smelib train --config configs/cpu_budget.yaml", f"--model {self.model}",
                         f"--split {self.split}", f"--seed {seed}",
                         *([f"--epochs {self.epochs}"] if self.epochs != 6 else []),
                         *name, *self.overrides])


#: The steps, in the order they are meant to be taken. Epoch counts fill the budget at each model's epoch time,
#: read from its run records (:func:`budget_epochs`; the headroom chapter shows the times).
HEADROOM_STEPS: tuple[HeadroomStep, ...] = (
    HeadroomStep("protocol", "none: the tables' CPU-budget protocol (width-64 heads, 6 epochs, focal + Dice)"),
    HeadroomStep("tta", "inference averages softmax over the 8 flips x right-angle rotations", kind="eval",
                 eval_files=("lite_official_plain", "lite_official_tta")),
    HeadroomStep("schedule", "27 epochs instead of 6 (the whole budget on the protocol's model)",
                 config="headroom_e27", epochs=27),
    HeadroomStep("schedule_tta", "the tta step's inference on the schedule step's weights", kind="eval",
                 eval_files=("e27_official_plain", "e27_official_tta")),
    HeadroomStep("full_width", "the paper's width-256 context module and decoder, 12 epochs in the budget",
                 config="headroom_full", epochs=12,
                 overrides=("model.deeplab_overrides.decoder_width=256", "model.deeplab_overrides.context_width=256"),
                 against="schedule"),
    HeadroomStep("full_width_tta", "the tta step's inference on the full_width step's weights", kind="eval",
                 eval_files=("full_official_plain", "full_official_tta")),
    HeadroomStep("loss_ce", "plain cross-entropy instead of focal + Dice, at 27 epochs", config="headroom_e27_ce",
                 epochs=27, overrides=("loss=ce",), against="schedule"),
    HeadroomStep("augment", "random rescale by 0.75-1.25 and a 200 px crop (padding ignored by the loss), at 27 epochs",
                 config="headroom_e27_scale", epochs=27,
                 overrides=("data.augment.scale=[0.75,1.25]", "data.augment.crop=200"), against="schedule"),
    HeadroomStep("lite", "the lite model (StarNet-s1 backbone), 34 epochs in the budget",
                 config="headroom_lite", model="sme_deeplabv3plus_lite", epochs=34, against="schedule"),
    HeadroomStep("lite_tta", "the tta step's inference on the lite step's weights", kind="eval",
                 eval_files=("lite34_official_plain", "lite34_official_tta")),
    # the best training step of the official split, re-run where no rotated copy of a test image is in training
    HeadroomStep("grouped", "the lite step's recipe (StarNet-s1, width 64, 34 epochs, focal + Dice) on the grouped "
                 "split, 3 seeds", config="headroom_lite", model="sme_deeplabv3plus_lite", epochs=34,
                 split="grouped", seeds=(0, 1, 2)),
    # the best grouped-split figure: the grouped step's seed-0 weights with the tta step's inference
    HeadroomStep("grouped_tta", "the tta step's inference on the grouped step's seed-0 weights", kind="eval",
                 eval_files=("lite34_grouped_s0_plain", "lite34_grouped_s0_tta"), split="grouped"),
)


def budget_epochs(seconds_per_epoch: float, budget_minutes: float = BUDGET_MINUTES) -> int:
    """Whole epochs (training plus the per-epoch validation) that fit the budget: ``floor(60 * budget /
    seconds_per_epoch)``.

    Raises:
        ValueError: ``seconds_per_epoch`` is not positive.
    """
    if not seconds_per_epoch > 0:
        raise ValueError(f"seconds_per_epoch must be positive, got {seconds_per_epoch}")
    return int(math.floor(60 * budget_minutes / seconds_per_epoch))


def tta_pairs(records: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Pairs ``(without TTA, with TTA)`` of evaluation records of one checkpoint (same SHA256) on the same subset
    of the same split with the same decision rule, autocast and image limit: a paired comparison, free of training
    noise. Sorted by the TTA record's file name."""
    def key(r: Mapping[str, Any]) -> tuple:
        return (r.get("checkpoint_sha256"), r.get("split"), r.get("subset"), str(r.get("decision")),
                r.get("autocast"), r.get("limit"), r.get("images"))

    plain = {key(r): r for r in records if not r.get("tta")}
    return [(plain[key(r)], r) for r in sorted(records, key=lambda r: str(r.get("file", "")))
            if r.get("tta") and key(r) in plain]


def step_result(step: HeadroomStep, rows: Sequence[Mapping[str, Any]],
                eval_records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A step's measurement, or None when it has not been run.

    Returns:
        {"miou": fraction, "baseline_miou": fraction or None, "baseline_std": fraction or None,
        "baseline_row": summary row or None, "source": run ids or record files, "n": seeds}, and for a train
        step ``"std"``, its own seed standard deviation (None for one seed); for a train step
        the baseline is the protocol row of the same split (its seed mean and standard deviation; None for the
        protocol itself), for an eval step it is the evaluation without the change, on the same checkpoint
        (no row, no spread).
    """
    from smelib.study.conclusions import summary_value

    def row_of(config: str, model: str, epochs: int) -> Mapping[str, Any] | None:
        found = [r for r in rows if r.get("config") == config and r.get("model") == model
                 and r.get("split") == step.split and str(r.get("epochs")) == str(epochs)]
        return found[0] if found else None

    if step.kind == "eval":
        by_file = {r.get("file"): r for r in eval_records}
        if step.eval_files is None or not all(f in by_file for f in step.eval_files):
            return None
        base, changed = (by_file[f] for f in step.eval_files)
        return {"miou": changed["metrics"]["miou"], "baseline_miou": base["metrics"]["miou"],
                "baseline_std": None, "baseline_row": None,
                "source": f"{base['file']}.json, {changed['file']}.json ({changed.get('model')}, "
                          f"{changed.get('subset')} subset, {changed.get('images')} images)", "n": 1}
    row = row_of(step.config, step.model, step.epochs)
    if row is None:
        return None
    proto = HEADROOM_STEPS[0]
    base = None if step.key == proto.key else row_of(proto.config, proto.model, proto.epochs)
    return {"miou": summary_value(row, "miou_mean"),
            "baseline_miou": None if base is None else summary_value(base, "miou_mean"),
            "baseline_std": None if base is None else summary_value(base, "miou_std"),
            "baseline_row": base,
            "source": str(row.get("run_ids", "")), "n": int(summary_value(row, "n_seeds") or 0),
            "std": summary_value(row, "miou_std")}


def headroom_table(rows: Sequence[Mapping[str, Any]], eval_records: Sequence[Mapping[str, Any]],
                   steps: Sequence[HeadroomStep] = HEADROOM_STEPS) -> Any:
    """One row per step: key, change, split and seeds run (of those asked), test mIoU % (the seed mean), the step's
    baseline (the protocol's seed mean ± standard deviation on the same split for a training step, so a difference
    can be read against the seed spread; the same checkpoint without the change for an inference step), the
    difference from it (points), the gap to the paper's 88.87 %, and the records it comes from or the command that
    would produce them."""
    from smelib.study.conclusions import PAPER_MIOU, mean_std_text
    from smelib.study.tables import Table

    paper = PAPER_MIOU["sme_deeplabv3plus"]
    out = []
    for step in steps:
        res = step_result(step, rows, eval_records)
        if res is None or res["miou"] is None:
            out.append([step.key, step.change, f"{step.split}, 0 of {len(step.seeds)}", "not yet run", "–", "–", "–",
                        step.command])
            continue
        miou = 100 * res["miou"]
        if res["baseline_miou"] is None:
            base, delta = "–", "–"
        else:
            delta = f"{miou - 100 * res['baseline_miou']:+.2f}"
            row = res["baseline_row"]  # a training step's baseline is the protocol's seed mean
            base = (f"{mean_std_text(row)} (n={row.get('n_seeds')})" if row is not None
                    else f"{100 * res['baseline_miou']:.2f} (same weights)")
        # the protocol row was run on more seeds than the steps ask of it: show them all
        seeds = f"{res['n']}" if step.key == steps[0].key else f"{res['n']} of {len(step.seeds)}"
        out.append([step.key, step.change, f"{step.split}, {seeds}", f"{miou:.2f}", base, delta, f"{miou - paper:+.2f}",
                    res["source"]])
    return Table(["step", "change", "split, seeds", "test mIoU %", "baseline mIoU %", "Δ vs its baseline",
                  "vs paper's 88.87", "records / command"], out,
                 title=f"Recipe headroom (budget {BUDGET_MINUTES} min per run; a step's figure is the mean over its "
                       "seeds, its baseline the protocol's on the same split)")


def pending_steps(rows: Sequence[Mapping[str, Any]], eval_records: Sequence[Mapping[str, Any]],
                  steps: Sequence[HeadroomStep] = HEADROOM_STEPS) -> list[HeadroomStep]:
    """The steps still to run: those without a result, and training steps with fewer seeds in their summary row
    than they ask for."""
    out = []
    for step in steps:
        res = step_result(step, rows, eval_records)
        if res is None or res["miou"] is None or res["n"] < len(step.seeds):
            out.append(step)
    return out


def step_run(step: HeadroomStep, records: Sequence[Mapping[str, Any]], seed: int = 0) -> Mapping[str, Any] | None:
    """The latest completed run record of a training step (its config name, model, split and epochs) at ``seed``,
    or None (also for an ``"eval"`` step, which trains nothing)."""
    if step.kind != "train":
        return None
    found = [r for r in records if r.get("status") == "completed" and r.get("config_name") == step.config
             and r.get("model") == step.model and (r.get("split") or {}).get("kind") == step.split
             and r.get("epochs") == step.epochs and r.get("seed") == seed]
    return max(found, key=lambda r: str(r.get("finished_utc", ""))) if found else None


def seed_table(step: HeadroomStep, records: Sequence[Mapping[str, Any]]) -> Any:
    """One row per seed a training step asks for: its test IoU % per class and mIoU, wall minutes and run id, from
    the latest completed run at that seed (a seed without one says so and gives its command).

    Raises:
        ValueError: ``step`` is an inference step (it has no runs of its own).
    """
    from smelib.study.tables import Table

    if step.kind != "train":
        raise ValueError(f"headroom step {step.key!r} changes only inference: it has no training runs per seed")
    runs = {seed: step_run(step, records, seed) for seed in step.seeds}
    names = next((list(r["class_names"]) for r in runs.values() if r is not None), [])
    out: list[list[Any]] = []
    for seed, r in runs.items():
        if r is None:
            out.append([seed, *["–"] * (len(names) + 2), f"not yet run: {step.train_command(seed)}"])
            continue
        test = r["final"]["test"]
        out.append([seed, *(100 * v for v in test["iou"]), 100 * test["miou"], r["wall_seconds"] / 60, r["run_id"]])
    return Table(["seed", *[f"IoU {n}" for n in names], "mIoU", "wall min", "run"], out, decimals=2,
                 title=f"{step.key}: test IoU % per seed ({step.split} split, {step.model}, {step.epochs} epochs)")


def seed_tta_pairs(step: HeadroomStep, records: Sequence[Mapping[str, Any]],
                   eval_records: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any], Mapping[str, Any]]]:
    """``(seed, without TTA, with TTA)`` for each seed of a training step whose latest run's checkpoint was evaluated
    both ways (:func:`tta_pairs`, matched by the evaluation records' ``run_id``), in the step's seed order: TTA's
    paired gain seed by seed, where an inference step such as ``grouped_tta`` names one seed's files only."""
    pairs = tta_pairs(eval_records)
    out = []
    for seed in step.seeds:
        run = step_run(step, records, seed)
        if run is not None:
            out += [(seed, a, b) for a, b in pairs if b.get("run_id") == run["run_id"]]
    return out


def budget_pair(step: HeadroomStep, records: Sequence[Mapping[str, Any]],
                steps: Sequence[HeadroomStep] = HEADROOM_STEPS, seed: int = 0) -> dict[str, Any] | None:
    """The equal-budget comparison of a training step with its :attr:`~HeadroomStep.against` step: both runs fill
    the budget, and they differ only in the step's change, so the per-class difference has that one cause (on one
    seed).

    Returns:
        None when the step has no ``against`` step or either run is missing; otherwise {"baseline": step,
        "step": step, "baseline_run": record, "run": record, "classes": names, "iou": [(baseline, step)] per class
        (fractions), "miou": (baseline, step), "seconds_per_epoch": (baseline, step), "classes_lower": count of
        classes where the step is lower}.

    Raises:
        ValueError: ``against`` names no step in ``steps``, or the two runs score different classes.
    """
    if step.against is None:
        return None
    base_step = next((s for s in steps if s.key == step.against), None)
    if base_step is None:
        raise ValueError(f"headroom step {step.key!r} is compared against {step.against!r}, which is not a step")
    base, run = step_run(base_step, records, seed), step_run(step, records, seed)
    if base is None or run is None:
        return None
    if list(base["class_names"]) != list(run["class_names"]):
        raise ValueError(f"runs {base['run_id']} and {run['run_id']} score different classes: "
                         f"{base['class_names']} against {run['class_names']}")
    iou = list(zip(base["final"]["test"]["iou"], run["final"]["test"]["iou"]))
    return {"baseline": base_step, "step": step, "baseline_run": base, "run": run, "classes": list(base["class_names"]),
            "iou": iou, "miou": (base["final"]["test"]["miou"], run["final"]["test"]["miou"]),
            "seconds_per_epoch": tuple(r["wall_seconds"] / r["epochs_done"] for r in (base, run)),
            "classes_lower": sum(y < x for x, y in iou)}


def budget_pair_table(pair: Mapping[str, Any]) -> Any:
    """A :func:`budget_pair` as a table: test IoU % per class and mIoU for both runs and their difference, then
    each run's epochs and seconds per epoch, parameters and GMACs."""
    from smelib.study.tables import Table

    a, b = pair["baseline_run"], pair["run"]
    rows: list[list[Any]] = [[n, 100 * x, 100 * y, 100 * (y - x)] for n, (x, y) in zip(pair["classes"], pair["iou"])]
    x, y = pair["miou"]
    rows.append(["mIoU", 100 * x, 100 * y, 100 * (y - x)])
    rows.append(["epochs / s per epoch", *(f"{r['epochs_done']} / {s:.0f}" for r, s in
                                           zip((a, b), pair["seconds_per_epoch"])), ""])
    rows.append(["parameters (M) / GMACs", *(f"{r['params_m']:.2f} / {r['gmacs']:.2f}" for r in (a, b)), ""])
    base_key, key = pair["baseline"].key, pair["step"].key
    return Table(["", f"{base_key} ({a['model']}, {a['epochs_done']} epochs)",
                  f"{key} ({b['model']}, {b['epochs_done']} epochs)", f"Δ ({key} − {base_key})"], rows, decimals=2,
                 title=f"Test IoU % at one budget: {key} ({pair['step'].change}) against {base_key}")


def step_curve(record: Mapping[str, Any]) -> list[tuple[float, float]]:
    """A run's validation mIoU against the wall minutes spent so far: ``[(minutes, val_miou fraction)]``, one point
    per epoch that validated, from the record's ``history`` (each epoch's seconds include its validation)."""
    out, seconds = [], 0.0
    for h in record.get("history") or []:
        seconds += float(h.get("seconds") or 0.0)
        if h.get("val_miou") is not None:
            out.append((seconds / 60, float(h["val_miou"])))
    return out


def plot_step_curves(records: Sequence[Mapping[str, Any]], steps: Sequence[HeadroomStep] = HEADROOM_STEPS,
                     seed: int = 0, split: str = "official", ax: Any = None) -> Any:
    """Validation mIoU (%) against wall minutes for every training step on ``split`` that has a run at ``seed``
    (another split's validation images are other images, so its curves are not drawn beside these), with the
    budget as a vertical line: does a longer recipe still climb when its time is up, and where does it pass the
    protocol? Each run has its own cosine schedule, so a curve's early part is not the protocol's run.

    Returns:
        the matplotlib Axes.

    Raises:
        ValueError: no training step has a run at ``seed`` (an empty figure would look like a result).
    """
    import matplotlib.pyplot as plt

    curves = [(s, step_curve(r)) for s in steps if s.split == split and (r := step_run(s, records, seed)) is not None]
    curves = [(s, c) for s, c in curves if c]
    if not curves:
        raise ValueError(f"no headroom training step on the {split} split has a completed run with validation at "
                         f"seed {seed}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.4), dpi=110, layout="constrained")
    import seaborn as sns

    for (s, c), color in zip(curves, sns.color_palette("colorblind", len(curves))):
        ax.plot([m for m, _ in c], [100 * v for _, v in c], marker="o", markersize=3, color=color,
                label=f"{s.key} ({s.epochs} epochs)")
    ax.axvline(BUDGET_MINUTES, color="0.5", linestyle="--", linewidth=1, label=f"budget ({BUDGET_MINUTES} min)")
    ax.set(xlabel="wall minutes (training + validation)", ylabel="validation mIoU (%)",
           title=f"Headroom training steps, {split} split, seed {seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def _row_of(rows: Sequence[Mapping[str, Any]], config: str, model: str, split: str,
            epochs: int) -> Mapping[str, Any] | None:
    """The summary row of one (config, model, split, epochs), or None."""
    found = [r for r in rows if r.get("config") == config and r.get("model") == model and r.get("split") == split
             and str(r.get("epochs")) == str(epochs)]
    return found[0] if found else None


def _row_seeds(row: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """``(seed, test mIoU fraction)`` of each run a summary row averages (its ``run_ids``), in the row's order."""
    if row is None:
        return []
    by_id = {r.get("run_id"): r for r in records}
    runs = [by_id[i] for i in str(row.get("run_ids") or "").split() if i in by_id]
    return [(int(r["seed"]), float(r["final"]["test"]["miou"])) for r in runs]


def recipe_points(records: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
                  eval_records: Sequence[Mapping[str, Any]], steps: Sequence[HeadroomStep] = HEADROOM_STEPS,
                  split: str = "official") -> list[dict[str, Any]]:
    """One point per training step on ``split`` that has a summary row: what :func:`plot_recipe_steps` draws.

    Returns:
        ``[{"step", "epochs", "model", "miou" (the row's seed mean), "seeds": [(seed, miou)], "delta" (against the
        protocol's seed mean on the split; None for the protocol), "tta": mIoU with test-time augmentation on the
        step's seed-0 weights (a :func:`tta_pairs` pair whose run is the step's seed-0 run) or None,
        "tta_base": the same weights without it}]``, fractions, in the steps' order.
    """
    from smelib.study.conclusions import summary_value

    pairs = {b.get("run_id"): (a, b) for a, b in tta_pairs(eval_records)}
    proto = steps[0]
    base = summary_value(_row_of(rows, proto.config, proto.model, split, proto.epochs), "miou_mean")
    out = []
    for step in steps:
        if step.kind != "train" or step.split != split:
            continue
        row = _row_of(rows, step.config, step.model, split, step.epochs)
        if row is None:
            continue
        miou = summary_value(row, "miou_mean")
        run = step_run(step, records)
        pair = pairs.get(run["run_id"]) if run is not None else None
        out.append({"step": step.key, "epochs": step.epochs, "model": step.model, "miou": miou,
                    "seeds": _row_seeds(row, records),
                    "delta": None if step.key == proto.key or base is None or miou is None else miou - base,
                    "tta": None if pair is None else pair[1]["metrics"]["miou"],
                    "tta_base": None if pair is None else pair[0]["metrics"]["miou"]})
    return out


def plot_recipe_steps(points: Sequence[Mapping[str, Any]], paper_miou: float, ax: Any = None) -> Any:
    """Each training step's test mIoU (%) as a dot (its seeds as small grey dots), the step's weights with
    test-time augmentation as an open diamond, the protocol's seed mean ± standard deviation as a band, and the
    paper's figure as a dashed line; each dot is labelled with its change against the protocol.

    Args:
        points: :func:`recipe_points`, the protocol first.
        paper_miou: the paper's test mIoU in percent (labelled as the paper's: 300 epochs, 512 px, GPU).

    Returns:
        the matplotlib Axes.

    Raises:
        ValueError: no points (an empty figure would look like a result).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not points:
        raise ValueError("no headroom training step has a summary row to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.42 * len(points) + 1.6), dpi=110, layout="constrained")
    labels = [f"{p['step']} ({p['epochs']} ep)" for p in points]
    colors = sns.color_palette("colorblind", len(points))
    proto = [100 * m for _, m in points[0]["seeds"]]
    mean = sum(proto) / len(proto)
    if len(proto) > 1:
        sd = (sum((m - mean) ** 2 for m in proto) / (len(proto) - 1)) ** 0.5
        ax.axvspan(mean - sd, mean + sd, color="0.85", zorder=0, label="protocol, mean ± sd over seeds")
    ax.axvline(mean, color="0.5", linewidth=1, zorder=1)
    sns.stripplot(x=[100 * m for p in points for _, m in p["seeds"]],
                  y=[lab for p, lab in zip(points, labels) for _ in p["seeds"]], order=labels, color="0.45",
                  size=4, jitter=False, ax=ax, zorder=2)
    for i, (p, c) in enumerate(zip(points, colors)):
        x = 100 * p["miou"]
        ax.plot(x, i, "o", color=c, markersize=9, zorder=3)
        if p["tta"] is not None:
            t = 100 * (p["miou"] + p["tta"] - p["tta_base"])  # the paired gain, put on the step's figure
            ax.plot([x, t], [i, i], color=c, linewidth=1, zorder=2)
            ax.plot(t, i, "D", markerfacecolor="white", markeredgecolor=c, markersize=6, zorder=3)
        if p["delta"] is not None:
            ax.annotate(f"{100 * p['delta']:+.2f}", (x, i), xytext=(0, 8), textcoords="offset points",
                        ha="center", fontsize=8, color=c)
    ax.plot([], [], "D", markerfacecolor="white", markeredgecolor="0.3", label="+ test-time augmentation (paired)")
    ax.axvline(paper_miou, color="0.2", linestyle="--", linewidth=1,
               label=f"paper's {paper_miou:.2f} (300 epochs, 512 px, GPU)")
    ax.set(xlabel="test mIoU (%, official split; numbers: change against the protocol's mean)", ylabel="")
    ax.set_xlim(min(min(proto), *(100 * p["miou"] for p in points)) - 1.5, paper_miou + 1)
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend() is not None:  # seaborn's own, from the labelled band: the figure's legend replaces it
        ax.get_legend().remove()
    ax.figure.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=2,
                     frameon=False)
    return ax


def run_label(record: Mapping[str, Any]) -> str:
    """A short name for a run record: ``"<model> <epochs> ep, <split> s<seed>"`` with the paper's model as ``SME``
    and the lite model as ``lite`` (run ids are too long for an axis)."""
    model = {"sme_deeplabv3plus": "SME", "sme_deeplabv3plus_lite": "lite"}.get(str(record.get("model")),
                                                                                str(record.get("model")))
    split = (record.get("split") or {}).get("kind", "?")
    return f"{model} {record.get('epochs')} ep, {split} s{record.get('seed')}"


def plot_tta_gains(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                   records: Sequence[Mapping[str, Any]], ax: Any = None) -> Any:
    """Test-time augmentation's paired gain in test mIoU (points) for each checkpoint scored without and with it
    (:func:`tta_pairs`), one bar per checkpoint named by :func:`run_label` of the run that trained it and coloured
    by its split.

    Returns:
        the matplotlib Axes.

    Raises:
        ValueError: no pairs, or a pair whose run has no record in ``records``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not pairs:
        raise ValueError("no checkpoint was evaluated both without and with test-time augmentation")
    by_id = {r.get("run_id"): r for r in records}
    missing = sorted({str(b.get("run_id")) for _, b in pairs if b.get("run_id") not in by_id})
    if missing:
        raise ValueError(f"evaluation records name runs without a record: {missing}")
    pairs = sorted(pairs, key=lambda ab: ((by_id[ab[1]["run_id"]].get("split") or {}).get("kind", "?") != "official",
                                          run_label(by_id[ab[1]["run_id"]])))
    labels = [run_label(by_id[b["run_id"]]) for _, b in pairs]
    gains = [100 * (b["metrics"]["miou"] - a["metrics"]["miou"]) for a, b in pairs]
    splits = [(by_id[b["run_id"]].get("split") or {}).get("kind", "?") for _, b in pairs]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 0.32 * len(pairs) + 1.2), dpi=110, layout="constrained")
    from smelib.study.data_figures import split_color

    sns.barplot(x=gains, y=labels, hue=splits, palette={s: split_color(s) for s in splits}, dodge=False, ax=ax)
    for i, g in enumerate(gains):
        ax.annotate(f"{g:+.2f}", (g, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set(xlabel="Δ test mIoU with test-time augmentation (points, same weights)", ylabel="")
    ax.set_xlim(0, max(gains) * 1.25)
    handles, names = ax.get_legend_handles_labels()
    ax.get_legend().remove()  # below the bars, where it hides none of them
    ax.figure.legend(handles, [f"{n} split" for n in names], fontsize=8, loc="outside lower center",
                     ncols=len(names), frameon=False)
    return ax


def seed_points(records: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
                recipes: Sequence[tuple[str, str, str, int]], splits: Sequence[str] = ("official", "grouped"),
                ) -> list[dict[str, Any]]:
    """Test mIoU (%) of every seed of some recipes on some splits, one dict per run: ``{"recipe", "split", "seed",
    "miou"}``. ``recipes`` are ``(label, config, model, epochs)``; a recipe's runs on a split are those its summary
    row averages (the latest run per seed)."""
    out = []
    for label, config, model, epochs in recipes:
        for split in splits:
            for seed, miou in _row_seeds(_row_of(rows, config, model, split, epochs), records):
                out.append({"recipe": label, "split": split, "seed": seed, "miou": 100 * miou})
    return out


def plot_seed_points(points: Sequence[Mapping[str, Any]], ax: Any = None) -> Any:
    """:func:`seed_points` as a strip plot: one dot per seed, the recipes along x, the splits side by side in two
    colours, each group's mean as a bar.

    Returns:
        the matplotlib Axes.

    Raises:
        ValueError: no points.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not points:
        raise ValueError("no run to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2), dpi=110, layout="constrained")
    data = {k: [p[k] for p in points] for k in ("recipe", "split", "miou")}
    order = list(dict.fromkeys(data["recipe"]))
    hue_order = list(dict.fromkeys(data["split"]))
    from smelib.study.data_figures import split_color

    palette = {split: split_color(split) for split in hue_order}
    sns.stripplot(data=data, x="recipe", y="miou", hue="split", order=order, hue_order=hue_order, dodge=True,
                  jitter=0.08, size=6, palette=palette, ax=ax)
    sns.pointplot(data=data, x="recipe", y="miou", hue="split", order=order, hue_order=hue_order, dodge=0.4,
                  errorbar=None, markers="_", markersize=22, linestyles="none", palette=palette, ax=ax,
                  legend=False)
    ax.set(xlabel="", ylabel="test mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="split (dots: seeds; bars: mean)", fontsize=8, title_fontsize=8)
    return ax


def weight_average_pair(record: Mapping[str, Any]) -> dict[str, Any]:
    """The paired effect of ``train.ema`` in one run record: every epoch validates the weight average and the raw
    weights of the same trajectory (``val_miou``, ``val_raw_miou``), and the end tests each side's best-validating
    checkpoint (``final.test``, ``final.raw.test``).

    Returns:
        ``{"decay", "epochs": [..], "val_average": [..], "val_raw": [..], "test_average", "test_raw",
        "difference"}``: mIoU in percent, ``difference`` = average − raw on the test set, in points.

    Raises:
        ValueError: the record holds no raw side (a run without ``train.ema``, or written before it was recorded).
    """
    final = record.get("final") or {}
    raw = final.get("raw") or {}
    rows = [h for h in record.get("history") or [] if h.get("val_raw_miou") is not None]
    if not raw.get("test") or not rows or not final.get("test"):
        raise ValueError(f"run {record.get('run_id')!r} holds no paired raw-weights result (train.ema)")
    test_average, test_raw = 100 * final["test"]["miou"], 100 * raw["test"]["miou"]
    return {"decay": (record.get("config") or {}).get("train", {}).get("ema"),
            "epochs": [h["epoch"] for h in rows], "val_average": [100 * h["val_miou"] for h in rows],
            "val_raw": [100 * h["val_raw_miou"] for h in rows], "test_average": test_average, "test_raw": test_raw,
            "difference": test_average - test_raw}


def plot_weight_average(pair: Mapping[str, Any]) -> Any:
    """:func:`weight_average_pair` in two panels: validation mIoU per epoch of the average and of the raw weights
    (left), and the test mIoU of each side's best checkpoint with their difference (right).

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    colors = sns.color_palette("colorblind", 2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.8, 2.8), dpi=110, layout="constrained",
                                      gridspec_kw={"width_ratios": [3, 1.2]})
    left.plot(pair["epochs"], pair["val_raw"], "o-", color=colors[0], label="raw weights")
    left.plot(pair["epochs"], pair["val_average"], "s--", color=colors[1], label=f"average (decay {pair['decay']})")
    left.set(xlabel="epoch", ylabel="val mIoU (%)", title="validation, same trajectory")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    values = [pair["test_raw"], pair["test_average"]]
    right.bar([0, 1], values, color=colors, width=0.6)
    for x, v in enumerate(values):
        right.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    right.set_xticks([0, 1], ["raw", "average"])
    right.set_ylim(min(values) - 2, max(values) + 1)
    right.set(title=f"test: {pair['difference']:+.2f} points", ylabel="test mIoU (%)")
    right.grid(axis="y", alpha=0.3)
    return fig
