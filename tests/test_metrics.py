"""Tests for smelib.metrics against hand-computed confusion matrices, streaming/merging, the zero-denominator
conventions, serialisation, and the distributed hook."""

from __future__ import annotations

import io
import json
import math
from fractions import Fraction as Fr

import pytest
import torch
import torch.nn.functional as F

from smelib.metrics import ConfusionMatrix, SegMetrics, format_table, metrics_from_confusion

# rows = ground truth, columns = prediction
HAND = [
    [5, 1, 0],
    [2, 3, 1],
    [0, 1, 2],
]
# TP = (5, 3, 2); GT totals (row sums) = (6, 6, 3); predicted totals (column sums) = (7, 5, 3); 15 pixels.
IOU = [Fr(5, 6 + 7 - 5), Fr(3, 6 + 5 - 3), Fr(2, 3 + 3 - 2)]  # 5/8, 3/8, 1/2
RECALL = [Fr(5, 6), Fr(3, 6), Fr(2, 3)]
PRECISION = [Fr(5, 7), Fr(3, 5), Fr(2, 3)]
F1 = [Fr(10, 13), Fr(6, 11), Fr(4, 6)]  # 2TP / (GT + predicted)


def pixels_from_matrix(matrix: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) of shape (1, 1, P) realising ``matrix`` exactly."""
    pairs = [(gt, pr) for gt, row in enumerate(matrix) for pr, count in enumerate(row) for _ in range(count)]
    target = torch.tensor([gt for gt, _ in pairs]).reshape(1, 1, -1)
    pred = torch.tensor([pr for _, pr in pairs]).reshape(1, 1, -1)
    return pred, target


def approx(values: list[Fr]) -> object:
    return pytest.approx([float(v) for v in values], rel=1e-12)


def test_hand_matrix_is_reproduced_with_ignore_pixels_dropped() -> None:
    pred, target = pixels_from_matrix(HAND)
    # Append 4 ignored pixels with every kind of prediction: none may be counted.
    pred = torch.cat([pred, torch.tensor([[[0, 1, 2, 2]]])], dim=-1)
    target = torch.cat([target, torch.full((1, 1, 4), 255)], dim=-1)
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == HAND
    assert cm.matrix.dtype == torch.int64


def test_metrics_from_hand_matrix() -> None:
    m = metrics_from_confusion(torch.tensor(HAND))
    assert list(m.iou) == approx(IOU)
    assert list(m.recall_per_class) == approx(RECALL)
    assert list(m.precision_per_class) == approx(PRECISION)
    assert list(m.f1_per_class) == approx(F1)
    assert m.miou == pytest.approx(0.5)  # (5/8 + 3/8 + 1/2) / 3
    assert m.mpa == m.recall == pytest.approx(2 / 3)  # (5/6 + 3/6 + 4/6) / 3
    assert m.precision == pytest.approx(float(sum(PRECISION) / 3))
    assert m.f1 == pytest.approx(float(sum(F1) / 3))
    assert m.pixel_acc == pytest.approx(10 / 15)


def test_defects_only_excludes_background() -> None:
    m = metrics_from_confusion(torch.tensor(HAND))
    assert m.defects_only.miou == pytest.approx(7 / 16)  # (3/8 + 1/2) / 2
    assert m.defects_only.mpa == m.defects_only.recall == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2
    assert m.defects_only.precision == pytest.approx(float((PRECISION[1] + PRECISION[2]) / 2))
    assert m.defects_only.f1 == pytest.approx(float((F1[1] + F1[2]) / 2))
    assert m.defects_only.miou != pytest.approx(m.miou)


def test_logits_input_uses_argmax() -> None:
    pred, target = pixels_from_matrix(HAND)
    logits = 5.0 * F.one_hot(pred, 3).permute(0, 3, 1, 2).float() + 0.1 * torch.randn(1, 3, 1, pred.shape[-1])
    cm = ConfusionMatrix(3)
    cm.update(logits, target)
    assert cm.matrix.tolist() == HAND


def random_batches(count: int = 3, k: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        target = torch.randint(0, k, (2, 5, 7), generator=gen)
        target[torch.rand(2, 5, 7, generator=gen) < 0.1] = 255
        batches.append((torch.randint(0, k, (2, 5, 7), generator=gen), target))
    return batches


def test_streaming_equals_single_batch() -> None:
    batches = random_batches()
    streamed = ConfusionMatrix(4)
    for pred, target in batches:
        streamed.update(pred, target)
    whole = ConfusionMatrix(4)
    whole.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    assert torch.equal(streamed.matrix, whole.matrix)
    valid = sum(int((t != 255).sum()) for _, t in batches)
    assert int(streamed.matrix.sum()) == valid
    assert streamed.compute().miou == whole.compute().miou


def test_merge_equals_one_matrix_and_reset() -> None:
    batches = random_batches()
    first, second, whole = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    first.update(*batches[0])
    for pred, target in batches[1:]:
        second.update(pred, target)
    for pred, target in batches:
        whole.update(pred, target)
    assert first.merge(second) is first
    assert torch.equal(first.matrix, whole.matrix)
    with pytest.raises(ValueError):
        first.merge(ConfusionMatrix(3))
    first.reset()
    assert int(first.matrix.sum()) == 0


def test_class_absent_from_both_is_nan_and_skipped() -> None:
    matrix = [[4, 1, 0, 0], [1, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]  # class 3 never seen, never predicted
    m = metrics_from_confusion(torch.tensor(matrix))
    for values in (m.iou, m.precision_per_class, m.recall_per_class, m.f1_per_class):
        assert math.isnan(values[3])
    # IoU = 4/6, 2/4, 3/3 -> mean over the three defined classes only
    assert m.miou == pytest.approx((4 / 6 + 2 / 4 + 1) / 3)
    assert m.defects_only.miou == pytest.approx((2 / 4 + 1) / 2)


def test_class_predicted_but_absent_from_ground_truth() -> None:
    # gt (0, 0, 1, 1), pred (0, 2, 1, 1): class 2 only appears as a false positive.
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[[0, 2, 1, 1]]]), torch.tensor([[[0, 0, 1, 1]]]))
    m = cm.compute()
    assert m.iou[2] == 0.0 and m.precision_per_class[2] == 0.0 and m.f1_per_class[2] == 0.0
    assert math.isnan(m.recall_per_class[2])
    assert m.mpa == pytest.approx((1 / 2 + 1) / 2)  # NaN recall of class 2 left out
    assert m.miou == pytest.approx((1 / 2 + 1 + 0) / 3)  # IoU 0 of class 2 counted


def test_class_present_but_never_predicted_has_precision_zero() -> None:
    # gt (0, 0, 1, 2), pred (0, 0, 1, 1): class 2 is missed entirely (template: TP / max(TP + FP, 1) = 0).
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[[0, 0, 1, 1]]]), torch.tensor([[[0, 0, 1, 2]]]))
    m = cm.compute()
    assert m.precision_per_class == pytest.approx((1.0, 0.5, 0.0))
    assert m.recall_per_class == pytest.approx((1.0, 1.0, 0.0))
    assert m.iou == pytest.approx((1.0, 0.5, 0.0))
    assert m.precision == pytest.approx(0.5)  # (1 + 1/2 + 0) / 3: the miss is counted, not skipped


def test_empty_matrix_is_all_nan_and_json_ready() -> None:
    m = ConfusionMatrix(4).compute()
    assert math.isnan(m.miou) and math.isnan(m.pixel_acc) and math.isnan(m.defects_only.f1)
    d = m.to_dict()
    assert d["miou"] is None and d["iou"] == [None] * 4
    json.dumps(d, allow_nan=False)


def test_to_dict_keys_and_values() -> None:
    d = metrics_from_confusion(torch.tensor(HAND)).to_dict()
    expected_keys = {
        "miou", "iou", "precision", "precision_per_class", "recall", "recall_per_class", "mpa", "f1",
        "f1_per_class", "pixel_acc", "defects_only", "confusion",
    }
    assert set(d) == expected_keys
    assert set(d["defects_only"]) == {"miou", "precision", "recall", "mpa", "f1"}
    assert d["iou"] == approx(IOU)
    assert d["miou"] == pytest.approx(0.5) and d["defects_only"]["miou"] == pytest.approx(7 / 16)
    assert d["confusion"] == HAND
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_bad_labels_and_shapes_are_errors() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 3]]]))  # 3 is neither a class nor ignore
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.int64), torch.zeros(1, 2, 3, dtype=torch.int64))
    assert int(cm.matrix.sum()) == 0  # a rejected batch leaves no partial counts


def test_state_dict_round_trip() -> None:
    cm = ConfusionMatrix(3)
    cm.update(*pixels_from_matrix(HAND))
    buffer = io.BytesIO()
    torch.save(cm.state_dict(), buffer)
    buffer.seek(0)
    restored = ConfusionMatrix(3)
    restored.load_state_dict(torch.load(buffer))
    assert restored.matrix.tolist() == HAND
    with pytest.raises(ValueError):
        ConfusionMatrix(4).load_state_dict(cm.state_dict())


def test_all_reduce_is_noop_without_dist_and_sums_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    cm = ConfusionMatrix(3)
    cm.update(*pixels_from_matrix(HAND))
    assert cm.all_reduce() is cm and cm.matrix.tolist() == HAND  # not initialised: unchanged

    calls: list[object] = []

    def fake_all_reduce(tensor: torch.Tensor, op: object = None) -> None:
        calls.append(op)
        tensor.mul_(2)  # as if a second rank held the same counts

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    cm.all_reduce()
    assert calls == [dist.ReduceOp.SUM]
    assert cm.matrix.tolist() == [[2 * v for v in row] for row in HAND]


def test_all_reduce_with_real_gloo_group(tmp_path: object) -> None:
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already in use")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(3)
        cm.update(*pixels_from_matrix(HAND))
        cm.all_reduce()
        assert cm.matrix.tolist() == HAND  # one rank: the sum is itself
    finally:
        dist.destroy_process_group()


def test_format_table_shows_percentages_and_names() -> None:
    m = metrics_from_confusion(torch.tensor(HAND))
    table = format_table(m, ["background", "inclusion", "patches"])
    assert "inclusion" in table and "62.50" in table and "37.50" in table  # IoU 5/8 and 3/8 in percent
    assert "43.75" in table  # defects-only mIoU 7/16
    with pytest.raises(ValueError):
        format_table(m, ["only one name"])
    assert "-" in format_table(ConfusionMatrix(2).compute()).splitlines()[2]  # undefined shown as "-"


def test_seg_metrics_is_returned_type() -> None:
    assert isinstance(ConfusionMatrix(2).compute(), SegMetrics)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_gpu_tensors() -> None:
    pred, target = pixels_from_matrix(HAND)
    cm = ConfusionMatrix(3)
    cm.update(pred.cuda(), target.cuda())
    assert cm.device.type == "cuda" and cm.matrix.tolist() == HAND
    assert cm.compute().miou == pytest.approx(0.5)
