"""The recipe-headroom plan: every step's command is a valid training run, and results are read, never typed."""

from __future__ import annotations

import shlex

import pytest

from smelib.study import headroom as H
from smelib.cli import build_parser
from smelib.config import load_config
from smelib.training import build_model


@pytest.mark.parametrize("step", [s for s in H.HEADROOM_STEPS if s.kind == "train"], ids=lambda s: s.key)
def test_train_step_commands_resolve_to_the_stated_change(step: H.HeadroomStep) -> None:
    argv = shlex.split(step.train_command(step.seeds[-1]))[1:]
    args = build_parser().parse_args(argv)
    overrides = [f"model.name={args.model}", f"data.split={args.split}", *args.overrides]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(args.config, overrides)
    assert (cfg["name"], cfg["model"]["name"], cfg["train"]["epochs"]) == (step.config, step.model, step.epochs)
    assert (cfg["data"]["split"], args.seed) == (step.split, step.seeds[-1])
    model = build_model(cfg, num_classes=4)
    width = 256 if step.key == "full_width" else 64
    assert model.config["decoder_width"] == width and model.config["context_width"] == width
    assert cfg["loss"] == ("ce" if step.key == "loss_ce" else "focal+dice")
    augment = cfg["data"]["augment"]
    scale_crop = ([0.75, 1.25], 200) if step.key == "augment" else (None, None)
    assert (augment.get("scale"), augment.get("crop")) == scale_crop


def test_step_keys_and_config_names_are_unique() -> None:
    keys = [s.key for s in H.HEADROOM_STEPS]
    configs = [(s.config, s.model, s.epochs, s.split) for s in H.HEADROOM_STEPS if s.kind == "train"]
    assert len(set(keys)) == len(keys) and len(set(configs)) == len(configs) and keys[0] == "protocol"


def test_a_step_over_several_seeds_loops_over_them_in_one_command() -> None:
    step = H.HeadroomStep("g", "grouped", config="headroom_e27", epochs=27, split="grouped", seeds=(0, 1, 2))
    assert step.command == f"for S in 0 1 2; do {step.train_command('$S')}; done"
    assert "--split grouped --seed $S --epochs 27 name=headroom_e27" in step.command
    assert H.HeadroomStep("p", "x").command == H.HeadroomStep("p", "x").train_command(0)


def test_budget_epochs() -> None:
    assert H.budget_epochs(265.0) == 27 and H.budget_epochs(530.0) == 13 and H.budget_epochs(60.0, 10) == 10
    with pytest.raises(ValueError, match="positive"):
        H.budget_epochs(0.0)


def _eval(file: str, tta: bool, miou: float, sha: str = "a", subset: str = "test") -> dict:
    return {"kind": "evaluation", "file": file, "tta": tta, "checkpoint_sha256": sha, "split": "official",
            "subset": subset, "decision": {"mode": "argmax"}, "autocast": None, "limit": None, "images": 840,
            "model": "m", "metrics": {"miou": miou}}


def test_tta_pairs_match_one_checkpoint_subset_and_rule() -> None:
    recs = [_eval("p", False, 0.70), _eval("t", True, 0.72), _eval("t_other", True, 0.9, sha="b"),
            _eval("t_val", True, 0.8, subset="val")]
    assert [(a["file"], b["file"]) for a, b in H.tta_pairs(recs)] == [("p", "t")]


#: the plan's step on the grouped split (its recipe is whichever official step measured best)
GROUPED = next(s for s in H.HEADROOM_STEPS if s.split == "grouped")


def test_headroom_table_reads_rows_and_records() -> None:
    rows = [{"config": "cpu_budget", "model": "sme_deeplabv3plus", "split": "official", "epochs": "6",
             "miou_mean": "0.78", "miou_std": "0.003", "n_seeds": "2", "run_ids": "proto_run"},
            {"config": "headroom_e27", "model": "sme_deeplabv3plus", "split": "official", "epochs": "27",
             "miou_mean": "0.81", "n_seeds": "1", "run_ids": "long_run"},
            {"config": "cpu_budget", "model": "sme_deeplabv3plus", "split": "grouped", "epochs": "6",
             "miou_mean": "0.70", "miou_std": "0.01", "n_seeds": "3", "run_ids": "proto_grouped"},
            {"config": GROUPED.config, "model": GROUPED.model, "split": "grouped", "epochs": str(GROUPED.epochs),
             "miou_mean": "0.74", "miou_std": "0.02", "n_seeds": "2", "run_ids": "g0 g1"}]
    recs = [_eval("lite_official_plain", False, 0.75), _eval("lite_official_tta", True, 0.76)]
    t = H.headroom_table(rows, recs)
    by_key = {r[0]: r for r in t.rows}
    assert by_key["protocol"][2:7] == ["official, 2", "78.00", "–", "–", "-10.87"]
    # a training step is read against the protocol's seed mean and spread on its own split
    assert by_key["schedule"][2:8] == ["official, 1 of 1", "81.00", "78.00 ± 0.30 (n=2)", "+3.00", "-7.87", "long_run"]
    assert by_key["grouped"][2:8] == ["grouped, 2 of 3", "74.00", "70.00 ± 1.00 (n=3)", "+4.00", "-14.87", "g0 g1"]
    # the grouped step's row has the lite step's config, model and epochs: the lite step (official) never reads it
    assert by_key["lite"][2:4] == ["official, 0 of 1", "not yet run"]
    assert by_key["tta"][3:6] == ["76.00", "75.00 (same weights)", "+1.00"]
    assert "lite_official_tta.json" in by_key["tta"][7]
    assert by_key["full_width"][2:4] == ["official, 0 of 1", "not yet run"]
    assert "context_width=256" in by_key["full_width"][7]
    assert H.step_result(H.HEADROOM_STEPS[1], rows, recs[:1]) is None  # half a pair is no result
    # an inference step on another step's weights reads only its own pair of records
    assert by_key["schedule_tta"][3] == "not yet run" and "e27_official_tta.json" in by_key["schedule_tta"][7]
    # a step is pending until it has every seed it asks for
    pending = [s.key for s in H.pending_steps(rows, recs)]
    assert "grouped" in pending and "schedule" not in pending and "tta" not in pending and "full_width" in pending
    rows[-1]["n_seeds"] = "3"
    assert "grouped" not in [s.key for s in H.pending_steps(rows, recs)]


def _run(config: str, epochs: int, seed: int = 0, finished: str = "2026-01-01", val=(0.5, 0.6),
         split: str = "official", model: str = "sme_deeplabv3plus") -> dict:
    return {"status": "completed", "config_name": config, "model": model, "split": {"kind": split},
            "epochs": epochs, "seed": seed, "finished_utc": finished, "run_id": f"{config}_{seed}_{finished}",
            "history": [{"epoch": i + 1, "seconds": 60.0, "val_miou": v} for i, v in enumerate(val)]}


def test_step_run_picks_the_latest_matching_seed_and_curve_accumulates_minutes() -> None:
    steps = {s.key: s for s in H.HEADROOM_STEPS}
    recs = [_run("cpu_budget", 6), _run("cpu_budget", 6, finished="2026-02-01"), _run("cpu_budget", 6, seed=1),
            _run("headroom_e27", 26)]  # wrong epoch count: not the schedule step
    assert H.step_run(steps["protocol"], recs)["finished_utc"] == "2026-02-01"
    assert H.step_run(steps["protocol"], recs, seed=1)["seed"] == 1
    assert H.step_run(steps["schedule"], recs) is None and H.step_run(steps["tta"], recs) is None
    rec = _run("x", 3, val=(0.5, None, 0.7))  # an epoch without validation adds time, not a point
    assert H.step_curve(rec) == [(1.0, 0.5), (3.0, 0.7)]


def test_plot_step_curves_draws_one_line_per_run_and_refuses_an_empty_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    ax = H.plot_step_curves([_run("cpu_budget", 6), _run("headroom_e27", 27, val=(0.5, 0.6, 0.7))])
    assert [ln.get_label() for ln in ax.get_lines()][:2] == ["protocol (6 epochs)", "schedule (27 epochs)"]
    assert list(ax.get_lines()[1].get_ydata()) == [50.0, 60.0, 70.0]
    with pytest.raises(ValueError, match="seed 3"):
        H.plot_step_curves([_run("cpu_budget", 6)], seed=3)
    # a grouped-split run is drawn only on a grouped figure: its validation images are other images
    grouped = _run(GROUPED.config, GROUPED.epochs, split="grouped", val=(0.4, 0.5), model=GROUPED.model)
    assert len(H.plot_step_curves([_run("cpu_budget", 6), grouped]).get_lines()) == 2  # protocol + budget line
    ax = H.plot_step_curves([grouped], split="grouped")
    assert ax.get_lines()[0].get_label() == f"grouped ({GROUPED.epochs} epochs)" and "grouped split" in ax.get_title()


def _scored(config: str, epochs: int, iou: tuple[float, ...], wall: float, model: str = "sme_deeplabv3plus",
            names: tuple[str, ...] = ("bg", "a", "b"), split: str = "official", seed: int = 0) -> dict:
    rec = _run(config, epochs, seed=seed, split=split)
    rec.update(model=model, class_names=list(names), epochs_done=epochs, wall_seconds=wall, params_m=1.0, gmacs=2.0,
               final={"test": {"iou": list(iou), "miou": sum(iou) / len(iou)}})
    return rec


def test_budget_pair_compares_a_step_with_its_equal_budget_step_per_class() -> None:
    steps = {s.key: s for s in H.HEADROOM_STEPS}
    # every official step that changes its epoch count to fill the budget names the run that fills the same budget
    # (the grouped step re-runs one of them on another split: its baseline is the protocol on that split)
    assert all(s.against == "schedule" for s in H.HEADROOM_STEPS
               if s.kind == "train" and s.epochs not in (6, 27) and s.split == "official")
    narrow = _scored("headroom_e27", 27, (0.9, 0.8, 0.7), wall=27 * 270.0)
    ce = _scored("headroom_e27_ce", 27, (0.92, 0.75, 0.6), wall=27 * 300.0)
    assert H.budget_pair(steps["schedule"], [narrow, ce]) is None  # no step to compare against
    assert H.budget_pair(steps["loss_ce"], [ce]) is None  # the equal-budget run is missing
    pair = H.budget_pair(steps["loss_ce"], [narrow, ce])
    assert pair["classes_lower"] == 2 and pair["seconds_per_epoch"] == (270.0, 300.0)
    assert pair["miou"] == pytest.approx((0.8, 0.7566666))
    t = H.budget_pair_table(pair)
    assert t.rows[0][0] == "bg" and t.rows[0][3] == pytest.approx(2.0) and t.rows[3][0] == "mIoU"
    assert t.rows[4][1:3] == ["27 / 270", "27 / 300"] and "Δ (loss_ce − schedule)" in t.columns
    with pytest.raises(ValueError, match="different classes"):
        H.budget_pair(steps["loss_ce"], [narrow, _scored("headroom_e27_ce", 27, (0.9, 0.8), 1.0, names=("bg", "a"))])
    orphan = H.HeadroomStep("x", "y", config="c", epochs=3, against="nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        H.budget_pair(orphan, [narrow])


def test_seed_table_has_one_row_per_asked_seed_and_the_command_of_a_missing_one() -> None:
    step = H.HeadroomStep("g", "grouped", config="headroom_e27", epochs=27, split="grouped", seeds=(0, 1, 2))
    runs = [_scored("headroom_e27", 27, (0.9, 0.6, 0.3), wall=600.0, split="grouped"),
            _scored("headroom_e27", 27, (0.9, 0.8, 0.7), wall=1200.0, split="grouped", seed=2),
            _scored("headroom_e27", 27, (0.1, 0.1, 0.1), wall=60.0)]  # the official split's run is not this step's
    t = H.seed_table(step, runs)
    assert t.columns[:4] == ["seed", "IoU bg", "IoU a", "IoU b"]
    assert [r[0] for r in t.rows] == [0, 1, 2]
    assert t.rows[0][1:6] == pytest.approx([90.0, 60.0, 30.0, 60.0, 10.0])
    assert t.rows[1][1] == "–" and "--split grouped --seed 1" in t.rows[1][-1]
    assert t.rows[2][4] == pytest.approx(80.0) and t.rows[2][5] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="inference"):
        H.seed_table(H.HEADROOM_STEPS[1], runs)


def test_seed_tta_pairs_follow_each_seeds_latest_run() -> None:
    step = H.HeadroomStep("g", "grouped", config="c", epochs=3, split="grouped", seeds=(0, 1, 2))
    runs = [_run("c", 3, split="grouped"), _run("c", 3, seed=1, split="grouped"),
            _run("c", 3, seed=1, split="grouped", finished="2026-03-01")]  # seed 1 was re-run: its latest counts
    evals = [dict(_eval("s0_p", False, 0.70), run_id=runs[0]["run_id"]),
             dict(_eval("s0_t", True, 0.71), run_id=runs[0]["run_id"]),
             dict(_eval("old_p", False, 0.60, sha="b"), run_id=runs[1]["run_id"]),
             dict(_eval("old_t", True, 0.62, sha="b"), run_id=runs[1]["run_id"]),
             dict(_eval("s1_p", False, 0.80, sha="c"), run_id=runs[2]["run_id"]),
             dict(_eval("s1_t", True, 0.83, sha="c"), run_id=runs[2]["run_id"])]
    got = H.seed_tta_pairs(step, runs, evals)
    assert [(seed, a["file"], b["file"]) for seed, a, b in got] == [(0, "s0_p", "s0_t"), (1, "s1_p", "s1_t")]
    assert H.seed_tta_pairs(step, runs, evals[:1]) == []  # no TTA record, no pair


def _recipe_fixture() -> tuple[list[dict], list[dict], list[dict]]:
    """Two protocol seeds, a schedule run with a TTA pair on its weights, a grouped protocol run; summary rows from
    :func:`smelib.study.results.summarize` of those records."""
    from smelib.study.results import summarize

    def scored(config, epochs, miou, seed=0, split="official", model="sme_deeplabv3plus"):
        rec = _scored(config, epochs, (miou,) * 4, wall=60.0, names=("bg", "a", "b", "c"), split=split, seed=seed,
                      model=model)
        rec["run_id"] += f"_{split}"  # run ids are unique
        rec["final"]["test"].update(precision=miou, mpa=miou, recall=miou, defects_only={"miou": miou})
        return rec

    records = [scored("cpu_budget", 6, 0.78), scored("cpu_budget", 6, 0.76, seed=1),
               scored("headroom_e27", 27, 0.82), scored("cpu_budget", 6, 0.70, split="grouped"),
               scored(GROUPED.config, GROUPED.epochs, 0.74, split="grouped", model=GROUPED.model)]
    evals = [dict(_eval("e27_p", False, 0.82), run_id=records[2]["run_id"]),
             dict(_eval("e27_t", True, 0.83), run_id=records[2]["run_id"])]
    return records, summarize(records), evals


def test_recipe_points_read_seed_means_seeds_deltas_and_the_paired_tta() -> None:
    records, rows, evals = _recipe_fixture()
    points = H.recipe_points(records, rows, evals)
    assert [p["step"] for p in points] == ["protocol", "schedule"]  # steps without a row are left out
    proto, sched = points
    assert proto["miou"] == pytest.approx(0.77) and sorted(proto["seeds"]) == [(0, 0.78), (1, 0.76)]
    assert proto["delta"] is None and proto["tta"] is None
    assert sched["delta"] == pytest.approx(0.05) and (sched["tta_base"], sched["tta"]) == (0.82, 0.83)
    grouped = H.recipe_points(records, rows, evals, split="grouped")
    # the grouped split's step, against the protocol's row on the grouped split
    assert [(p["step"], p["delta"]) for p in grouped] == [("grouped", pytest.approx(0.04))]


def test_plot_recipe_steps_marks_the_steps_tta_and_the_papers_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    records, rows, evals = _recipe_fixture()
    ax = H.plot_recipe_steps(H.recipe_points(records, rows, evals), paper_miou=88.87)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["protocol (6 ep)", "schedule (27 ep)"]
    assert "+5.00" in [t.get_text() for t in ax.texts]
    diamonds = [ln for ln in ax.get_lines() if ln.get_marker() == "D" and len(ln.get_xdata())]
    assert [float(ln.get_xdata()[0]) for ln in diamonds] == [pytest.approx(83.0)]
    labels = [t.get_text() for t in ax.figure.legends[0].get_texts()]
    assert any("paper's 88.87" in lab and "300 epochs" in lab for lab in labels)
    with pytest.raises(ValueError, match="no headroom"):
        H.plot_recipe_steps([], paper_miou=88.87)


def test_tta_gains_bar_per_checkpoint_named_by_its_run() -> None:
    import matplotlib

    matplotlib.use("Agg")
    records, _, evals = _recipe_fixture()
    assert H.run_label(records[2]) == "sme_deeplabv3plus 27 ep, official s0".replace("sme_deeplabv3plus", "SME")
    ax = H.plot_tta_gains(H.tta_pairs(evals), records)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["SME 27 ep, official s0"]
    assert [p.get_width() for p in ax.patches if p.get_width()] == [pytest.approx(1.0)]
    with pytest.raises(ValueError, match="without a record"):
        H.plot_tta_gains(H.tta_pairs(evals), records[:2])
    with pytest.raises(ValueError, match="no checkpoint"):
        H.plot_tta_gains([], records)


def test_seed_points_list_each_rows_runs_and_plot_one_dot_per_seed() -> None:
    import matplotlib

    matplotlib.use("Agg")
    records, rows, _ = _recipe_fixture()
    points = H.seed_points(records, rows, [("proto", "cpu_budget", "sme_deeplabv3plus", 6),
                                           ("long", "headroom_e27", "sme_deeplabv3plus", 27)])
    assert [(p["recipe"], p["split"], p["seed"]) for p in points] == [
        ("proto", "official", 0), ("proto", "official", 1), ("proto", "grouped", 0), ("long", "official", 0)]
    assert points[1]["miou"] == pytest.approx(76.0)
    ax = H.plot_seed_points(points)
    dots = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in dots) == 4
    with pytest.raises(ValueError, match="no run"):
        H.plot_seed_points([])


def test_the_weight_average_pair_reads_both_sides_of_one_run() -> None:
    from smelib.study.headroom import plot_weight_average, weight_average_pair

    record = {"run_id": "r", "config": {"train": {"ema": 0.998}},
              "history": [{"epoch": 1, "val_miou": 0.2, "val_raw_miou": 0.6},
                          {"epoch": 2, "val_miou": 0.7, "val_raw_miou": 0.68}],
              "final": {"test": {"miou": 0.77}, "raw": {"test": {"miou": 0.765}}}}
    pair = weight_average_pair(record)
    assert pair["epochs"] == [1, 2] and pair["val_raw"] == pytest.approx([60.0, 68.0])
    assert pair["difference"] == pytest.approx(0.5) and pair["decay"] == 0.998
    fig = plot_weight_average(pair)
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [pair["val_raw"], pair["val_average"]]
    with pytest.raises(ValueError, match="train.ema"):
        weight_average_pair({**record, "final": {"test": {"miou": 0.7}}})
