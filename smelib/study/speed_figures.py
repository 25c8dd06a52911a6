"""Figures and tables of the Speed chapter, read from the benchmark records (``results/bench/``).

A throughput record (``smelib bench --out``) holds, per mode, the latency of every timed repetition and the peak
multiply-add rate measured in the same run; a profile record (``smelib bench --profile``) holds the time of each
operator class. Timings from different machines are never put on one axis: :func:`plot_throughput` draws one panel
per host, each against that host's own peak.

>>> records = load_bench_records("results/bench")            # doctest: +SKIP
>>> fig = plot_throughput(throughput_rows(records))         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODE_LABELS", "bench_host", "is_idle", "load_bench_records", "plot_operator_split", "plot_throughput",
           "profile_shares", "record_variant", "throughput_rows"]

#: The bars of :func:`plot_throughput`, in display order.
MODE_LABELS: tuple[str, ...] = ("eager fp32", "optimised fp32", "optimised bf16")

_SHORT_MODELS = {"sme_deeplabv3plus": "SME", "sme_deeplabv3plus_lite": "lite"}


def load_bench_records(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every throughput record (a JSON with ``eager`` and ``optimised``) under ``folder``, by file stem, sorted."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "eager" in doc and "optimised" in doc:
            out[path.stem] = doc
    return out


def bench_host(record: Mapping[str, Any]) -> str:
    """The machine a record was taken on, in words: vendor and family, vector units, cores, e.g.
    ``"Intel Xeon · AVX-512, AMX · 2 cores"``."""
    machine = record["record"]["machine"]
    model = " ".join(w for w in str(machine.get("cpu_model", "unknown CPU")).replace("(R)", "").split()
                     if w != "Processor")
    flags = set(machine.get("cpu_flags") or [])
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    if "amx_tile" in flags:
        isa += ", AMX"
    return f"{model} · {isa} · {machine.get('cpu_count', '?')} cores"


def is_idle(record: Mapping[str, Any]) -> bool:
    """Whether the machine was otherwise idle when the run began: the 1-minute load average before it below the
    number of cores (the benchmark's own threads count about one per core once it runs)."""
    rec = record["record"]
    load = (rec.get("loadavg_before") or [float("inf")])[0]
    return load < int(rec["machine"].get("cpu_count") or 1)


def record_variant(stem: str) -> str:
    """What a record varies, from its file name: ``"cpu bf16"``, ``"no memory reuse"`` or ``"default"``."""
    if stem.endswith("cpu_bf16"):
        return "cpu bf16"
    return "no memory reuse" if stem.endswith("no_reuse") else "default"


def _repetitions(record: Mapping[str, Any], mode: str) -> list[tuple[float, float]]:
    """(images/s, % of the run's peak) of every timed repetition of ``mode``."""
    r = record[mode]
    per_image = record["record"]["gmacs_per_image"]
    out = []
    for ms in r["latencies_ms"]:
        ips = record["batch"] / (ms / 1e3)
        out.append((ips, 100 * ips * per_image / r["peak_gmacs_per_s"]))
    return out


def throughput_rows(records: Mapping[str, Mapping[str, Any]], idle_only: bool = True) -> list[dict[str, Any]]:
    """Long-form rows, one per timed repetition, of the records :func:`plot_throughput` draws.

    The default records give ``eager fp32`` and ``optimised fp32``; a ``cpu bf16`` record gives only its
    ``optimised bf16`` (its eager mode is fp32 again). Records taken before memory reuse, and (``idle_only``)
    records not :func:`is_idle`, are left out.

    Returns:
        dicts with ``host``, ``case`` (e.g. ``"SME inference"``), ``mode`` (one of :data:`MODE_LABELS`),
        ``images_per_s``, ``percent`` (of the peak of the mode's own dtype), ``record_percent`` and
        ``record_images_per_s`` (the record's own p50 figures) and ``peak`` (GMAC/s).
    """
    rows = []
    for stem, rec in records.items():
        variant = record_variant(stem)
        if variant == "no memory reuse" or (idle_only and not is_idle(rec)):
            continue
        modes = {"optimised": "optimised bf16"} if variant == "cpu bf16" else {
            "eager": "eager fp32", "optimised": "optimised fp32"}
        case = f"{_SHORT_MODELS.get(rec['model'], rec['model'])} {rec['task']}"
        for mode, label in modes.items():
            for ips, pct in _repetitions(rec, mode):
                rows.append({"host": bench_host(rec), "case": case, "mode": label, "images_per_s": ips,
                             "percent": pct, "record_percent": rec[mode]["percent_of_peak"],
                             "record_images_per_s": rec[mode]["images_per_s"],
                             "peak": rec[mode]["peak_gmacs_per_s"]})
    return rows


def _p50_rate(values: Sequence[float]) -> float:
    """The rate at the median latency: rates are inverse latencies, so this is 1 / median(1 / rate), which equals
    the record's own p50 figure for any number of repetitions."""
    return float(1 / np.median(1 / np.asarray(values, dtype=float)))


def _span(values: Any) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}"


def plot_throughput(rows: Sequence[Mapping[str, Any]], width: float = 6.8) -> Any:
    """Bars of % of the peak per (model, task) and mode, one panel per host, whiskers over the repetitions.

    Each bar is the rate at the median latency (the record's ``percent_of_peak``), its whisker the range over
    the timed repetitions, its label the images/s at the median latency. Each panel's title names its host;
    no axis is shared between hosts.

    Args:
        rows: from :func:`throughput_rows`.
        width: figure width in inches.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.container import BarContainer

    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no throughput rows to draw")
    hosts = sorted(dict.fromkeys(df["host"]), key=lambda h: -df.loc[df["host"] == h, "case"].nunique())
    cases = {h: sorted(dict.fromkeys(df.loc[df["host"] == h, "case"]), key=lambda c: (not c.startswith("SME "), c))
             for h in hosts}
    fig, axes = plt.subplots(1, len(hosts), figsize=(width, 3.4), dpi=110, layout="constrained", squeeze=False,
                             width_ratios=[len(cases[h]) + 0.6 for h in hosts])
    palette = dict(zip(MODE_LABELS, sns.color_palette("colorblind", len(MODE_LABELS))))
    for ax, host in zip(axes[0], hosts):
        sub = df[df["host"] == host]
        order = [m for m in MODE_LABELS if m in set(sub["mode"])]
        sns.barplot(sub, x="case", y="percent", hue="mode", order=cases[host], hue_order=order, palette=palette,
                    estimator=_p50_rate, errorbar=("pi", 100), err_kws={"linewidth": 1}, capsize=0.15, ax=ax,
                    legend=ax is axes[0][0])
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        for container, mode in zip(bars, order):
            present = [c for c in cases[host] if ((sub["case"] == c) & (sub["mode"] == mode)).any()]
            ips = [_p50_rate(sub.loc[(sub["case"] == c) & (sub["mode"] == mode), "images_per_s"]) for c in present]
            for bar, v in zip(container, ips):
                ax.text(bar.get_x() + bar.get_width() / 2, 2, f"{v:.0f}", ha="center", va="bottom", fontsize=7,
                        color="white")
        ax.set_ylim(0, 100)
        ax.set_xlabel("")
        ax.set_ylabel("% of the peak of its dtype" if ax is axes[0][0] else "")
        dtypes = dict.fromkeys(m.split()[-1] for m in order)
        peaks = ", ".join(f"{d} {_span(sub.loc[sub['mode'].str.endswith(d), 'peak'])}" for d in dtypes)
        ax.set_title(f"{host}\npeak (GMAC/s): {peaks}", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].legend(title=None, fontsize=7, loc="upper right", frameon=False)
    fig.suptitle("Throughput against each machine's own peak (numbers in the bars: images/s)", fontsize=9)
    return fig


def profile_shares(prof: Mapping[str, Any], min_share: float = 0.02) -> dict[str, float]:
    """A profile's share of time per operator class, classes under ``min_share`` pooled into ``"other"``
    (the profile's own ``other`` included); shares sum to 1, largest first, ``other`` last."""
    shares: dict[str, float] = {}
    rest = 0.0
    for c in prof["by_class"]:
        if c["class"] == "other" or c["share"] < min_share:
            rest += c["share"]
        else:
            shares[c["class"]] = shares.get(c["class"], 0.0) + c["share"]
    total = sum(shares.values()) + rest
    out = dict(sorted(((k, v / total) for k, v in shares.items()), key=lambda kv: -kv[1]))
    out["other"] = rest / total
    return out


def plot_operator_split(profiles: Mapping[str, Mapping[str, Any]], width: float = 6.8, min_share: float = 0.02) -> Any:
    """One horizontal stacked bar per profile: the share of time of each operator class
    (:func:`profile_shares`), with the profile's time per batch at the bar's end.

    Args:
        profiles: bar label -> profile record (``smelib bench --profile``), drawn top to bottom.
        width: figure width in inches.
        min_share: classes below this share of every profile are pooled into ``other``.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    shares = {label: profile_shares(p, 0.0) for label, p in profiles.items()}
    keep = [k for k in dict.fromkeys(k for s in shares.values() for k in s)
            if k != "other" and max(s.get(k, 0.0) for s in shares.values()) >= min_share]
    keep.sort(key=lambda k: -max(s.get(k, 0.0) for s in shares.values()))
    classes = [*keep, "other"]
    colours = dict(zip(classes, sns.color_palette("colorblind", len(classes))))
    fig, ax = plt.subplots(figsize=(width, 0.6 * len(profiles) + 1.6), dpi=110, layout="constrained")
    labels = list(profiles)
    for i, label in enumerate(labels):
        s = shares[label]
        left = 0.0
        for k in classes:
            v = 100 * (s.get(k, 0.0) if k != "other" else 1.0 - sum(s.get(c, 0.0) for c in keep))
            ax.barh(i, v, left=left, color=colours[k], label=k if i == 0 else None, edgecolor="white", linewidth=0.5)
            if v >= 6:
                ax.text(left + v / 2, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white")
            left += v
        prof = profiles[label]
        ax.text(101, i, f"{prof['total_self_cpu_ms'] / prof['steps']:.0f} ms", va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("% of profiled operator time per batch (right: total, ms per batch of 16)")
    ax.legend(ncol=4, fontsize=7, loc="lower center", bbox_to_anchor=(0.45, 1.0), frameon=False)
    return fig
