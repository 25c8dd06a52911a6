"""The benchmark: JSON keys and sanity of the numbers (no timing thresholds), the profiler table, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from smelib.tools import bench
from smelib.cli import main
from smelib.tools.optimize_inference import OptimizeOptions

MODE_KEYS = {"images_per_s", "gmacs_per_s", "peak_gmacs_per_s", "percent_of_peak", "mode", "device", "torch",
             "latency_ms_p50", "latency_ms_p95", "images_per_s_best", "percent_of_peak_best"}
RECORD_KEYS = {"loadavg_before", "loadavg_after", "threads", "machine", "options", "gmacs_per_image", "peak",
               "macs_convention"}


def check_result(r: dict, batch: int, train: bool, iters: int) -> None:
    assert r["task"] == ("train" if train else "inference") and r["batch"] == batch
    for mode in ("eager", "optimised"):
        m = r[mode]
        assert MODE_KEYS <= set(m), MODE_KEYS - set(m)
        assert m["mode"] == mode and m["device"] == "cpu" and m["torch"] == torch.__version__
        for key in ("images_per_s", "gmacs_per_s", "peak_gmacs_per_s", "percent_of_peak", "images_per_s_best"):
            assert m[key] > 0, (mode, key, m[key])
        assert 0 < m["percent_of_peak"] <= m["percent_of_peak_best"] <= 100 + 1e-9
        assert 0 < m["percent_of_adjacent_peak_p50"] <= 100 + 1e-9
        assert m["peak_gmacs_per_s"] >= m["peak_measured_gmacs_per_s"] > 0
        assert m["images_per_s_best"] >= m["images_per_s"] * (1 - 1e-9)
        assert m["latency_ms_p95"] >= m["latency_ms_p50"] >= m["latency_ms_min"] > 0
        assert len(m["latencies_ms"]) == iters
        # images/s, GMAC/s and % of peak are consistent with each other
        assert m["gmacs_per_s"] == pytest.approx(m["images_per_s"] * r["record"]["gmacs_per_image"])
        assert m["percent_of_peak"] == pytest.approx(100 * m["gmacs_per_s"] / m["peak_gmacs_per_s"])
        assert m["images_per_s"] == pytest.approx(1e3 * batch / m["latency_ms_p50"])
    rec = r["record"]
    assert RECORD_KEYS <= set(rec)
    assert rec["gmacs_per_image"] > 0
    assert rec["gmacs_per_image"] == pytest.approx((3 if train else 1) * rec["gmacs_per_image_forward"])
    assert rec["machine"]["cpu_model"] and rec["machine"]["torch"] == torch.__version__
    assert len(rec["peak"]["samples_gmacs_per_s"]) >= iters
    kernels = rec["peak"]["kernels"]
    assert {"matmul", "conv1x1", "conv3x3"} <= set(kernels)
    # the measured peak is the best of every kernel's samples, not the matmul's alone
    assert rec["peak"]["measured_best_gmacs_per_s"] == pytest.approx(
        max(v["best_gmacs_per_s"] for v in kernels.values()))
    assert rec["peak"]["theoretical"]["assumptions"].startswith("theoretical")
    assert r["speedup"] == pytest.approx(r["optimised"]["images_per_s"] / r["eager"]["images_per_s"])
    json.dumps(r)  # JSON-ready


def test_benchmark_inference_keys_and_sanity() -> None:
    r = bench.benchmark("sme_deeplabv3plus_lite", size=(48, 48), batch=2, iters=2, warmup=1,
                        options=OptimizeOptions(compile=False), peak_n=256)
    check_result(r, 2, False, 2)
    settings = r["optimised"]["settings"]
    assert settings["fold_bn"]["folded"] > 0 and settings["channels_last"] is True
    assert settings["compile"] == "off"
    assert r["record"]["executed_gmacs_per_image_optimised"] is not None
    assert r["record"]["executed_gmacs_per_image_optimised"] < r["record"]["gmacs_per_image"], \
        "the MSAA rewrite executes fewer multiply-adds than the model defines"
    assert "fvcore" in r["record"]["macs_convention"]


def test_benchmark_cpu_bf16_is_measured_against_a_bf16_peak() -> None:
    opts = OptimizeOptions(amp="bf16", cpu_amp=True, compile=False)
    r = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=2, iters=1, warmup=1, options=opts, peak_n=256)
    assert r["record"]["peak_optimised"]["dtype"] == "torch.bfloat16"
    assert r["optimised"]["peak_gmacs_per_s"] != r["eager"]["peak_gmacs_per_s"]
    assert r["optimised"]["percent_of_peak"] == pytest.approx(
        100 * r["optimised"]["gmacs_per_s"] / r["optimised"]["peak_gmacs_per_s"], rel=1e-6)


def test_benchmark_train_counts_three_forwards() -> None:
    r = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=2, iters=2, warmup=1, train=True,
                        options=OptimizeOptions(compile=False), peak_n=256)
    check_result(r, 2, True, 2)
    assert "3 x forward" in r["record"]["macs_convention"]
    assert r["optimised"]["settings"]["channels_last"] is True
    assert r["eager"]["settings"]["channels_last"] is False


def test_benchmark_train_layout_only_and_model_kwargs() -> None:
    # `--only channels_last`: the optimised step differs from the eager one by the layout alone (no fused
    # optimiser), and the factory keywords reach the model (a narrower decoder has fewer multiply-adds).
    opts = OptimizeOptions.from_names(["channels_last"])
    narrow = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=2, iters=1, warmup=1, train=True,
                             options=opts, peak_n=128, model_kwargs={"decoder_width": 8})
    settings = narrow["optimised"]["settings"]
    assert settings["channels_last"] is True and settings["fused_sgd"] is False
    assert narrow["record"]["model_kwargs"] == {"decoder_width": 8}
    wide = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=2, iters=1, warmup=1, train=True,
                           options=opts, peak_n=128)
    assert narrow["record"]["gmacs_per_image"] < wide["record"]["gmacs_per_image"]


def test_train_compile_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object):
        def run(*a: object, **k: object) -> None:
            raise RuntimeError("simulated compiler failure")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(bench, "compile_available", lambda device="cpu": (True, "pretend"))
    r = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=2, iters=1, warmup=1, train=True,
                        options=OptimizeOptions(compile=True), peak_n=128)
    assert r["optimised"]["settings"]["compile"].startswith("fallback: RuntimeError: simulated compiler failure")
    assert r["optimised"]["images_per_s"] > 0


def test_measure_peak() -> None:
    p = bench.measure_peak("cpu", n=128, repeats=3)
    assert p["peak_gmacs_per_s"] > 0 and len(p["samples"]) == 3
    assert p["peak_gmacs_per_s"] == pytest.approx(max(p["samples"]), rel=1e-2)
    assert p["peak_gmacs_per_s"] == max(k["best_gmacs_per_s"] for k in p["kernels"].values())
    assert p["best_kernel"] in ("matmul", "conv1x1", "conv3x3") and "assumptions" in p["theoretical"]


def test_a_mode_faster_than_the_peak_kernels_raises_the_peak() -> None:
    """Peak kernels of 8 x 8 (a few hundred multiply-adds, all call overhead) against a real model: both modes beat
    the measured peak, which is raised to the faster one; no percentage exceeds 100 and the record says why."""
    r = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=2, iters=2, warmup=1,
                        options=OptimizeOptions(compile=False), peak_n=8)
    check_result(r, 2, False, 2)
    fastest = max(("eager", "optimised"), key=lambda m: r[m]["gmacs_per_s_best"])
    peak = r["record"]["peak"]
    assert peak["raised_by"] == fastest and peak["best_gmacs_per_s"] > peak["measured_best_gmacs_per_s"]
    assert r[fastest]["percent_of_peak_best"] == pytest.approx(100.0)
    assert r["eager"]["peak_gmacs_per_s"] == r["optimised"]["peak_gmacs_per_s"] == peak["best_gmacs_per_s"]
    assert "raised from the measured" in bench.format_result(r)


def test_peak_ceiling() -> None:
    assert bench.peak_ceiling(110.0, {"eager": 170.0, "optimised": 229.0}) == {
        "gmacs_per_s": 229.0, "measured_gmacs_per_s": 110.0, "raised_by": "optimised"}
    assert bench.peak_ceiling(250.0, {"eager": 170.0})["raised_by"] is None
    assert bench.peak_ceiling(250.0, {})["gmacs_per_s"] == 250.0


CPUINFO = "".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t: {i // 2}\ncpu MHz\t\t: 2000.000\n"
                  f"flags\t\t: sse avx avx2 fma avx512f avx512_bf16\n\n" for i in range(4))


def test_theoretical_peak_from_flags_cores_and_clock() -> None:
    fp32 = bench.theoretical_peak(torch.float32, cpuinfo=CPUINFO)
    # 2 physical cores (4 threads), 16 fp32 lanes x 2 FMA units, 2.0 GHz from "cpu MHz"
    assert (fp32["cores"], fp32["macs_per_cycle_per_core"], fp32["clock_ghz"]) == (2, 32, 2.0)
    assert fp32["gmacs_per_s"] == pytest.approx(128.0) and "current clock" in fp32["clock_source"]
    assert bench.theoretical_peak(torch.bfloat16, cpuinfo=CPUINFO, clock_ghz=3.0)["gmacs_per_s"] == pytest.approx(384.0)
    assert bench.theoretical_peak(torch.float32, cpuinfo="")["gmacs_per_s"] is None


def test_peak_gap_never_exceeds_the_peak() -> None:
    """A class faster than the given peak (oneDNN convolutions beating a BLAS matmul) raises it to its own rate."""
    prof = {"steps": 1, "by_class": [{"class": "conv 1x1", "self_cpu_ms": 10.0, "macs": 2.29e9},  # 229 GMAC/s
                                     {"class": "conv dense 3x3", "self_cpu_ms": 10.0, "macs": 1.1e9}]}
    by = {r["class"]: r for r in bench.peak_gap(prof, peak_gmacs_per_s=110.0)}
    assert by["total"]["peak_gmacs_per_s"] == pytest.approx(229.0) and by["total"]["peak_raised_by"] == "conv 1x1"
    assert by["conv 1x1"]["percent_of_peak"] == pytest.approx(100.0)
    assert all(r["percent_of_peak"] <= 100 + 1e-9 for r in by.values())


def test_benchmark_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bench.benchmark("sme_deeplabv3plus_lite", iters=0)


def test_cli_bench_json_and_out(tmp_path, capsys) -> None:
    out = tmp_path / "b.json"
    rc = main(["bench", "sme_deeplabv3plus_lite", "--size", "32", "--batch", "2", "--iters", "2", "--warmup", "1",
               "--disable", "compile", "--json", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed["optimised"]["images_per_s"] == saved["optimised"]["images_per_s"]
    check_result(saved, 2, False, 2)
    assert saved["size"] == [32, 32]
    assert saved["record"]["options"]["compile"] is False


def test_cli_bench_errors(capsys) -> None:
    assert main(["bench", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["bench", "sme_deeplabv3plus_lite", "--disable", "warp_drive"]) == 2
    assert "unknown optimisation" in capsys.readouterr().err
    assert main(["bench", "sme_deeplabv3plus_lite", "--model-arg", "decoder_width"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["bench", "sme_deeplabv3plus_lite", "--size", "32", "--batch", "1", "--iters", "1",
                 "--model-arg", "warp_factor=9"]) == 2
    assert "warp_factor" in capsys.readouterr().err


def test_profile_table(tmp_path) -> None:
    prof = bench.profile_ops("sme_deeplabv3plus_lite", (48, 48), batch=2, steps=1, top=10)
    assert prof["top_ops"] and len(prof["top_ops"]) <= 10
    shares = [r["share"] for r in prof["by_class"]]
    assert sum(shares) == pytest.approx(1.0, rel=1e-6)
    classes = {r["class"] for r in prof["by_class"]}
    assert "conv depthwise 7x7" in classes
    assert 0 < prof["depthwise_7x7_share"] <= prof["depthwise_share"] < 1
    jpath, cpath = bench.write_profile(prof, tmp_path / "prof")
    assert json.loads(jpath.read_text())["model"] == "sme_deeplabv3plus_lite"
    assert cpath.read_text().startswith("kind,op_or_class")


def test_peak_gap_accounts_for_every_millisecond() -> None:
    prof = {"steps": 2, "by_class": [
        # 100 ms/batch for 8 G at 100 G/s: ideal 80
        {"class": "conv dense 3x3", "self_cpu_ms": 200.0, "macs": 2 * 8e9},
        {"class": "elementwise / norm", "self_cpu_ms": 40.0, "macs": None},  # 20 ms/batch, all lost
    ]}
    rows = bench.peak_gap(prof, peak_gmacs_per_s=100.0)
    by = {r["class"]: r for r in rows}
    assert by["conv dense 3x3"]["ideal_ms"] == pytest.approx(80.0)
    assert by["conv dense 3x3"]["lost_ms"] == pytest.approx(20.0)
    assert by["conv dense 3x3"]["percent_of_peak"] == pytest.approx(80.0)
    assert by["elementwise / norm"]["lost_ms"] == pytest.approx(20.0)
    assert by["elementwise / norm"]["percent_of_peak"] is None
    assert by["total"]["ms"] == pytest.approx(120.0) and by["total"]["percent_of_peak"] == pytest.approx(100 * 80 / 120)
    assert sum(r["lost_share"] for r in rows if r["class"] != "total") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bench.peak_gap(prof, 0)


def test_profile_rates_count_every_convolution_once() -> None:
    # The profiled kernels' multiply-adds must add up to fvcore's count of the same eager model (fvcore also counts
    # the few non-convolution multiply-adds: the upsampling), so no kernel is missed and no wrapper op is counted
    # twice; the rate of a class is its multiply-adds over its self time.
    from smelib.models.complexity import fvcore_macs
    from smelib.models import build

    prof = bench.profile_ops("sme_deeplabv3plus_lite", (48, 48), batch=2, steps=1, top=200, optimised=False)
    conv_macs = sum(r["macs"] or 0 for r in prof["by_class"])
    total, _ = fvcore_macs(build("sme_deeplabv3plus_lite").eval(), torch.randn(1, 3, 48, 48))
    assert conv_macs / 2 == pytest.approx(total, rel=0.02)
    dense = next(r for r in prof["by_class"] if r["class"] == "conv dense 3x3")
    assert dense["gmacs_per_s"] == pytest.approx(dense["macs"] / (dense["self_cpu_ms"] / 1e3) / 1e9)
    assert all(r["macs"] is None for r in prof["by_class"] if not r["class"].startswith("conv"))
    # A training step: forward + input and weight gradients = 3x the forward's convolution multiply-adds (the
    # first convolution needs no input gradient, so slightly less).
    prof = bench.profile_ops("sme_deeplabv3plus_lite", (48, 48), batch=2, steps=1, top=5, optimised=False, train=True)
    assert prof["task"] == "train"
    assert sum(r["macs"] or 0 for r in prof["by_class"]) / 2 == pytest.approx(3 * conv_macs / 2, rel=0.03)


@pytest.mark.parametrize("name,shapes,expected", [
    ("aten::mkldnn_convolution", [[16, 128, 13, 13], [128, 1, 7, 7], [128]], "conv depthwise 7x7"),
    ("aten::mkldnn_convolution", [[16, 304, 50, 50], [256, 304, 3, 3], [256]], "conv dense 3x3"),
    ("aten::mkldnn_convolution", [[16, 128, 13, 13], [512, 128, 1, 1], [512]], "conv 1x1"),
    ("aten::convolution_backward", [[16, 128, 13, 13], [16, 128, 13, 13], [128, 1, 7, 7]], "conv depthwise 7x7"),
    ("aten::mul", [[2, 3], [2, 3]], "elementwise / norm"),
    ("aten::cat", [], "concatenate"),
])
def test_classify(name: str, shapes: list, expected: str) -> None:
    assert bench._classify(name, shapes) == expected


def test_opt_threads_auto_probes_and_records() -> None:
    import os

    r = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=1, iters=2, warmup=1,
                        options=OptimizeOptions(compile=False), peak_n=128, opt_threads="auto", threads=1)
    probe = r["record"]["threads_probe_ms"]
    assert set(probe) == {str(n) for n in range(1, (os.cpu_count() or 1) + 1)}
    best = min(probe, key=probe.__getitem__)
    assert r["optimised"]["threads"] == int(best) == r["record"]["threads_optimised"]
    assert r["eager"]["threads"] == 1
    assert torch.get_num_threads() == 1, "the eager thread count is left in place after the run"


def test_opt_threads_fixed() -> None:
    r = bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=1, iters=1, warmup=0,
                        options=OptimizeOptions(compile=False), peak_n=128, opt_threads=1, threads=1)
    assert r["optimised"]["threads"] == 1 and r["record"]["threads_probe_ms"] is None
    with pytest.raises(ValueError):
        bench.benchmark("sme_deeplabv3plus_lite", size=(32, 32), batch=1, iters=1, opt_threads="many",
                        options=OptimizeOptions(compile=False), peak_n=128)
