"""Seed-paired comparison of a training option with its protocol: pairing, and the effect criterion."""

import pytest

from smelib.study.paired_runs import (
    curve_rows,
    effect_rows,
    effect_summary,
    effect_table,
    paired_seed_table,
    paired_summary_table,
    paired_verdict,
    plot_paired_curves,
    plot_paired_effects,
    seed_pairs,
)


def record(config: str, seed: int, miou: float, *, epochs: int = 6, finished: str = "2026-12-03T10:00:00Z",
           run_id: str | None = None, iou: tuple[float, ...] | None = None, split: str = "grouped") -> dict:
    iou = iou or (0.96, miou - 0.2, miou + 0.05, miou)
    history = [{"epoch": e, "val_miou": miou - 0.1 / e} for e in range(1, epochs + 1)]
    return {"run_id": run_id or f"{config}_s{seed}_{finished}", "config_name": config, "model": "sme_deeplabv3plus",
            "history": history,
            "split": {"kind": split}, "seed": seed, "epochs": epochs, "status": "completed",
            "finished_utc": finished,
            "final": {"test": {"miou": miou, "precision": miou + 0.08, "mpa": miou + 0.1, "iou": list(iou),
                               "defects_only": {"miou": miou - 0.06}}}}


def test_pairs_match_seeds_and_skip_other_lengths_splits_and_unpaired_seeds() -> None:
    recs = [record("cpu_budget", 0, 0.770), record("cpu_budget", 1, 0.765), record("cpu_budget", 2, 0.768),
            record("cpu_budget", 0, 0.741, epochs=3),                       # a learning-curve run: other length
            record("cpu_budget", 1, 0.700, finished="2026-12-01T00:00:00Z"),  # an older run of seed 1
            record("cpu_budget_prior", 0, 0.775), record("cpu_budget_prior", 1, 0.770),
            record("cpu_budget_prior", 1, 0.790, split="official")]
    pairs = seed_pairs(recs, "cpu_budget_prior", epochs=6)
    assert [p.seed for p in pairs] == [0, 1]
    assert pairs[1].base["final"]["test"]["miou"] == 0.765  # the latest run of seed 1, not the older one
    assert pairs[0].difference(("miou",)) == pytest.approx(0.5)
    assert pairs[1].difference(("defects_only", "miou")) == pytest.approx(0.5)
    # two of three seeds: the criterion refuses to rule
    assert paired_verdict(pairs, base_std=0.25).startswith("no verdict: 2 of 3")


def test_verdict_needs_one_sign_and_a_mean_above_the_base_spread() -> None:
    base = [record("cpu_budget", s, m) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    up = [record("cpu_budget_prior", s, m + 0.006) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    pairs = seed_pairs(base + up, "cpu_budget_prior", epochs=6)
    assert paired_verdict(pairs, base_std=0.25) == "helps"     # +0.6 in every seed, above 0.25
    assert paired_verdict(pairs, base_std=0.80) == "within the seed spread"  # same gain, noisier base
    down = [record("cpu_budget_prior", s, m - 0.006) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    assert paired_verdict(seed_pairs(base + down, "cpu_budget_prior", epochs=6), base_std=0.25) == "hurts"
    mixed = [record("cpu_budget_prior", s, m + d) for s, m, d in ((0, 0.770, 0.02), (1, 0.765, -0.001),
                                                                   (2, 0.768, 0.01))]
    assert paired_verdict(seed_pairs(base + mixed, "cpu_budget_prior", epochs=6),
                          base_std=0.25) == "within the seed spread"  # large mean, but one seed went down


def test_tables_report_each_seed_and_the_verdict() -> None:
    base = [record("cpu_budget", s, m) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    up = [record("cpu_budget_prior", s, m + 0.006, iou=(0.96, m - 0.19, m + 0.05, m))
          for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    pairs = seed_pairs(base + up, "cpu_budget_prior", epochs=6)
    per_seed = str(paired_seed_table(pairs, "prior", class_names=("background", "inclusion", "patches", "scratches")))
    assert "Δ IoU inclusion" in per_seed
    assert [round(d, 6) for d in pairs[0].class_differences()] == [0.0, 1.0, 0.0, 0.0]
    assert "1.00" in per_seed and "0.60" in per_seed
    summary = str(paired_summary_table(pairs, "prior"))
    # the base's own seed std of mIoU is 0.25 points; +0.60 in 3 of 3 seeds exceeds it
    assert "76.77 ± 0.25" in summary and "+0.60 ± 0.00" in summary and "3 of 3" in summary and "helps" in summary


def test_mismatched_class_counts_are_refused_with_both_run_ids() -> None:
    recs = [record("cpu_budget", 0, 0.77, run_id="base0"),
            record("cpu_budget_prior", 0, 0.77, run_id="prior0", iou=(0.9, 0.8))]
    with pytest.raises(ValueError, match="base0.*prior0"):
        seed_pairs(recs, "cpu_budget_prior", epochs=6)


def test_cli_prints_both_tables_and_names_the_missing_option(tmp_path, capsys) -> None:
    import json

    from smelib.cli import main

    for rec in ([record("cpu_budget", s, m) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
                + [record("cpu_budget_prior", s, m - 0.006) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]):
        d = tmp_path / rec["run_id"].replace(":", "")
        d.mkdir()
        (d / "record.json").write_text(json.dumps(rec))
    assert main(["paired", "cpu_budget_prior", "--epochs", "6", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cpu_budget_prior − base, per seed" in out and "-0.60 ± 0.00" in out and "hurts" in out
    assert "through training" in out
    assert main(["paired", "cpu_budget_cw", "--epochs", "6", "--runs", str(tmp_path)]) == 2
    assert "'cpu_budget_cw'" in capsys.readouterr().err


def test_curve_follows_the_pairs_through_training() -> None:
    from smelib.study.paired_runs import paired_curve, paired_curve_table

    base = [record("cpu_budget", s, 0.77) for s in (0, 1)]
    opt = [record("cpu_budget_prior", s, 0.77) for s in (0, 1)]
    for r in opt:  # the option learns faster early and ends level
        r["history"][0]["val_miou"] += 0.05
    pairs = seed_pairs(base + opt, "cpu_budget_prior", epochs=6)
    curve = paired_curve(pairs)
    assert list(curve) == [1, 2, 3, 4, 5, 6]
    assert curve[1] == pytest.approx([5.0, 5.0]) and curve[6] == pytest.approx([0.0, 0.0])
    text = str(paired_curve_table(pairs, "prior"))
    assert "+5.00 ± 0.00" in text and "+0.00 ± 0.00" in text


def test_effect_rows_summarise_with_the_same_verdict_as_the_tables() -> None:
    import matplotlib.pyplot as plt

    base = [record("cpu_budget", s, m) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    up = [record("cpu_budget_prior", s, m + 0.006) for s, m in ((0, 0.770), (1, 0.765), (2, 0.768))]
    pairs = seed_pairs(base + up, "cpu_budget_prior", epochs=6)
    rows = effect_rows(pairs, "prior")
    assert len(rows) == 3 * 4 and {r["metric"] for r in rows} == {"mIoU", "defects-only mIoU", "precision", "MPA"}
    miou = [r for r in rows if r["metric"] == "mIoU"]
    assert [r["seed"] for r in miou] == [0, 1, 2] and miou[1]["base"] == pytest.approx(76.5)
    summary = {s["metric"]: s for s in effect_summary(rows)}
    assert summary["mIoU"]["mean"] == pytest.approx(0.6)
    assert summary["mIoU"]["base_std"] == pytest.approx(0.2517, abs=1e-4)
    assert summary["mIoU"]["verdict"] == "helps" == paired_verdict(pairs, 0.25) and summary["mIoU"]["up"] == 3
    # a noisier base turns the same differences into "within the seed spread"
    noisy = [{**r, "base": r["base"] + (2.0 if r["seed"] == 0 else 0.0)} for r in rows]
    assert {s["metric"]: s for s in effect_summary(noisy)}["mIoU"]["verdict"] == "within the seed spread"
    table = effect_table(effect_summary(rows))
    assert table.columns[0] == "mechanism" and table.rows[0][1] == "+0.60 ± 0.00 helps"
    assert effect_table(effect_summary(noisy), metrics=["MPA", "mIoU"]).to_dicts()[0] == {
        "mechanism": "prior", "Δ MPA": "+0.60 ± 0.00 within", "Δ mIoU": "+0.60 ± 0.00 within"}
    fig = plot_paired_effects(rows, metrics=["mIoU", "MPA"])
    assert [ax.get_title() for ax in fig.axes] == ["Δ mIoU", "Δ MPA"]
    plt.close("all")


def test_curve_rows_follow_every_epoch_of_every_pair() -> None:
    import matplotlib.pyplot as plt

    base = [record("cpu_budget", s, 0.77) for s in (0, 1)]
    opt = [record("cpu_budget_prior", s, 0.78) for s in (0, 1)]
    rows = curve_rows(seed_pairs(base + opt, "cpu_budget_prior", epochs=6), "prior")
    assert len(rows) == 6 * 2 and {r["epoch"] for r in rows} == set(range(1, 7))
    assert all(r["delta"] == pytest.approx(1.0) for r in rows)  # val_miou - 0.1 / e: the same offset every epoch
    fig = plot_paired_curves(rows)
    assert fig.axes[0].get_xlabel() == "epoch"
    plt.close("all")
    with pytest.raises(ValueError, match="no curve rows"):
        plot_paired_curves([])


def test_short_run_id_keeps_seed_and_start_time() -> None:
    from smelib.study.results import short_run_id

    assert short_run_id("cpu_budget_prior_sme_deeplabv3plus_grouped_s2_20261203T112340Z") == "s2 · 2026-12-03 11:23"
    assert short_run_id("my_run") == "my_run"
