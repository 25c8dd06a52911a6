"""Aggregating run records: one row per (config, model, split, epochs), mean and spread over training seeds.

>>> from smelib.study.results import load_records, summarize
>>> rows = summarize(load_records("results/runs"))      # list of dicts, one per (config, model, split, epochs)

Each row (all metrics fractions in [0, 1], measured on the run's final evaluation subset, normally ``test``)::

    config, model, split, epochs, metric_split, n_seeds, seeds,
    miou_mean, miou_std, precision_mean, mpa_mean, recall_mean, pixel_acc_mean,
    iou_<class>_mean, iou_<class>_std (one pair per class), miou_defects_mean, miou_defects_std,
    gmacs, params_m, train_minutes, images_per_s, cpu_steal_mean, hosts, dirty_runs, run_ids

``*_std`` is the sample standard deviation over seeds (None with one seed). Only records with
``status == "completed"`` count; when one seed was run more than once, the latest record is used. Runs of one
config trained for different epoch counts (``--epochs`` overrides) are different rows, never averaged together.

``train_minutes`` and ``images_per_s`` are means over the seeds' machines, which need not be one machine: ``hosts``
names each distinct one (:func:`host_label`) and ``cpu_steal_mean`` is the mean share of CPU time the hypervisor
took during the runs (empty for records older than that field), so a reader can tell a slow model from a slow host.

``dirty_runs`` counts the row's runs made from a tree with uncommitted changes (``git.dirty`` in the record): their
code is not exactly the recorded commit's. :func:`smelib.study.results.is_dirty` reads it, and tables mark such rows
with :data:`smelib.study.results.DIRTY_MARK`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CONTENDED", "DIRTY_MARK", "epoch_histories", "every_run_tables", "format_summary", "host_label",
           "is_dirty", "load_eval_records", "load_records", "plot_epoch_histories", "short_run_id", "summarize",
           "timed_alone", "timed_on_one_host", "write_csv"]


def short_run_id(run_id: str) -> str:
    """A run id as a reader needs it beside its model and protocol: seed and start time (UTC), e.g.
    ``"cpu_budget_sme_deeplabv3plus_grouped_s0_20261201T213844Z"`` -> ``"s0 · 2026-12-01 21:38"``; an id of another
    form is returned unchanged."""
    import re

    m = re.search(r"_s(\d+)_(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})\d{2}Z$", str(run_id))
    return f"s{m[1]} · {m[2]}-{m[3]}-{m[4]} {m[5]}:{m[6]}" if m else str(run_id)


def load_records(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``<runs_dir>/*/record.json`` (any status), sorted by run id.

    Raises:
        ValueError: a record cannot be read or is not a JSON object; the message names the file. Records are
            written atomically, so a broken one is damage to fix, not a run to leave out of the tables unseen.
    """
    records = []
    for path in sorted(Path(runs_dir).glob("*/record.json")):
        rec = _read_object(path, "run record")
        rec.setdefault("run_dir", str(path.parent))
        records.append(rec)
    return records


def _read_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError naming the file (as ``what``) when it cannot be read or is not one."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {err}") from err
    if not isinstance(rec, dict):
        raise ValueError(f"{what} {str(path)!r} is not a JSON object but a {type(rec).__name__}")
    return rec


def load_eval_records(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every evaluation record (``smelib eval --record``) ``<folder>/*.json``, sorted by file name; each gets a
    ``"file"`` key (its stem).

    Raises:
        ValueError: a file cannot be read, is not a JSON object, or is not an evaluation record (no
            ``"kind": "evaluation"`` or no ``metrics``); the message names the file.
    """
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        rec = _read_object(path, "evaluation record")
        if rec.get("kind") != "evaluation" or not isinstance(rec.get("metrics"), dict):
            raise ValueError(f"{str(path)!r} is not an evaluation record (written by `smelib eval --record`)")
        rec["file"] = path.stem
        out.append(rec)
    return out


def host_label(rec: Mapping[str, Any]) -> str:
    """A record's machine as ``"<cpu model> [<widest vector ISA>] x<cores>"``, e.g.
    ``"Intel(R) Xeon(R) Processor [avx512] x2"``; ``"unknown"`` for records without host information.

    The ISA level is what decides PyTorch's CPU speed between otherwise same-named virtual CPUs (an AVX2-only host
    trains about half as fast as an AVX-512 one here), so two records with one label ran on comparable machines.
    """
    host = rec.get("host")
    if not isinstance(host, Mapping) or not host.get("cpu"):
        return "unknown"
    label = f"{host['cpu']} [{_widest_isa(host)}]"
    return label + (f" x{host['cpu_cores']}" if host.get("cpu_cores") else "")


def _widest_isa(host: Mapping[str, Any]) -> str:
    """A record's ``host``'s widest vector ISA: ``"avx512"``, ``"avx2"``, ``"no avx2"`` or, for records without
    ``cpu_flags``, ``"isa unknown"``."""
    flags = set(host.get("cpu_flags") or [])
    return next((name for name, flag in (("avx512", "avx512f"), ("avx2", "avx2")) if flag in flags),
                "no avx2" if "cpu_flags" in host else "isa unknown")


def timed_on_one_host(rec: Mapping[str, Any]) -> bool:
    """Whether a record's wall time was spent on one kind of machine: True unless it was resumed (its ``segments``,
    one per training process) on a machine with another :func:`host_label` than the record's own."""
    label = host_label(rec)
    return all(host_label(seg) == label for seg in rec.get("segments") or [])


#: Above this share of the machine's CPU time spent by other processes (``cpu_others_fraction``) a run's wall
#: time is not the machine's speed: a second job on two cores can make a run half again as long.
CONTENDED = 0.10


def timed_alone(rec: Mapping[str, Any]) -> bool:
    """Whether a record's wall time was spent without other work beside it: no ``cpu_others_fraction`` above
    :data:`CONTENDED`, the record's or any of its training processes' (``segments``). Records written before the
    field existed say nothing and count as alone."""
    shares = [rec.get("cpu_others_fraction"), *(seg.get("cpu_others_fraction") for seg in rec.get("segments") or [])]
    return all(s is None or s <= CONTENDED for s in shares)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


def _std(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.stdev(vals) if len(vals) > 1 else None


def _final_metrics(rec: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    final = rec.get("final") or {}
    for part in ("test", "val"):
        if final.get(part):
            return part, final[part]
    return None, None


def summarize(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group completed records by (config, model, split kind, epochs) and average over seeds (module docstring)."""
    latest: dict[tuple[str, str, str, int, int], Mapping[str, Any]] = {}
    for rec in records:
        if rec.get("status") != "completed" or _final_metrics(rec)[1] is None:
            continue
        split = rec.get("split", {})
        key = (str(rec.get("config_name")), str(rec.get("model")),
               str(split.get("kind") if isinstance(split, Mapping) else split), int(rec.get("epochs") or 0),
               int(rec.get("seed", 0)))
        if key not in latest or str(rec.get("finished_utc", "")) >= str(latest[key].get("finished_utc", "")):
            latest[key] = rec
    groups: dict[tuple[str, str, str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for (config, model, split, epochs, _seed), rec in sorted(latest.items()):
        groups[(config, model, split, epochs)].append(rec)

    rows = []
    for (config, model, split, epochs), recs in groups.items():
        parts = [_final_metrics(r) for r in recs]
        metrics = [m for _, m in parts]
        names = list(recs[0].get("class_names") or [f"class {i}" for i in range(len(metrics[0]["iou"]))])
        row: dict[str, Any] = {
            "config": config, "model": model, "split": split, "epochs": epochs or None,
            "metric_split": "/".join(sorted({p for p, _ in parts if p})),
            "n_seeds": len(recs), "seeds": " ".join(str(r.get("seed")) for r in recs),
            "miou_mean": _mean([m["miou"] for m in metrics]), "miou_std": _std([m["miou"] for m in metrics]),
            "precision_mean": _mean([m["precision"] for m in metrics]),
            "mpa_mean": _mean([m["mpa"] for m in metrics]),
            "recall_mean": _mean([m["recall"] for m in metrics]),
            "pixel_acc_mean": _mean([m.get("pixel_acc") for m in metrics]),
        }
        for i, name in enumerate(names):
            per_seed = [m["iou"][i] if i < len(m["iou"]) else None for m in metrics]
            row[f"iou_{name.replace(' ', '_')}_mean"] = _mean(per_seed)
            row[f"iou_{name.replace(' ', '_')}_std"] = _std(per_seed)
        row["miou_defects_mean"] = _mean([m["defects_only"]["miou"] for m in metrics])
        row["miou_defects_std"] = _std([m["defects_only"]["miou"] for m in metrics])
        row["gmacs"] = _mean([r.get("gmacs") for r in recs])
        row["params_m"] = _mean([r.get("params_m") for r in recs])
        minutes = _mean([r.get("wall_seconds") for r in recs])
        row["train_minutes"] = minutes / 60 if minutes is not None else None
        row["images_per_s"] = _mean([r.get("images_per_s") for r in recs])
        row["cpu_steal_mean"] = _mean([r.get("cpu_steal_fraction") for r in recs])
        row["hosts"] = " | ".join(sorted({host_label(r) for r in recs}))
        # runs made from a tree with uncommitted changes: their code is not exactly the recorded commit's
        row["dirty_runs"] = sum(bool((r.get("git") or {}).get("dirty")) for r in recs)
        row["run_ids"] = " ".join(str(r.get("run_id")) for r in recs)
        rows.append(row)
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write summary rows as CSV (columns: the union of the rows' keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return path


#: The mark tables put beside a summary row some of whose runs were made from a dirty tree.
DIRTY_MARK = "†"


def is_dirty(row: Mapping[str, Any]) -> bool:
    """Whether a summary row (:func:`smelib.study.results.summarize`, or a row read back from ``summary.csv``)
    holds a run made from a tree with uncommitted changes (its ``dirty_runs`` count)."""
    value = row.get("dirty_runs")
    try:
        return value not in (None, "") and int(float(value)) > 0
    except (TypeError, ValueError):
        return False


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of summary rows; metrics in percent, ``±`` the std over seeds."""

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    iou_cols = []
    for row in rows:
        iou_cols += [k for k in row if k.startswith("iou_") and k.endswith("_mean") and k not in iou_cols]
    head = ["config", "model", "split", "epochs", "on", "seeds", "mIoU", "mIoU defects", "MPA", "precision",
            *[k[4:-5] for k in iou_cols], "GMACs", "params M", "minutes"]
    table = []
    for r in rows:
        miou = pct(r["miou_mean"]) + (f" ± {100 * r['miou_std']:.2f}" if r.get("miou_std") is not None else "")
        miou += f" {DIRTY_MARK}" if is_dirty(r) else ""
        table.append([r["config"], r["model"], r["split"], str(r.get("epochs") or "-"), r.get("metric_split", ""),
                      str(r["n_seeds"]), miou,
                      pct(r["miou_defects_mean"]), pct(r["mpa_mean"]), pct(r["precision_mean"]),
                      *[pct(r.get(k)) for k in iou_cols],
                      "-" if r.get("gmacs") is None else f"{r['gmacs']:.3f}",
                      "-" if r.get("params_m") is None else f"{r['params_m']:.3f}",
                      "-" if r.get("train_minutes") is None else f"{r['train_minutes']:.1f}"])
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths)))
              for t in table]
    lines.append("metrics in percent (mean over seeds ± sample std); 'on' = the subset measured")
    if any(is_dirty(r) for r in rows):
        lines.append(f"{DIRTY_MARK} some of the row's runs were made from a tree with uncommitted changes (git.dirty)")
    return "\n".join(lines)


def _split_kind(rec: Mapping[str, Any]) -> str:
    """A run record's split kind (``official``, ``grouped``, ``leaky``); records store the split as a dict."""
    split = rec.get("split")
    return str(split.get("kind", "?")) if isinstance(split, Mapping) else str(split)


def _short_host(rec: Mapping[str, Any]) -> str:
    """:func:`host_label` in a table cell's width: the CPU family and its widest vector ISA, e.g. ``"Xeon avx512"``."""
    host = rec.get("host")
    if not isinstance(host, Mapping) or not host.get("cpu"):
        return "unknown"
    words = str(host["cpu"]).replace("(R)", "").split()
    family = next((w for w in words if w in ("Xeon", "EPYC", "Core", "Ryzen")), " ".join(words[:2]))
    isa = _widest_isa(host)
    return family if isa == "isa unknown" else f"{family} {isa}"


def every_run_tables(records: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The appendix "Every run": one :class:`~smelib.study.tables.Table` per config name, one row per run record
    (any status), oldest first — model, split, seed, epochs done of planned, test mIoU (else validation, marked),
    training wall time, host (:func:`host_label`) and start date. A run from a tree with uncommitted changes is
    marked :data:`DIRTY_MARK`; a run whose wall time was shared with other work (:func:`timed_alone`) ``*``.
    """
    from smelib.study.tables import Table

    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        by_config.setdefault(str(rec.get("config_name") or "?"), []).append(rec)
    tables = []
    for config in sorted(by_config):
        rows = []
        for rec in sorted(by_config[config], key=lambda r: str(r.get("started_utc") or "")):
            part, metrics = _final_metrics(rec)
            miou = "-" if metrics is None else f"{100 * metrics['miou']:.2f}" + ("" if part == "test" else " (val)")
            miou += f" {DIRTY_MARK}" if (rec.get("git") or {}).get("dirty") else ""
            wall = rec.get("wall_seconds")
            minutes = "-" if wall is None else f"{wall / 60:.0f}" + ("" if timed_alone(rec) else " *")
            done, planned = rec.get("epochs_done"), rec.get("epochs")
            epochs = f"{done}/{planned}" if done is not None and done != planned else str(planned or "-")
            rows.append([str(rec.get("model")), _split_kind(rec), rec.get("seed"), epochs, miou, minutes,
                         _short_host(rec), str(rec.get("started_utc") or "")[:10]])
        tables.append(Table(["model", "split", "seed", "epochs", "mIoU %", "minutes", "host", "started"], rows,
                            title=f"config {config}: {len(rows)} run{'s' if len(rows) != 1 else ''}"))
    return tables


def epoch_histories(records: Iterable[Mapping[str, Any]], models: Sequence[str], config: str = "cpu_budget",
                    epochs: int | None = None, splits: Sequence[str] = ("official", "grouped")) -> list[dict[str, Any]]:
    """Per-epoch history of the completed runs of ``models`` under ``config`` on ``splits``, one dict per epoch:
    ``{"model", "split", "seed", "epoch", "val_miou" (%), "train_loss", "minutes" (wall minutes so far)}``.

    Only runs of ``epochs`` epochs count (default: every length); when a seed was run more than once, the latest
    record is used, as in :func:`summarize`. Sorted by model (in ``models``' order), split, seed and epoch.
    """
    latest: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for rec in records:
        split = _split_kind(rec)
        if (rec.get("status") != "completed" or rec.get("config_name") != config or rec.get("model") not in models
                or split not in splits or (epochs is not None and rec.get("epochs") != epochs)):
            continue
        key = (str(rec["model"]), str(split), int(rec.get("seed", 0)))
        if key not in latest or str(rec.get("finished_utc", "")) >= str(latest[key].get("finished_utc", "")):
            latest[key] = rec
    out = []
    for (model, split, seed), rec in sorted(latest.items(), key=lambda kv: (list(models).index(kv[0][0]),
                                                                           list(splits).index(kv[0][1]), kv[0][2])):
        seconds = 0.0
        for h in rec.get("history") or []:
            seconds += float(h.get("seconds") or 0.0)
            if h.get("val_miou") is None:
                continue
            out.append({"model": model, "split": split, "seed": seed, "epoch": int(h["epoch"]),
                        "val_miou": 100 * float(h["val_miou"]), "train_loss": h.get("train_loss"),
                        "minutes": seconds / 60})
    return out


def plot_epoch_histories(rows: Sequence[Mapping[str, Any]], y: str = "val_miou", ncols: int = 3,
                         ylabel: str = "val mIoU (%)") -> Any:
    """Small multiples of :func:`epoch_histories`: one panel per model (in the rows' order), ``y`` against the
    epoch, one line per seed, coloured by split; axes shared, one legend for the figure.

    Returns:
        the matplotlib Figure.

    Raises:
        ValueError: no rows (an empty figure would look like a result).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not rows:
        raise ValueError("no run history to plot")
    models = list(dict.fromkeys(r["model"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7, 1.9 * nrows + 0.6), dpi=110, sharex=True, sharey=True,
                             layout="constrained", squeeze=False)
    from smelib.study.data_figures import split_color

    palette = {split: split_color(split) for split in splits}
    for ax, model in zip(axes.flat, models):
        data = {k: [r[k] for r in rows if r["model"] == model] for k in ("epoch", y, "split", "seed")}
        sns.lineplot(data=data, x="epoch", y=y, hue="split", units="seed", estimator=None, hue_order=splits,
                     palette=palette, marker="o", markersize=3, linewidth=1, alpha=0.8, legend=False, ax=ax)
        ax.set_title(model, fontsize=9)
        ax.set(xlabel="", ylabel="")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    handles = [plt.Line2D([], [], color=palette[s], marker="o", markersize=3, label=f"{s} split") for s in splits]
    handles.append(plt.Line2D([], [], color="none", label="(one line per seed)"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)
    return fig
