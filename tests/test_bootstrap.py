"""Paired bootstrap over test images (smelib.study.bootstrap, `smelib bootstrap`): per-image confusions add up to the
dataset's, the resampled mIoU is the metric module's, the interval behaves (zero for identical runs, one-sided for
a run better on every image, narrower for a larger test set), the per-class intervals single out the class that
differs, groups of copies are resampled whole (wider than images, the image bootstrap when every group is one
image), and the command works on two tiny trained runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import train_tiny_runs

from smelib.study.bootstrap import (
    BootstrapError,
    bootstrap_class_table,
    bootstrap_record,
    bootstrap_table,
    image_confusions,
    image_groups,
    iou_of_confusions,
    load_bootstrap_records,
    miou_of_confusions,
    paired_bootstrap,
    paired_bootstrap_runs,
    write_bootstrap_record,
)
from smelib.cli import main
from smelib.metrics import ConfusionMatrix, metrics_from_confusion


def _maps(rng: np.random.Generator, n: int, noise: float, gts: list[np.ndarray] | None = None):
    """Ground truths (4 classes, some ignored pixels, class 3 absent) and predictions with ``noise`` flipped pixels."""
    if gts is None:
        gts = []
        for _ in range(n):
            g = rng.integers(0, 3, (6, 7)).astype(np.uint8)
            g[0, 0] = 255
            gts.append(g)
    preds = []
    for g in gts:
        p = np.where(g == 255, 0, g).astype(np.uint8)
        flip = rng.random(g.shape) < noise
        p[flip] = rng.integers(0, 4, int(flip.sum()))
        preds.append(p)
    return gts, preds


def test_image_confusions_sum_to_the_dataset_confusion_and_miou_matches_metrics() -> None:
    rng = np.random.default_rng(0)
    gts, preds = _maps(rng, 9, 0.3)
    conf = image_confusions(preds, gts, 4)
    assert conf.shape == (9, 4, 4)
    cm = ConfusionMatrix(4, ignore_index=255)
    for p, g in zip(preds, gts):
        cm.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64)))
    assert np.array_equal(conf.sum(axis=0), cm.compute().confusion.numpy())
    # class 3 is never in the ground truth but is predicted: its IoU is 0 and counts, as in metrics_from_confusion
    assert miou_of_confusions(conf.sum(axis=0)) == pytest.approx(metrics_from_confusion(torch.from_numpy(
        conf.sum(axis=0))).miou, abs=1e-12)
    stack = miou_of_confusions(conf)
    assert stack.shape == (9,)
    assert stack[0] == pytest.approx(metrics_from_confusion(torch.from_numpy(conf[0])).miou, abs=1e-12)
    assert np.isnan(miou_of_confusions(np.zeros((4, 4))))
    with pytest.raises(BootstrapError, match="image 1: prediction"):
        image_confusions([preds[0], preds[1][:, :3]], gts[:2], 4)
    with pytest.raises(BootstrapError, match="outside 0..3"):
        image_confusions([np.full((6, 7), 4, np.uint8)], gts[:1], 4)


def test_identical_runs_have_a_zero_interval() -> None:
    rng = np.random.default_rng(1)
    gts, preds = _maps(rng, 20, 0.3)
    conf = image_confusions(preds, gts, 4)
    out = paired_bootstrap(conf, conf, "a", "b", n_boot=200)
    assert (out.difference, out.low, out.high, out.std) == (0.0, 0.0, 0.0, 0.0)
    assert out.p_not_better == 1.0 and out.verdict == "within test-set noise"


def test_a_run_better_on_every_image_is_supported_and_the_swap_reversed() -> None:
    rng = np.random.default_rng(2)
    gts, good = _maps(rng, 30, 0.05)
    _, bad = _maps(rng, 30, 0.5, gts)
    cg, cb = image_confusions(good, gts, 4), image_confusions(bad, gts, 4)
    out = paired_bootstrap(cg, cb, "good", "bad", n_boot=500, seed=3)
    assert out.miou_better > out.miou_worse and 0 < out.low <= out.difference <= out.high
    assert out.verdict == "supported" and out.p_not_better == 0.0
    swapped = paired_bootstrap(cb, cg, "bad", "good", n_boot=500, seed=3)
    assert swapped.verdict == "reversed" and swapped.p_not_better == 1.0
    assert swapped.low == pytest.approx(-out.high) and swapped.high == pytest.approx(-out.low)
    again = paired_bootstrap(cg, cb, "good", "bad", n_boot=500, seed=3)
    other_seed = paired_bootstrap(cg, cb, "good", "bad", n_boot=500, seed=4)
    assert again == out and (other_seed.low, other_seed.high) != (out.low, out.high)


def test_the_interval_narrows_like_one_over_root_n() -> None:
    rng = np.random.default_rng(5)
    gts, a = _maps(rng, 40, 0.2)
    _, b = _maps(rng, 40, 0.25, gts)
    ca, cb = image_confusions(a, gts, 4), image_confusions(b, gts, 4)
    small = paired_bootstrap(ca, cb, n_boot=2000, seed=0)
    big = paired_bootstrap(np.tile(ca, (4, 1, 1)), np.tile(cb, (4, 1, 1)), n_boot=2000, seed=0)
    assert big.difference == pytest.approx(small.difference)  # the same images four times: the same mIoUs
    assert big.std == pytest.approx(small.std / 2, rel=0.15)


def test_per_class_intervals_single_out_the_class_that_differs() -> None:
    rng = np.random.default_rng(6)
    gts, a = _maps(rng, 30, 0.05)
    b = []
    for g, p in zip(gts, a):
        q = p.copy()
        q[(g == 2) & (rng.random(g.shape) < 0.5)] = 0  # b misses half of class 2 and nothing else
        b.append(q)
    ca, cb = image_confusions(a, gts, 4), image_confusions(b, gts, 4)
    out = paired_bootstrap(ca, cb, "a", "b", n_boot=500, seed=0)
    iou_a, iou_b = iou_of_confusions(ca.sum(axis=0)), iou_of_confusions(cb.sum(axis=0))
    assert out.class_iou_better == pytest.approx(tuple(iou_a)) and out.class_iou_worse == pytest.approx(tuple(iou_b))
    assert out.class_low[2] > 0  # class 2 itself: above zero
    assert out.class_low[0] > 0  # its lost pixels land in background, which loses precision in b
    assert out.class_low[1] <= out.class_difference[1] <= out.class_high[1]
    # the joint intervals contain the plain ones (a further-out percentile of the same resamples); class 2's
    # difference is large enough to stay above zero even jointly
    for i in range(3):
        assert out.class_low_joint[i] <= out.class_low[i] <= out.class_high[i] <= out.class_high_joint[i]
    assert out.class_low_joint[1] < out.class_low[1] and out.class_low_joint[2] > 0
    # class 3 is only ever a wrong prediction (IoU 0 in both): present, its difference exactly 0
    assert (out.class_difference[3], out.class_low[3], out.class_high[3]) == (0.0, 0.0, 0.0)
    # mIoU is the mean of the per-class IoUs, so its difference is the mean of theirs
    assert out.difference == pytest.approx(np.mean(out.class_difference))
    rec = json.loads(json.dumps(bootstrap_record(out, [], {"kind": "grouped"}, ["bg", "x", "y", "z"])))
    rows = bootstrap_class_table(rec).to_dicts()
    assert [r["class"] for r in rows] == ["bg", "x", "y", "z"] and rows[2]["joint interval"] == "above 0"
    assert rows[2]["difference"] == pytest.approx(100 * out.class_difference[2])
    with pytest.raises(BootstrapError, match="3 class names for 4 classes"):
        bootstrap_record(out, [], {"kind": "grouped"}, ["bg", "x", "y"])
    jlo, jhi = 100 * out.class_low_joint[2], 100 * out.class_high_joint[2]
    assert rows[2]["joint 95 % interval"] == f"[{jlo:+.2f}, {jhi:+.2f}]"
    pre_joint = {**rec, "outcome": {k: v for k, v in rec["outcome"].items() if not k.endswith("_joint")}}
    with pytest.raises(BootstrapError, match="no per-class or joint figures.*--force"):
        bootstrap_class_table(pre_joint)
    old = {**rec, "outcome": {k: v for k, v in rec["outcome"].items() if not k.startswith("class_")}}
    with pytest.raises(BootstrapError, match="no per-class or joint figures"):
        bootstrap_class_table(old)


def test_copies_are_resampled_as_whole_groups() -> None:
    """Each of 30 pictures shown 4 times (exact copies): resampling images treats 120 images as independent and
    gives an interval about half as wide as the truth; resampling groups gives exactly the bootstrap of the 30
    pictures (mIoU does not change when every confusion is multiplied by 4)."""
    rng = np.random.default_rng(5)
    gts, good = _maps(rng, 30, 0.2)
    _, bad = _maps(rng, 30, 0.3, gts)
    ca, cb = image_confusions(good, gts, 4), image_confusions(bad, gts, 4)
    ra, rb = np.repeat(ca, 4, axis=0), np.repeat(cb, 4, axis=0)  # copies next to each other, groups in image order
    labels = [f"picture {i}" for i in range(30) for _ in range(4)]
    pictures = paired_bootstrap(ca, cb, n_boot=400, seed=2)
    images = paired_bootstrap(ra, rb, n_boot=400, seed=2)
    groups = paired_bootstrap(ra, rb, n_boot=400, seed=2, groups=labels, unit="copy-group")
    assert (images.unit, images.n_units, groups.unit, groups.n_units) == ("image", 120, "copy-group", 30)
    assert groups.n_images == 120 and groups.difference == pytest.approx(images.difference)
    assert (groups.low, groups.high, groups.std) == pytest.approx((pictures.low, pictures.high, pictures.std))
    assert groups.class_low_joint == pytest.approx(pictures.class_low_joint, nan_ok=True)
    assert (groups.high - groups.low) > 1.5 * (images.high - images.low)
    # every group one image: the image bootstrap, field for field
    alone = paired_bootstrap(ca, cb, n_boot=400, seed=2, groups=list(range(30)))
    assert alone == pictures and alone.unit == "image"
    with pytest.raises(BootstrapError, match="29 group labels for 30 images"):
        paired_bootstrap(ca, cb, n_boot=400, groups=list(range(29)))
    with pytest.raises(BootstrapError, match="1 test copy-group"):
        paired_bootstrap(ra, rb, n_boot=400, groups=["one"] * 120, unit="copy-group")


def test_image_groups_come_from_the_groups_file(tmp_path: Path) -> None:
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"groups": [["a", "b", "x"], ["c"]], "copy_groups": [["a", "x"], ["b"], ["c"]]}))
    # "x" is not a test image here; "d" is in no group: a group of its own
    assert image_groups(["b", "c", "a", "d"], path) == [0, 1, 0, 2]
    assert image_groups(["b", "c", "a", "d"], path, key="copy_groups") == [1, 2, 0, 3]


def test_bad_arguments_are_refused() -> None:
    c = np.zeros((5, 4, 4), np.int64)
    with pytest.raises(BootstrapError, match="both be"):
        paired_bootstrap(c, c[:4])
    with pytest.raises(BootstrapError, match="at least 2"):
        paired_bootstrap(c[:1], c[:1])
    with pytest.raises(BootstrapError, match="at least 100"):
        paired_bootstrap(c, c, n_boot=10)
    with pytest.raises(BootstrapError, match="level"):
        paired_bootstrap(c, c, level=1.0)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return train_tiny_runs(tmp_path_factory.mktemp("tiny"))


def test_runs_records_and_the_command(two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, rec = paired_bootstrap_runs(("s0", two_runs[0]), ("s1", two_runs[1]), n_boot=200)
    for m, run_dir, value in zip(rec["runs"], two_runs, (out.miou_better, out.miou_worse)):
        run = json.loads((run_dir / "record.json").read_text())
        assert m["run_id"] == run["run_id"] and m["source"] == "checkpoint"
        assert value == pytest.approx(run["final"]["test"]["miou"], abs=1e-9)  # the record's test mIoU, recomputed
    assert out.n_images == 4 and rec["verdict"] == out.verdict and rec["split"]["kind"] == "official"
    # the tiny runs' configs name no groups file: images are the unit, and the record says so
    assert (out.unit, out.n_units, rec["groups_file"]) == ("image", 4, None)
    path = write_bootstrap_record(rec, tmp_path)
    assert path.name == "official_s0_vs_s1.json"
    with pytest.raises(BootstrapError, match="exists"):
        write_bootstrap_record(rec, tmp_path)
    [loaded] = load_bootstrap_records(tmp_path)
    assert loaded["outcome"]["difference"] == pytest.approx(out.difference)
    [row] = bootstrap_table([loaded]).to_dicts()
    assert row["claim"] == "s0 > s1" and row["A − B"] == pytest.approx(100 * out.difference)
    assert row["verdict"] == out.verdict and bootstrap_table([loaded], split="grouped").rows == []
    assert loaded["class_names"] == json.loads((two_runs[0] / "record.json").read_text())["class_names"]
    assert len(bootstrap_class_table(loaded).rows) == len(loaded["class_names"])
    assert main(["bootstrap", f"s0={two_runs[0]}", f"s1={two_runs[1]}", "--boot", "200", "--out", str(tmp_path),
                 "--force"]) == 0
    printed = capsys.readouterr().out
    assert "over 4 images" in printed and out.verdict in printed and "official_s0_vs_s1.json" in printed
    assert "per class (official split, 4 images resampled; joint: Bonferroni over the classes)" in printed
    assert main(["bootstrap", f"s0={two_runs[0]}", f"s0={two_runs[1]}"]) != 0
    assert "both runs are labelled 's0'" in capsys.readouterr().err
    assert main(["bootstrap", "s0", f"s1={two_runs[1]}"]) != 0
    assert "expected LABEL=RUN" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BootstrapError, match="broken.json: not valid JSON"):
        load_bootstrap_records(tmp_path)


def test_runs_of_different_splits_are_scored_on_their_shared_test_images(tmp_path: Path) -> None:
    """A leaky-split run against a grouped-split one (the leak's measurement): only the images both test sets
    hold count, and the grouped run's side is its own mIoU recomputed on exactly those images."""
    from engine_helpers import tiny_config

    from smelib import training as engine
    from smelib.study.qualitative import ComparisonError, load_run_predictions

    from _data_helpers import SAMPLE

    runs = {}
    for kind in ("leaky", "grouped"):
        cfg = tiny_config(SAMPLE, data={"split": kind, "val_fraction": 0.1})
        runs[kind] = engine.train(cfg, runs_dir=tmp_path / "runs", quiet=True).run_dir
    leaky = load_run_predictions({"l": runs["leaky"]}, subset="test")
    grouped = load_run_predictions({"g": runs["grouped"]}, subset="test")
    shared = [sid for sid in leaky.ids if sid in set(grouped.ids)]
    assert shared == leaky.ids and len(shared) < len(grouped.ids)  # the leaky test set nests in the grouped one
    out, rec = paired_bootstrap_runs(("leaky", runs["leaky"]), ("grouped", runs["grouped"]), n_boot=100,
                                     shared_images=True)
    pick = [grouped.ids.index(sid) for sid in shared]
    conf = image_confusions([grouped.preds["g"][i] for i in pick], [grouped.gts[i] for i in pick], 4).sum(0)
    assert out.n_images == len(shared) == rec["split"]["shared_images"]
    assert out.miou_worse == pytest.approx(float(miou_of_confusions(conf)))
    assert out.miou_better == pytest.approx(json.loads((runs["leaky"] / "record.json").read_text())
                                            ["final"]["test"]["miou"], abs=1e-9)
    assert rec["split"]["kind"] == "leaky vs grouped"
    assert write_bootstrap_record(rec, tmp_path).name == "leaky_vs_grouped_leaky_vs_grouped.json"
    with pytest.raises(ComparisonError, match="trained on split"):  # without the flag, different splits are refused
        paired_bootstrap_runs(("leaky", runs["leaky"]), ("grouped", runs["grouped"]), n_boot=100)
