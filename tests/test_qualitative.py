"""Qualitative comparison (smelib.study.qualitative, `smelib compare`): per-image scores, example picking, the saved
folder's round trip, and the build on two tiny trained runs (its mIoU must equal the run record's), also from a
run's stored test predictions once its checkpoints are gone."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import make_neu, tiny_config, train_tiny_runs

from smelib.cli import main
from smelib.study.qualitative import (
    Comparison,
    ComparisonError,
    Example,
    build_comparison,
    image_miou,
    load_comparison,
    plot_comparison,
    plot_score_differences,
    plot_score_scatter,
    save_comparison,
    score_difference_rows,
    select_examples,
)


def test_image_miou_averages_only_classes_present() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 0, 0, 1], [0, 0, 0, 1]], np.uint8)
    # background: 4 / 6; class 1: 2 / 4; classes 2 and 3 absent from both: not averaged in
    assert image_miou(pred, gt, 4) == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert image_miou(gt, gt, 4) == 1.0
    ignored = gt.copy()
    ignored[:, 2] = 255  # the ignored column no longer counts against class 1
    assert image_miou(pred, ignored, 4) == pytest.approx((4 / 4 + 2 / 2) / 2)
    assert math.isnan(image_miou(pred, np.full_like(gt, 255), 4))
    with pytest.raises(ValueError, match="shape"):
        image_miou(pred[:, :3], gt, 4)


def test_defect_class_is_the_largest_defect_for_arrays_too() -> None:
    from smelib.data import defect_class

    gt = np.zeros((4, 4), np.uint8)
    assert defect_class(gt) == 0
    gt[0, :3] = 2
    gt[1, :2] = 3
    gt[3, 3] = 255
    assert defect_class(gt) == 2


def test_select_examples_typical_failures_and_deficit() -> None:
    ids = [f"i{k}" for k in range(8)]
    dominant = [1, 1, 1, 2, 2, 3, 3, 3]
    ref = [0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.65, 0.95]
    other = [0.1, 0.5, 0.7, 0.2, 0.8, 0.9, 0.6, 0.5]
    picks = select_examples(ids, dominant, {"A": ref, "B": other}, "A", ["bg", "c1", "c2", "c3"], failures=1)
    # class 1: median 0.7 -> i2; class 2: median 0.5, ties 0.2/0.8 -> lower score first (i3); class 3: median 0.65
    assert picks[:3] == [(2, "typical c1"), (3, "typical c2"), (6, "typical c3")]
    # lowest remaining reference score: i1 (0.5); then the widest B - A gap: i5 (0.9 - 0.6)
    assert picks[3] == (1, "A: a failure")
    assert picks[4] == (5, "A trails another run most")
    assert len({i for i, _ in picks}) == len(picks)
    assert picks == select_examples(ids, dominant, {"A": ref, "B": other}, "A", ["bg", "c1", "c2", "c3"], failures=1)


def _toy_comparison() -> Comparison:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (12, 10)).astype(np.uint8)
    image = rng.integers(0, 256, (12, 10)).astype(np.uint8)
    ex = Example("test/000007", "typical c1", image, gt, {"Model A": gt, "B (base)": np.zeros_like(gt)})
    models = [{"label": "Model A", "run_id": "r1", "model": "m", "checkpoint_sha256": None, "miou_record": 0.5,
               "miou_here": 0.5}, {"label": "B (base)", "run_id": "r2", "model": "m", "checkpoint_sha256": None,
                                  "miou_record": None, "miou_here": 0.4}]
    return Comparison(models, ["bg", "c1", "c2", "c3"], ["test/000007", "test/000008"], [1, 2],
                      {"Model A": [1.0, float("nan")], "B (base)": [0.25, 0.5]}, [ex], {"subset": "test"})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    comp = _toy_comparison()
    save_comparison(comp, tmp_path)
    back = load_comparison(tmp_path)
    assert back.labels == ["Model A", "B (base)"] and back.ids == comp.ids and back.dominant == [1, 2]
    assert math.isnan(back.scores["Model A"][1]) and back.scores["B (base)"] == [0.25, 0.5]
    ex = back.examples[0]
    assert ex.id == "test/000007" and ex.reason == "typical c1"
    np.testing.assert_array_equal(ex.image, comp.examples[0].image)
    np.testing.assert_array_equal(ex.preds["B (base)"], 0)
    np.testing.assert_array_equal(ex.preds["Model A"], comp.examples[0].gt)
    with pytest.raises(ComparisonError, match="exists"):
        save_comparison(comp, tmp_path)
    (tmp_path / "examples" / "stale").mkdir()
    save_comparison(comp, tmp_path, force=True)
    assert not (tmp_path / "examples" / "stale").exists()  # --force replaces the old examples
    (tmp_path / "examples" / "test_000007" / "model_a.png").unlink()
    with pytest.raises(ComparisonError, match="model_a.png: missing"):
        load_comparison(tmp_path)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ComparisonError, match="no comparison here"):
        load_comparison(tmp_path)
    (tmp_path / "comparison.json").write_text("{not json")
    with pytest.raises(ComparisonError, match="comparison.json: not valid JSON"):
        load_comparison(tmp_path)


def test_plots_draw_every_panel() -> None:
    import matplotlib.pyplot as plt

    comp = _toy_comparison()
    fig = plot_comparison(comp)
    assert len(fig.axes) == 1 * (2 + 2)
    assert fig.axes[2].get_xlabel() == "100.0 %"  # Model A predicts the ground truth
    assert fig.axes[2].get_title() == "Model A" and fig.axes[0].get_ylabel() == "test/000007\ntypical c1"
    ax = plot_score_scatter(comp, "B (base)")
    assert len(ax.collections) == 2  # one point set per dominant class present
    with pytest.raises(ComparisonError, match="no run labelled"):
        plot_score_scatter(comp, "C")
    plt.close("all")


def test_score_differences_pair_images_and_skip_unscored_ones() -> None:
    import matplotlib.pyplot as plt

    comp = _toy_comparison()
    rows = score_difference_rows(comp)
    # image 2 has no score for Model A (NaN): only image 1 pairs, 100 − 25 points, dominant class c1
    assert rows == [{"id": "test/000007", "defect": "c1", "other": "B (base)", "delta": pytest.approx(75.0)}]
    assert score_difference_rows(comp, "B (base)")[0]["delta"] == pytest.approx(-75.0)
    with pytest.raises(ComparisonError, match="no run labelled"):
        score_difference_rows(comp, "C")
    fig = plot_score_differences(comp)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["c1\n(1 images)"]
    plt.close("all")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return train_tiny_runs(tmp_path_factory.mktemp("tiny"))


def test_build_matches_the_run_records_and_cli_writes_it(two_runs: list[Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    comp = build_comparison({"s0": two_runs[0], "s1": two_runs[1]}, failures=1)
    for m, run_dir in zip(comp.models, two_runs):
        rec = json.loads((run_dir / "record.json").read_text())
        assert m["run_id"] == rec["run_id"]
        assert m["miou_here"] == pytest.approx(rec["final"]["test"]["miou"], abs=1e-9)
    assert len(comp.ids) == 4 and all(0 <= s <= 1 for s in comp.scores["s0"])
    assert comp.meta["split"]["kind"] == "official" and comp.meta["subset"] == "test"
    assert comp.examples and all(set(ex.preds) == {"s0", "s1"} for ex in comp.examples)
    assert main(["compare", f"s0={two_runs[0]}", f"s1={two_runs[1]}", "--out", str(tmp_path)]) == 0
    assert load_comparison(tmp_path).labels == ["s0", "s1"]
    assert main(["compare", f"s0={two_runs[0]}", "--out", str(tmp_path)]) != 0  # exists: refuses to overwrite
    assert "comparison.json exists; add --force" in capsys.readouterr().err


def test_build_refuses_runs_of_different_splits(two_runs: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "run"
    other.mkdir()
    with pytest.raises(ComparisonError, match="no record.json"):
        build_comparison({"a": two_runs[0], "b": other})
    with pytest.raises(ComparisonError, match="no such run folder"):
        build_comparison({"a": tmp_path / "missing.pt"})


def test_stored_predictions_stand_in_for_a_deleted_checkpoint(tmp_path: Path) -> None:
    from smelib import training as engine

    cfg = tiny_config(make_neu(tmp_path / "neu"), train={"save_predictions": True})
    run = engine.train(cfg, runs_dir=tmp_path / "runs", quiet=True).run_dir
    rec = json.loads((run / "record.json").read_text())
    assert rec["predictions"]["n"] == 4 and rec["predictions"]["relpath"] == "predictions_test.npz"
    from_ckpt = build_comparison({"a": run / rec["checkpoint"]["relpath"]}, failures=1)
    shutil.rmtree(run / "checkpoints")
    stored = build_comparison({"a": run}, failures=1)
    assert (from_ckpt.models[0]["source"], stored.models[0]["source"]) == ("checkpoint", "stored predictions")
    assert stored.scores == from_ckpt.scores and stored.ids == from_ckpt.ids
    assert stored.models[0]["miou_here"] == pytest.approx(rec["final"]["test"]["miou"], abs=1e-9)
    assert [e.id for e in stored.examples] == [e.id for e in from_ckpt.examples]
    assert all(np.array_equal(a.preds["a"], b.preds["a"]) for a, b in zip(stored.examples, from_ckpt.examples))
    from smelib.checkpoint import sha256_file
    from smelib.records import read_predictions, write_predictions

    pred_file = run / "predictions_test.npz"
    ids, maps = read_predictions(pred_file)
    pred_file.write_bytes(pred_file.read_bytes() + b"x")
    with pytest.raises(ComparisonError, match="SHA256 differs"):
        build_comparison({"a": run})
    pred_file.unlink()
    write_predictions(pred_file, ids[::-1], maps)  # another order: not this subset's images any more
    rec["predictions"]["sha256"] = sha256_file(pred_file)
    (run / "record.json").write_text(json.dumps(rec))
    with pytest.raises(ComparisonError, match="not the test subset's"):
        build_comparison({"a": run})


def test_a_run_without_stored_predictions_still_needs_its_checkpoint(two_runs: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(two_runs[0], copy, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ComparisonError, match="checkpoint missing"):
        build_comparison({"a": copy})
