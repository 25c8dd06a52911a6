"""Levers on the CPU budget, each one change against a protocol run, measured paired (the Headroom chapter).

A *lever run* sets exactly one of ``train.ema``, ``train.progressive`` or ``train.distill``. Its baseline is the
protocol run of the same model, split, seed and host ISA without any lever: a plain run if one was recorded,
else the raw-weights side of an ``train.ema`` run, which follows the same trajectory (the average never feeds back
into training). A distilled run's cost counts its teacher's training time.

Training-step speed levers come from the benchmark records instead (``results/bench/train_levers/``): each
``smelib bench --train --only <optimisation>`` record times the step with one optimisation against the eager step,
interleaved, and :mod:`smelib.study.train_levers` adds CPU bf16 and a cheaper dropout mask.

Whether bf16 autocast changes what training learns is a question of its rounding, not of the CPU that runs it:
without native bf16 instructions oneDNN emulates the same bf16 operands with fp32 accumulation, only slower. The
*precision check* (:func:`precision_check`) therefore pairs a bf16 run with an fp32 run on any host, on a protocol
short enough for the emulated speed, and reads the difference against the fp32 runs' seed spread.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smelib.data.loading import size_tuple
from smelib.study.plan import protocol_epochs
from smelib.study.results import _split_kind, _widest_isa

__all__ = [
    "LEVERS", "PRECISION_CHECK", "baseline_for", "bf16_train_speedup", "lever_of", "lever_pair", "lever_pairs",
    "plot_lever_curves", "plot_levers", "plot_precision_check", "plot_speed_levers", "precision_check",
    "size_epoch_seconds", "speed_levers", "validation_curve"
]

#: The ``train`` keys that make a run a lever run, in the order the chapter shows them.
LEVERS: tuple[str, ...] = ("ema", "progressive", "distill")


def _train(record: Mapping[str, Any]) -> Mapping[str, Any]:
    return (record.get("config") or {}).get("train") or {}


def lever_of(record: Mapping[str, Any]) -> str | None:
    """The one lever a run record sets (``"ema"``, ``"progressive"``, ``"distill"``), None for a plain run.

    Raises:
        ValueError: the record sets more than one (its difference would have two causes).
    """
    found = [key for key in LEVERS if _train(record).get(key)]
    if len(found) > 1:
        raise ValueError(f"run {record.get('run_id')!r} sets {found}: a lever run changes one thing")
    return found[0] if found else None


def _same_protocol(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return (a.get("model") == b.get("model") and _split_kind(a) == _split_kind(b) and a.get("seed") == b.get("seed")
            and _widest_isa(a.get("host") or {}) == _widest_isa(b.get("host") or {})
            and str(b.get("config_name", "")).startswith("cpu_budget") and b.get("status") == "completed")


def baseline_for(record: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
                 ) -> tuple[Mapping[str, Any], str] | None:
    """The paired baseline of a lever run and which side of it to read: ``(plain run, "final")`` when one was
    recorded with the same model, split, seed and host ISA at the epochs of ``configs/cpu_budget.yaml``, else
    ``(ema run, "raw")``; an EMA run is its own baseline (``"raw"``). None when there is none."""
    if lever_of(record) == "ema":
        return record, "raw"
    epochs = protocol_epochs("cpu_budget")
    candidates = [r for r in records if r is not record and _same_protocol(record, r)
                  and int(_train(r).get("epochs") or 0) == epochs]
    plain = [r for r in candidates if lever_of(r) is None]
    if plain:
        return plain[-1], "final"
    averaged = [r for r in candidates if lever_of(r) == "ema" and ((r.get("final") or {}).get("raw") or {}).get("test")]
    return (averaged[-1], "raw") if averaged else None


_TEACHER_NAMES = {"sme_deeplabv3plus_lite": "the lite model", "sme_deeplabv3plus": "SME-DeepLabV3+", "hrnet": "HRNet",
                  "pspnet": "PSPNet"}


def _describe(record: Mapping[str, Any]) -> str:
    train, lever = _train(record), lever_of(record)
    if lever == "ema":
        return f"weight average (decay {train['ema']})"
    if lever == "progressive":
        spec = train["progressive"]
        size = spec["size"] if isinstance(spec["size"], int) else "x".join(map(str, spec["size"]))
        return f"progressive resizing ({spec['epochs']} of {train['epochs']} epochs at {size} px)"
    if lever == "distill":
        spec, teacher = train["distill"], record.get("teacher") or {}
        name = _TEACHER_NAMES.get(str(teacher.get("model")), str(teacher.get("model", "a teacher")))
        epochs = (teacher.get("best") or {}).get("epoch")
        return (f"distillation from {name}" + (f" at {epochs} epochs" if epochs else "")
                + f" (T {spec['temperature']:g}, weight {spec['weight']:g})")
    return "protocol"


def lever_pair(record: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A lever run against its baseline (:func:`baseline_for`).

    Returns:
        ``{"lever", "label", "run_id", "baseline_run_id", "teacher_run_id", "test", "test_baseline", "difference",
        "train_minutes", "baseline_train_minutes", "teacher_minutes", "time_ratio"}``: test mIoU in percent,
        ``difference`` in points; ``time_ratio`` = (training + teacher's training) / baseline's training, None for
        the weight average (its baseline is itself).

    Raises:
        ValueError: the run is no lever run, has no test result, or has no baseline among ``records``.
    """
    lever = lever_of(record)
    found = baseline_for(record, records) if lever else None
    if lever is None or found is None or not (record.get("final") or {}).get("test"):
        raise ValueError(f"run {record.get('run_id')!r} is no finished lever run with a recorded baseline")
    base, side = found
    base_test = ((base.get("final") or {}).get("raw") or {}).get("test") if side == "raw" else base["final"]["test"]
    teacher_minutes, teacher_id = 0.0, (record.get("teacher") or {}).get("run_id")
    if lever == "distill":
        teacher = next((r for r in records if r.get("run_id") == teacher_id), None)
        if teacher is None:
            raise ValueError(f"run {record.get('run_id')!r}: its teacher's run {teacher_id!r} is not recorded")
        teacher_minutes = float(teacher["train_seconds"]) / 60
    minutes, base_minutes = float(record["train_seconds"]) / 60, float(base["train_seconds"]) / 60
    test, test_base = 100 * record["final"]["test"]["miou"], 100 * base_test["miou"]
    return {"lever": lever, "label": _describe(record), "run_id": record["run_id"], "baseline_run_id": base["run_id"],
            "teacher_run_id": teacher_id,
            "test": test, "test_baseline": test_base, "difference": test - test_base,
            "train_minutes": minutes, "baseline_train_minutes": base_minutes, "teacher_minutes": teacher_minutes,
            "time_ratio": None if base is record else (minutes + teacher_minutes) / base_minutes}


def lever_pairs(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`lever_pair` of every finished lever run in ``records``, in :data:`LEVERS` order."""
    runs = [r for r in records if r.get("status") == "completed" and lever_of(r)]
    runs.sort(key=lambda r: (LEVERS.index(lever_of(r) or ""), r["run_id"]))
    return [lever_pair(r, records) for r in runs]


def plot_levers(pairs: Sequence[Mapping[str, Any]], seed_std: float | None = None) -> Any:
    """Each lever's paired test-mIoU difference (left; the grey band is ± one seed standard deviation of the
    protocol, ``seed_std`` points) and its training time against the baseline's (right; the teacher's share
    hatched).

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    colors = sns.color_palette("colorblind", len(LEVERS))
    labels = [p["label"] for p in pairs]
    y = list(range(len(pairs)))[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 0.55 * len(pairs) + 1.5), dpi=110, sharey=True,
                                      layout="constrained", gridspec_kw={"width_ratios": [1.3, 1]})
    if seed_std:
        left.axvspan(-seed_std, seed_std, color="0.88", zorder=0, label="± seed s.d.")
    left.axvline(0, color="0.4", lw=0.8)
    for yi, p in zip(y, pairs):
        c = colors[LEVERS.index(p["lever"])]
        left.plot(p["difference"], yi, "o", color=c, ms=8)
        left.annotate(f"{p['difference']:+.2f}", (p["difference"], yi), textcoords="offset points", xytext=(0, 7),
                      ha="center", fontsize=8)
        if p["time_ratio"] is None:
            right.text(1.0, yi, "same run", va="center", ha="center", fontsize=8, color="0.35")
            continue
        own = p["train_minutes"] / p["baseline_train_minutes"]
        right.barh(yi, own, color=c, height=0.5)
        if p["teacher_minutes"]:
            right.barh(yi, p["teacher_minutes"] / p["baseline_train_minutes"], left=own, color="white",
                       edgecolor=c, hatch="///", height=0.5, label="teacher's training")
        right.annotate(f"{p['time_ratio']:.2f}x", (p["time_ratio"], yi), textcoords="offset points", xytext=(4, 0),
                       va="center", fontsize=8)
    right.axvline(1.0, color="0.4", lw=0.8)
    left.set_ylim(min(y) - 0.6, max(y) + 0.6)
    left.set(yticks=y, yticklabels=[_wrap(s) for s in labels], xlabel="test mIoU − baseline (points)",
             title="accuracy, paired")
    span = max([abs(p["difference"]) for p in pairs] + [seed_std or 0]) * 1.5 + 0.2
    left.set_xlim(-span, span)
    right.set(xlabel="training time / baseline's", title="cost")
    right.set_xlim(0, max([p["time_ratio"] or 1 for p in pairs]) * 1.3)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
    names = [n for ax in (left, right) for n in ax.get_legend_handles_labels()[1]]
    unique = dict(zip(names, handles))
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=len(unique), fontsize=8,
                   frameon=False)
    return fig


def validation_curve(record: Mapping[str, Any], side: str = "final") -> tuple[list[float], list[float]]:
    """Validation mIoU (percent) against the minutes the epoch loop had run (training and validation) at each
    epoch's end; ``side="raw"`` reads an EMA run's raw weights (``val_raw_miou``)."""
    key = "val_raw_miou" if side == "raw" else "val_miou"
    minutes, values, total = [], [], 0.0
    for row in record.get("history") or []:
        total += float(row.get("seconds") or 0.0)
        if row.get(key) is not None:
            minutes.append(total / 60)
            values.append(100 * float(row[key]))
    return minutes, values


def size_epoch_seconds(record: Mapping[str, Any]) -> dict[int, float]:
    """Mean seconds of training (validation excluded) per epoch at each training size of a run, e.g. ``{128: ..,
    200: ..}`` for a progressive run; a size of 0 stands for the images' own.

    An epoch's training seconds come from the cumulative ``images_per_s`` of consecutive history rows.
    """
    train = _train(record)
    spec = train.get("progressive")
    native = size_tuple(((record.get("config") or {}).get("data") or {}).get("size"))
    per_size: dict[int, list[float]] = {}
    before = 0.0
    for i, row in enumerate(record.get("history") or []):
        images = float(row["step"]) * float(record["batch_size"])
        spent = images / float(row["images_per_s"])
        size = size_tuple(spec["size"]) if spec and i < int(spec["epochs"]) else native
        per_size.setdefault(size[0] if size else 0, []).append(spent - before)
        before = spent
    return {size: sum(v) / len(v) for size, v in per_size.items()}


def plot_lever_curves(pairs: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> Any:
    """Validation curves of the training levers (progressive resizing, distillation) and of their baseline,
    against the minutes each run took (a teacher's training not included).

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    colors = sns.color_palette("colorblind", len(LEVERS))
    by_id = {r["run_id"]: r for r in records}
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=110, layout="constrained")
    drawn: set[str] = set()
    for p in pairs:
        if p["time_ratio"] is None:
            continue  # the weight average: one run, shown epoch by epoch in its own figure
        base = by_id[p["baseline_run_id"]]
        if base["run_id"] not in drawn:
            side = "raw" if lever_of(base) == "ema" else "final"
            ax.plot(*validation_curve(base, side), "o-", color="0.45", ms=4, label="baseline (protocol run)")
            drawn.add(base["run_id"])
        ax.plot(*validation_curve(by_id[p["run_id"]]), "s--", ms=4, color=colors[LEVERS.index(p["lever"])],
                label=_wrap(p["label"], 40))
    ax.set(xlabel="minutes of the run (training and validation)", ylabel="val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _wrap(text: str, width: int = 26) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


#: The optimisations ``smelib bench --train --only`` timed one at a time, and whether the training loop uses them.
_BENCH_LEVERS: dict[str, tuple[str, bool]] = {
    "channels_last": ("channels-last (NHWC) layout", True),
    "reuse_memory": ("reuse freed memory (glibc)", True),
    "fused_optimizer": ("fused optimiser step", False),
    "compile": ("torch.compile of the model", False),
}


def speed_levers(bench_dir: str | Path) -> list[dict[str, Any]]:
    """The training-step speed levers measured in ``bench_dir`` (``lite_train_<optimisation>.json`` from
    ``smelib bench --train --only``, ``train_levers.json`` from :mod:`smelib.study.train_levers`).

    Returns:
        rows ``{"lever", "speedup", "in_recipe", "source"}``: ``speedup`` = step time without / with the lever.
        For the byte dropout mask it is the whole step's, from the time it saves on the decoder's dropout pair.

    Raises:
        ValueError: a record cannot be read (the message names the file).
    """
    bench_dir = Path(bench_dir)
    rows: list[dict[str, Any]] = []
    for key, (label, used) in _BENCH_LEVERS.items():
        path = bench_dir / f"lite_train_{key}.json"
        if path.exists():
            record = _read(path)
            rows.append({"lever": label, "speedup": float(record["speedup"]), "in_recipe": used,
                         "source": path.name})
    path = bench_dir / "train_levers.json"
    if path.exists():
        record = _read(path)
        step = record["bf16_step"]["median_seconds"]
        rows.append({"lever": "bf16 autocast (" + _isa(record) + ")", "speedup": step["fp32"] / step["bf16"],
                     "in_recipe": False, "source": path.name})
        pair = record["dropout_pair"]["median_seconds"]
        saved = pair["bernoulli"] - pair["byte_mask"]
        rows.append({"lever": "byte dropout mask", "speedup": step["fp32"] / (step["fp32"] - saved),
                     "in_recipe": False, "source": path.name})
    return rows


def bf16_train_speedup(bf16_path: str | Path, fp32_path: str | Path) -> dict[str, Any]:
    """The training-step speedup of CPU bf16 autocast from two ``smelib bench --train`` records of one model, one
    with ``--cpu-bf16`` and one without, both on a CPU with native bf16 (the optimised step of each).

    Returns:
        a :func:`speed_levers` row ``{"lever", "speedup", "in_recipe", "source"}``.

    Raises:
        ValueError: a record cannot be read, the two differ in model, batch, size or CPU, or the CPU lacks native
            bf16 (an emulated bf16 step says nothing about the lever on a CPU that has it).
    """
    bf16_path, fp32_path = Path(bf16_path), Path(fp32_path)
    bf16, fp32 = _read(bf16_path), _read(fp32_path)
    for path, rec in ((bf16_path, bf16), (fp32_path, fp32)):
        if rec.get("task") != "train" or _isa(rec.get("record") or {}) != "native bf16":
            raise ValueError(f"{path.name}: not a training benchmark on a CPU with native bf16")
    same = ("model", "batch", "size")
    if [bf16.get(k) for k in same] != [fp32.get(k) for k in same] or _cpu(bf16) != _cpu(fp32):
        raise ValueError(f"{bf16_path.name} and {fp32_path.name} time different steps or CPUs")
    return {"lever": f"bf16 autocast (native bf16, {bf16['model']})",
            "speedup": bf16["optimised"]["images_per_s"] / fp32["optimised"]["images_per_s"], "in_recipe": False,
            "source": bf16_path.name}


def _cpu(bench: Mapping[str, Any]) -> Any:
    return ((bench.get("record") or {}).get("machine") or {}).get("cpu_model")


def _isa(record: Mapping[str, Any]) -> str:
    flags = set((record.get("machine") or {}).get("cpu_flags") or [])
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return "native bf16"
    return "no native bf16"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.name}: cannot read the benchmark record ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a benchmark record is a JSON object")
    return data


def plot_speed_levers(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Training-step speedup of each lever (log scale, 1 = no change); filled where the training loop uses it.

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    blue = sns.color_palette("colorblind", 1)[0]
    y = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(7.2, 0.42 * len(rows) + 1.2), dpi=110, layout="constrained")
    ax.axvline(1.0, color="0.4", lw=0.8)
    for yi, r in zip(y, rows):
        ax.plot([1.0, r["speedup"]], [yi, yi], color=blue, lw=1.5, alpha=0.6)
        ax.plot(r["speedup"], yi, "o", ms=8, color=blue, markerfacecolor=blue if r["in_recipe"] else "white")
        ax.annotate(f"{r['speedup']:.2f}x", (r["speedup"], yi), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    ax.set_xscale("log")
    lo, hi = min(0.8, *(r["speedup"] for r in rows)), max(1.2, *(r["speedup"] for r in rows))
    ticks = [t for t in (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0) if lo / 1.5 <= t <= hi * 1.5]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}x"))
    ax.set_xlim(lo / 1.5, hi * 1.3)
    ax.set(yticks=y, yticklabels=[r["lever"] for r in rows],
           xlabel="training-step speedup (log scale; filled: used in training)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(min(y) - 0.7, max(y) + 0.7)
    return fig


#: Config names of the precision check's runs, by precision (one protocol, with ``train.amp=none`` or ``bf16``).
PRECISION_CHECK: dict[str, str] = {"fp32": "precision_check_fp32", "bf16": "precision_check_bf16"}


def precision_check(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The bf16-against-fp32 training pair among ``records`` (config names :data:`PRECISION_CHECK`).

    Returns:
        ``{"runs": [{"precision", "seed", "test", "train_minutes", "run_id"}, ...], "difference", "fp32_std",
        "epochs", "size", "model"}``: test mIoU in percent; ``difference`` = bf16 − fp32 at the bf16 run's seed
        (points); ``fp32_std`` the sample standard deviation of the fp32 seeds (None below two).

    Raises:
        ValueError: no finished bf16 run with an fp32 run of the same seed, or the runs differ in anything but
            precision and seed (model, split, epochs, size, host ISA).

    The chapter's runs: ``smelib train --config configs/cpu_budget.yaml --model sme_deeplabv3plus_lite --seed S
    train.epochs=2 data.size=128 name=precision_check_bf16 train.amp=bf16`` (seed 0), and the same with
    ``name=precision_check_fp32 train.amp=none`` (seeds 0, 1, 2).
    """
    runs = [r for r in records if r.get("config_name") in PRECISION_CHECK.values() and r.get("status") == "completed"
            and (r.get("final") or {}).get("test")]
    by_precision = {p: [r for r in runs if r["config_name"] == name] for p, name in PRECISION_CHECK.items()}
    pair = next(((f, b) for b in by_precision["bf16"] for f in by_precision["fp32"] if f["seed"] == b["seed"]), None)
    if pair is None:
        raise ValueError("no finished precision-check pair: a bf16 run and an fp32 run with the same seed")

    def protocol(r: Mapping[str, Any]) -> tuple[Any, ...]:
        cfg = r.get("config") or {}
        return (r.get("model"), _split_kind(r), _train(r).get("epochs"), (cfg.get("data") or {}).get("size"),
                _widest_isa(r.get("host") or {}))

    odd = [r["run_id"] for r in runs if protocol(r) != protocol(pair[1])]
    if odd:
        raise ValueError(f"precision-check runs {odd} differ from {pair[1]['run_id']!r} in more than precision")
    rows = [{"precision": p, "seed": r["seed"], "test": 100 * r["final"]["test"]["miou"],
             "train_minutes": float(r["train_seconds"]) / 60, "run_id": r["run_id"]}
            for p in PRECISION_CHECK for r in sorted(by_precision[p], key=lambda r: r["seed"])]
    fp32 = [row["test"] for row in rows if row["precision"] == "fp32"]
    model, _, epochs, size, _ = protocol(pair[1])
    return {"runs": rows, "difference": 100 * (pair[1]["final"]["test"]["miou"] - pair[0]["final"]["test"]["miou"]),
            "fp32_std": statistics.stdev(fp32) if len(fp32) > 1 else None, "epochs": epochs, "size": size,
            "model": model}


def plot_precision_check(check: Mapping[str, Any]) -> Any:
    """Test mIoU of the precision check's runs: the fp32 seeds (circles) and the bf16 run (square), its fp32
    partner of the same seed joined to it by a line.

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    colors = dict(zip(PRECISION_CHECK, sns.color_palette("colorblind", len(PRECISION_CHECK))))
    rows = check["runs"]
    fig, ax = plt.subplots(figsize=(6.4, 1.9), dpi=110, layout="constrained")
    ys = {p: i for i, p in enumerate(reversed(list(PRECISION_CHECK)))}
    for r in rows:
        ax.plot(r["test"], ys[r["precision"]], "o" if r["precision"] == "fp32" else "s", ms=9,
                color=colors[r["precision"]])
        ax.annotate(f"seed {r['seed']}", (r["test"], ys[r["precision"]]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    for b in (r for r in rows if r["precision"] == "bf16"):
        partner = next((r for r in rows if r["precision"] == "fp32" and r["seed"] == b["seed"]), None)
        if partner:
            ax.plot([partner["test"], b["test"]], [ys["fp32"], ys["bf16"]], color="0.5", lw=0.8, ls=":")
    ax.set(yticks=list(ys.values()), yticklabels=[f"{p} training" for p in ys], xlabel="test mIoU (%)")
    ax.set_ylim(-0.6, len(ys) - 0.3)
    values = [r["test"] for r in rows]
    ax.set_xlim(min(values) - 1.0, max(values) + 1.0)
    ax.grid(axis="x", alpha=0.3)
    return fig
