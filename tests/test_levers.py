"""smelib.study.levers: lever runs paired with their baselines, and the training-step speed levers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smelib.study import levers

AVX2 = {"cpu_flags": ["avx2", "fma"]}


def _rec(run_id: str, *, train: dict | None = None, test: float = 0.75, raw: float | None = None,
         seconds: float = 600.0, name: str = "cpu_budget", host: dict = AVX2, model: str = "m", **extra) -> dict:
    final = {"test": {"miou": test}}
    if raw is not None:
        final["raw"] = {"test": {"miou": raw}}
    return {"run_id": run_id, "config_name": name, "config": {"train": {"epochs": 6, **(train or {})}},
            "model": model, "seed": 0, "split": {"kind": "official"}, "host": host, "status": "completed",
            "final": final, "train_seconds": seconds, **extra}


def test_each_lever_run_is_paired_with_its_protocol_run_on_the_same_isa() -> None:
    ema = _rec("ema", name="cpu_budget_ema", train={"ema": 0.998}, test=0.7750, raw=0.7746)
    prog = _rec("prog", name="cpu_budget_progressive", test=0.78,
                train={"epochs": 8, "progressive": {"size": 128, "epochs": 5}}, seconds=660)
    teacher = _rec("teacher", name="distill_teacher", model="hrnet", seconds=1200)
    kd = _rec("kd", name="cpu_budget_distill", test=0.77, seconds=900,
              teacher={"run_id": "teacher", "model": "hrnet", "best": {"epoch": 6}},
              train={"distill": {"teacher": "t.pt", "temperature": 2.0, "weight": 1.0}})
    other_host = _rec("plain512", host={"cpu_flags": ["avx2", "avx512f"]}, test=0.9)
    records = [ema, prog, teacher, kd, other_host]
    pairs = levers.lever_pairs(records)
    assert [p["lever"] for p in pairs] == ["ema", "progressive", "distill"]
    by = {p["lever"]: p for p in pairs}
    assert by["ema"]["difference"] == pytest.approx(0.04) and by["ema"]["time_ratio"] is None
    # no plain AVX2 run: the progressive run is read against the raw side of the EMA run, not the AVX-512 run
    assert by["progressive"]["baseline_run_id"] == "ema"
    assert by["progressive"]["difference"] == pytest.approx(78 - 77.46)
    assert by["progressive"]["time_ratio"] == pytest.approx(660 / 600)
    assert by["distill"]["time_ratio"] == pytest.approx((900 + 1200) / 600)
    assert by["distill"]["teacher_run_id"] == "teacher" and by["progressive"]["teacher_run_id"] is None
    assert "5 of 8 epochs at 128 px" in by["progressive"]["label"] and "HRNet at 6 epochs" in by["distill"]["label"]
    plain = _rec("plain", test=0.76)
    assert levers.lever_pair(prog, [*records, plain])["baseline_run_id"] == "plain"  # a plain run comes first


def test_a_run_without_a_baseline_or_with_two_levers_is_an_error() -> None:
    prog = _rec("prog", train={"epochs": 8, "progressive": {"size": 128, "epochs": 5}})
    with pytest.raises(ValueError, match="prog"):
        levers.lever_pair(prog, [prog])
    both = _rec("both", train={"ema": 0.99, "progressive": {"size": 128, "epochs": 2}})
    with pytest.raises(ValueError, match="one thing"):
        levers.lever_of(both)
    kd = _rec("kd", teacher={"run_id": "gone"}, train={"distill": {"teacher": "t", "temperature": 1, "weight": 1}})
    with pytest.raises(ValueError, match="gone"):
        levers.lever_pair(kd, [kd, _rec("plain")])


def test_speed_levers_read_the_bench_records(tmp_path: Path) -> None:
    (tmp_path / "lite_train_channels_last.json").write_text(json.dumps({"speedup": 1.36}))
    (tmp_path / "lite_train_compile.json").write_text(json.dumps({"speedup": 0.97}))
    (tmp_path / "train_levers.json").write_text(json.dumps({
        "machine": {"cpu_flags": ["avx2"]},
        "bf16_step": {"median_seconds": {"fp32": 0.7, "bf16": 7.0}},
        "dropout_pair": {"median_seconds": {"bernoulli": 0.04, "byte_mask": 0.02, "none": 0.002}}}))
    rows = {r["lever"]: r for r in levers.speed_levers(tmp_path)}
    assert rows["channels-last (NHWC) layout"]["in_recipe"] and rows["channels-last (NHWC) layout"]["speedup"] == 1.36
    assert rows["bf16 autocast (no native bf16)"]["speedup"] == pytest.approx(0.1)
    assert rows["byte dropout mask"]["speedup"] == pytest.approx(0.7 / 0.68)
    assert not rows["torch.compile of the model"]["in_recipe"]
    (tmp_path / "train_levers.json").write_text("{")
    with pytest.raises(ValueError, match="train_levers.json"):
        levers.speed_levers(tmp_path)


def test_the_plots_draw_every_lever() -> None:
    import matplotlib

    matplotlib.use("Agg")
    ema = _rec("ema", name="cpu_budget_ema", train={"ema": 0.998}, test=0.7750, raw=0.7746)
    prog = _rec("prog", train={"epochs": 8, "progressive": {"size": 128, "epochs": 5}}, seconds=660)
    fig = levers.plot_levers(levers.lever_pairs([ema, prog]), seed_std=0.5)
    assert len(fig.axes[0].get_yticklabels()) == 2
    fig = levers.plot_speed_levers([{"lever": "a", "speedup": 1.3, "in_recipe": True},
                                    {"lever": "b", "speedup": 0.1, "in_recipe": False}])
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks["a"] > ticks["b"]  # the first row on top


def test_validation_curves_accumulate_the_epoch_minutes() -> None:
    import matplotlib

    matplotlib.use("Agg")
    history = [{"epoch": 1, "seconds": 60, "val_miou": 0.5, "val_raw_miou": 0.4},
               {"epoch": 2, "seconds": 120, "val_miou": 0.6, "val_raw_miou": 0.7}]
    ema = _rec("ema", name="cpu_budget_ema", train={"ema": 0.998}, test=0.7750, raw=0.7746, history=history)
    assert levers.validation_curve(ema) == ([1.0, 3.0], [50.0, 60.0])
    assert levers.validation_curve(ema, "raw") == ([1.0, 3.0], [40.0, 70.0])
    prog = _rec("prog", train={"epochs": 8, "progressive": {"size": 128, "epochs": 5}}, history=history[:1])
    fig = levers.plot_lever_curves(levers.lever_pairs([ema, prog]), [ema, prog])
    assert len(fig.axes[0].get_lines()) == 2  # the baseline's raw side and the progressive run


def test_size_epoch_seconds_separates_the_small_epochs() -> None:
    history = [{"step": 10, "images_per_s": 10.0}, {"step": 20, "images_per_s": 10.0},  # 8 s, then 8 s
               {"step": 30, "images_per_s": 6.0}]  # 240 images in 40 s: the third epoch took 24 s
    prog = _rec("prog", train={"epochs": 3, "progressive": {"size": 128, "epochs": 2}}, history=history,
                batch_size=8)
    assert levers.size_epoch_seconds(prog) == pytest.approx({128: 8.0, 0: 24.0})


def test_the_precision_check_pairs_bf16_with_fp32_of_the_same_seed() -> None:
    def run(run_id: str, precision: str, seed: int, test: float, size: int = 128) -> dict:
        r = _rec(run_id, name=levers.PRECISION_CHECK[precision], test=test, train={"epochs": 2})
        r["seed"], r["config"]["data"] = seed, {"size": size}
        return r

    records = [run("f0", "fp32", 0, 0.60), run("f1", "fp32", 1, 0.62), run("f2", "fp32", 2, 0.58),
               run("b0", "bf16", 0, 0.605), _rec("plain")]
    check = levers.precision_check(records)
    assert check["difference"] == pytest.approx(0.5)
    assert check["fp32_std"] == pytest.approx(2.0)
    assert [(r["precision"], r["seed"]) for r in check["runs"]] == [("fp32", 0), ("fp32", 1), ("fp32", 2),
                                                                     ("bf16", 0)]
    assert (check["epochs"], check["size"]) == (2, 128)
    assert levers.plot_precision_check(check).axes[0].get_yticklabels()[0].get_text() == "bf16 training"
    with pytest.raises(ValueError, match="same seed"):
        levers.precision_check([run("b1", "bf16", 1, 0.6), run("f0", "fp32", 0, 0.6)])
    with pytest.raises(ValueError, match="more than precision"):
        levers.precision_check([*records, run("f3", "fp32", 3, 0.6, size=200)])


def test_the_native_bf16_speedup_needs_two_matching_records_on_a_bf16_cpu(tmp_path: Path) -> None:
    def bench(name: str, ips: float, flags: list[str], batch: int = 16) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"model": "m", "task": "train", "batch": batch, "size": [200, 200],
                                    "optimised": {"images_per_s": ips},
                                    "record": {"machine": {"cpu_model": "Xeon", "cpu_flags": flags}}}))
        return path

    amx = ["avx2", "amx_bf16"]
    row = levers.bf16_train_speedup(bench("b.json", 9.0, amx), bench("f.json", 6.0, amx))
    assert row["speedup"] == pytest.approx(1.5) and row["lever"] == "bf16 autocast (native bf16, m)"
    with pytest.raises(ValueError, match="native bf16"):
        levers.bf16_train_speedup(bench("b2.json", 1.0, ["avx2"]), bench("f.json", 6.0, amx))
    with pytest.raises(ValueError, match="different steps"):
        levers.bf16_train_speedup(bench("b.json", 9.0, amx), bench("f3.json", 6.0, amx, batch=8))
