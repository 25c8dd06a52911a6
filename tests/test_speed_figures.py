"""The Speed chapter's figures (smelib.study.speed_figures): rows from bench records, one panel per host, the
idle rule, and the operator split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smelib.study.speed_figures import (
    bench_host,
    is_idle,
    load_bench_records,
    plot_operator_split,
    plot_throughput,
    profile_shares,
    record_variant,
    throughput_rows,
)

XEON = {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_flags": ["avx2", "avx512f", "amx_tile"], "cpu_count": 2}
EPYC = {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "fma"], "cpu_count": 2}


def bench(machine: dict, latencies: tuple[list[float], list[float]], load: float = 1.5, task: str = "inference",
          peak: float = 200.0) -> dict:
    """A throughput record: batch 16, 2 GMACs per image, the given latencies (ms) per mode."""
    modes = {}
    for mode, lat in zip(("eager", "optimised"), latencies):
        p50 = sorted(lat)[len(lat) // 2] if len(lat) % 2 else sum(sorted(lat)[len(lat) // 2 - 1:][:2]) / 2
        ips = 16 / (p50 / 1e3)
        modes[mode] = {"latencies_ms": lat, "images_per_s": ips, "peak_gmacs_per_s": peak,
                       "percent_of_peak": 100 * ips * 2.0 / peak}
    return {"model": "sme_deeplabv3plus", "task": task, "batch": 16, **modes,
            "record": {"gmacs_per_image": 2.0, "loadavg_before": [load, 1.0, 1.0], "machine": machine}}


def test_hosts_variants_and_the_idle_rule() -> None:
    assert bench_host(bench(XEON, ([1.0], [1.0]))) == "Intel Xeon · AVX-512, AMX · 2 cores"
    assert bench_host(bench(EPYC, ([1.0], [1.0]))) == "AMD EPYC · AVX2 · 2 cores"
    assert is_idle(bench(EPYC, ([1.0], [1.0]), load=1.9)) and not is_idle(bench(EPYC, ([1.0], [1.0]), load=2.2))
    assert [record_variant(s) for s in ("a_infer", "a_infer_cpu_bf16", "a_infer_no_reuse")] == [
        "default", "cpu bf16", "no memory reuse"]


def test_rows_reproduce_the_records_p50_and_leave_out_loaded_and_old_records() -> None:
    records = {"sme_infer": bench(XEON, ([400.0, 420.0, 500.0, 410.0], [200.0, 210.0, 260.0, 205.0])),
               "sme_infer_cpu_bf16": bench(XEON, ([400.0, 401.0], [50.0, 52.0]), peak=1000.0),
               "sme_infer_no_reuse": bench(XEON, ([900.0, 901.0], [800.0, 801.0])),
               "ceiling_check_loaded": bench(EPYC, ([900.0, 901.0], [800.0, 801.0]), load=2.5)}
    rows = throughput_rows(records)
    assert {(r["host"].split()[0], r["mode"]) for r in rows} == {
        ("Intel", "eager fp32"), ("Intel", "optimised fp32"), ("Intel", "optimised bf16")}
    assert len(throughput_rows(records, idle_only=False)) == len(rows) + 4
    from smelib.study.speed_figures import _p50_rate

    for mode, rec, key in (("eager fp32", records["sme_infer"], "eager"),
                           ("optimised bf16", records["sme_infer_cpu_bf16"], "optimised")):
        sel = [r for r in rows if r["mode"] == mode]
        assert _p50_rate([r["percent"] for r in sel]) == pytest.approx(rec[key]["percent_of_peak"])
        assert _p50_rate([r["images_per_s"] for r in sel]) == pytest.approx(rec[key]["images_per_s"])


def test_throughput_figure_has_one_panel_per_host_each_with_its_own_peak() -> None:
    import matplotlib.pyplot as plt

    records = {"a_infer": bench(XEON, ([400.0, 420.0], [200.0, 210.0])),
               "a_train": bench(XEON, ([900.0, 950.0], [700.0, 750.0]), task="train", peak=210.0),
               "ceiling_idle": bench(EPYC, ([1000.0, 1100.0], [990.0, 1000.0]), peak=86.0)}
    fig = plot_throughput(throughput_rows(records))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Intel Xeon · AVX-512, AMX · 2 cores\npeak (GMAC/s): fp32 200–210",
                      "AMD EPYC · AVX2 · 2 cores\npeak (GMAC/s): fp32 86"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["SME inference", "SME train"]
    plt.close("all")
    with pytest.raises(ValueError, match="no throughput rows"):
        plot_throughput([])


def test_operator_shares_pool_small_classes_and_sum_to_one() -> None:
    import matplotlib.pyplot as plt

    prof = {"steps": 2, "total_self_cpu_ms": 100.0,
            "by_class": [{"class": "conv dense 3x3", "share": 0.6}, {"class": "conv 1x1", "share": 0.3},
                         {"class": "upsample", "share": 0.01}, {"class": "other", "share": 0.09}]}
    shares = profile_shares(prof)
    assert list(shares) == ["conv dense 3x3", "conv 1x1", "other"]
    assert shares["other"] == pytest.approx(0.10) and sum(shares.values()) == pytest.approx(1.0)
    fig = plot_operator_split({"inference": prof, "again": prof})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["inference", "again"]
    assert "50 ms" in [t.get_text() for t in fig.axes[0].texts]
    plt.close("all")


def test_load_reads_only_throughput_records(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps(bench(EPYC, ([1.0], [1.0]))))
    (tmp_path / "profile_x.json").write_text(json.dumps({"by_class": []}))
    (tmp_path / "accuracy.json").write_text(json.dumps({"miou": 0.7}))
    assert list(load_bench_records(tmp_path)) == ["b"]
