"""Tests for smelib.losses: hand-computed values on 2-pixel inputs, agreement with torch, ignore handling,
gradients, half-precision inputs, and the build_loss factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smelib.losses import LOSS_NAMES, CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss, build_loss

LN2 = math.log(2.0)
LN43 = math.log(4.0 / 3.0)


def two_pixels(extra_ignored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two pixels, two classes (N=1, K=2, H=1, W=2 or 3).

    Pixel A: logits (0, ln 3) -> softmax (1/4, 3/4), target 1 -> CE = -ln(3/4) = ln(4/3).
    Pixel B: logits (0, 0)    -> softmax (1/2, 1/2), target 0 -> CE = ln 2.
    Optional pixel C: very confident wrong logits, target 255 (ignored): must change nothing.
    """
    columns = [[0.0, math.log(3.0)], [0.0, 0.0]]
    labels = [1, 0]
    if extra_ignored:
        columns.append([20.0, -20.0])
        labels.append(255)
    logits = torch.tensor(columns, dtype=torch.float32).t().reshape(1, 2, 1, len(labels))
    target = torch.tensor(labels, dtype=torch.int64).reshape(1, 1, len(labels))
    return logits, target


def random_batch(seed: int = 0, k: int = 4, ignore_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 6, 5, generator=gen)
    target = torch.randint(0, k, (2, 6, 5), generator=gen)
    target[torch.rand(2, 6, 5, generator=gen) < ignore_fraction] = 255
    return logits, target


# ---------------------------------------------------------------- cross-entropy


def test_ce_two_pixels_by_hand() -> None:
    logits, target = two_pixels(extra_ignored=True)
    expected = (LN43 + LN2) / 2  # ignored pixel C excluded from the mean
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ce_class_weights_by_hand() -> None:
    logits, target = two_pixels(extra_ignored=True)
    # weights (1, 3): pixel A (class 1) weighs 3, pixel B (class 0) weighs 1; weighted mean divides by 3 + 1.
    expected = (3 * LN43 + 1 * LN2) / 4
    loss = CrossEntropyLoss(2, class_weights=[1.0, 3.0])(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ce_matches_torch_with_weights_and_ignore() -> None:
    logits, target = random_batch(1)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ours = CrossEntropyLoss(4, class_weights=weights, ignore_index=255)(logits, target)
    reference = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert (target == 255).any()  # the comparison really exercised the ignore path


# ---------------------------------------------------------------- focal


def test_focal_two_pixels_by_hand() -> None:
    logits, target = two_pixels(extra_ignored=True)
    # pixel A: pt = 3/4 -> (1/4)^2 * 0.5 * ln(4/3); pixel B: pt = 1/2 -> (1/2)^2 * 0.5 * ln 2; mean over 2 pixels.
    expected = ((1 / 16) * 0.5 * LN43 + (1 / 4) * 0.5 * LN2) / 2
    assert FocalLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma_zero_is_alpha_times_ce() -> None:
    logits, target = random_batch(2)
    focal = FocalLoss(alpha=0.25, gamma=0.0)(logits, target)
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert focal.item() == pytest.approx(0.25 * ce.item(), rel=1e-6)


def test_focal_with_weights_follows_template_form() -> None:
    logits, target = two_pixels(extra_ignored=True)
    # CE per pixel is weighted first: A -> 3 ln(4/3), B -> 1 ln 2; pt = exp(-weighted CE); plain mean over 2.
    ce_a, ce_b = 3 * LN43, LN2
    expected = ((1 - math.exp(-ce_a)) ** 2 * 0.5 * ce_a + (1 - math.exp(-ce_b)) ** 2 * 0.5 * ce_b) / 2
    loss = FocalLoss(2, class_weights=[1.0, 3.0])(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_fractional_gamma_has_finite_gradient_with_ignored_pixels() -> None:
    logits, target = random_batch(3)
    logits.requires_grad_(True)
    FocalLoss(gamma=0.5)(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- dice


def test_dice_two_pixels_by_hand() -> None:
    logits, target = two_pixels(extra_ignored=True)
    # class 0: 2 * p0(B) = 2 * 1/2 over sum p0 (1/4 + 1/2) + sum t0 (1) -> 1 / (7/4) = 4/7
    # class 1: 2 * p1(A) = 2 * 3/4 over sum p1 (3/4 + 1/2) + sum t1 (1) -> (3/2) / (9/4) = 2/3
    dice = DiceLoss(2).per_class_dice(logits, target)
    assert dice.tolist() == pytest.approx([4 / 7, 2 / 3], abs=1e-5)
    assert DiceLoss(2)(logits, target).item() == pytest.approx(1 - (4 / 7 + 2 / 3) / 2, abs=1e-5)  # = 8/21
    assert DiceLoss(2, smooth=0.0)(logits, target).item() == pytest.approx(8 / 21, rel=1e-6)


def test_dice_background_off_uses_defect_classes_only() -> None:
    logits, target = two_pixels()
    assert DiceLoss(2, include_background=False)(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-5)
    logits4, target4 = random_batch(4)
    module = DiceLoss(4, include_background=False)
    dice = module.per_class_dice(logits4, target4)
    assert module(logits4, target4).item() == pytest.approx(1 - dice[1:].mean().item(), rel=1e-6)
    assert module(logits4, target4).item() != pytest.approx(1 - dice.mean().item(), rel=1e-3)


def test_dice_class_weights_by_hand() -> None:
    logits, target = two_pixels()
    # weights (1, 3): 1 - (1 * 4/7 + 3 * 2/3) / 4 = 1 - (18/7) / 4 = 5/14
    loss = DiceLoss(2, class_weights=[1.0, 3.0], smooth=0.0)(logits, target)
    assert loss.item() == pytest.approx(5 / 14, rel=1e-6)


def test_dice_perfect_prediction_is_near_zero() -> None:
    target = torch.tensor([[[0, 1], [2, 3]]])
    logits = 30.0 * F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert DiceLoss(4)(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = torch.roll(logits, shifts=1, dims=1)  # every pixel confidently wrong
    assert DiceLoss(4)(wrong, target).item() > 0.99


# ---------------------------------------------------------------- combined and factory


def test_combined_is_weighted_sum() -> None:
    logits, target = random_batch(5)
    combined = build_loss({"focal": 1.0, "dice": 0.5, "focal_gamma": 1.5}, num_classes=4)
    expected = FocalLoss(gamma=1.5)(logits, target) + 0.5 * DiceLoss(4)(logits, target)
    assert combined(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(combined.last_terms) == {"focal", "dice"}
    assert combined.last_terms["dice"].item() == pytest.approx(DiceLoss(4)(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("spec", "names"),
    [("ce", ["ce"]), ("focal", ["focal"]), ("dice", ["dice"]), ("focal+dice", ["focal", "dice"]),
     ("CE + Dice", ["ce", "dice"]), ("dice+focal", ["focal", "dice"])],
)
def test_build_loss_string_specs(spec: str, names: list[str]) -> None:
    loss = build_loss(spec, num_classes=4)
    assert isinstance(loss, CombinedLoss)
    assert list(loss.losses.keys()) == names
    assert all(weight == 1.0 for weight in loss.weights.values())


def test_build_loss_passes_class_weights_and_options() -> None:
    loss = build_loss({"ce": 1.0, "dice": 2.0, "dice_include_background": False}, 4, class_weights=[1, 2, 3, 4])
    ce, dice = loss.losses["ce"], loss.losses["dice"]
    assert isinstance(ce, CrossEntropyLoss) and ce.weight is not None and ce.weight.tolist() == [1, 2, 3, 4]
    assert isinstance(dice, DiceLoss) and dice.weight is None and not dice.include_background  # template: unweighted
    weighted = build_loss({"dice": 1.0, "dice_weighted": True}, 4, class_weights=[1, 2, 3, 4]).losses["dice"]
    assert isinstance(weighted, DiceLoss) and weighted.weight is not None


@pytest.mark.parametrize(
    "spec", ["foo", "focal+lovasz", "", {"focal": 1.0, "gama": 2.0}, {"dice": 0.0}, {"ce": 1.0, "focal_gamma": 2}]
)
def test_build_loss_rejects_bad_specs(spec: object) -> None:
    with pytest.raises(ValueError) as info:
        build_loss(spec, num_classes=4)  # type: ignore[arg-type]
    if spec in ("foo", "focal+lovasz"):
        assert all(name in str(info.value) for name in LOSS_NAMES)


def test_wrong_class_weight_length_and_shape_mismatch_are_errors() -> None:
    with pytest.raises(ValueError, match="class_weights"):
        build_loss("ce", num_classes=4, class_weights=[1.0, 2.0])
    logits, target = random_batch(6)
    with pytest.raises(ValueError, match="disagree"):
        CrossEntropyLoss()(logits, target[:, :-1])


# ---------------------------------------------------------------- gradients, ignore-only batches, dtypes


@pytest.mark.parametrize("spec", ["ce", "focal", "dice", "focal+dice"])
def test_gradients_flow(spec: str) -> None:
    logits, target = random_batch(7)
    logits.requires_grad_(True)
    build_loss(spec, 4)(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # ignored pixels receive no gradient from any loss
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    assert logits.grad[ignored].abs().max().item() == 0.0


@pytest.mark.parametrize("spec", ["ce", "focal", "dice", "focal+dice"])
def test_all_ignored_batch_gives_zero_with_gradient_path(spec: str) -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), 255, dtype=torch.int64)
    loss = build_loss(spec, 4, class_weights=[1.0, 2.0, 2.0, 2.0])(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", ["ce", "focal", "dice"])
def test_half_precision_logits(dtype: torch.dtype, spec: str) -> None:
    logits, target = random_batch(8)
    loss = build_loss(spec, 4)
    low = logits.to(dtype).requires_grad_(True)
    value = loss(low, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(low.detach().float(), target).item(), rel=1e-5)
    value.backward()
    assert low.grad is not None and low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


def test_under_cpu_autocast() -> None:
    conv = torch.nn.Conv2d(3, 4, 1)
    image = torch.randn(2, 3, 6, 5)
    _, target = random_batch(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        value = build_loss("focal+dice", 4)(logits, target)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_fp16() -> None:
    logits, target = random_batch(10)
    conv = torch.nn.Conv2d(4, 4, 1).cuda()
    loss = build_loss("focal+dice", 4, class_weights=[1.0, 2.0, 2.0, 2.0]).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        value = loss(conv(logits.cuda()), target.cuda())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
