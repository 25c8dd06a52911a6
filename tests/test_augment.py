"""Tests of smelib.data.augment: geometry of each operation, mask handling, seeding, batching, devices."""

from __future__ import annotations

import pytest
import torch

from smelib.data import augment as A


def _pair(h: int = 32, w: int = 32, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose channel 0 encodes the mask exactly (label * 50), so any op can be checked for
    image/mask consistency, plus random texture in the other channels."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 4, (h // 4, w // 4), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)
    image = torch.rand((c, h, w), generator=g)
    image[0] = mask.float() * 50
    return image, mask.long()


def _consistent(image: torch.Tensor, mask: torch.Tensor) -> bool:
    return torch.equal((image[0] / 50).round().long(), mask)


def test_flips_and_rot90_move_image_and_mask_together() -> None:
    image, mask = _pair(32, 48)
    for out in (A.hflip(image, mask), A.vflip(image, mask), A.rot90(image, mask, 1), A.rot90(image, mask, 3)):
        assert _consistent(*out)
    x, y = A.rot90(image, mask, 1)
    assert x.shape == (3, 48, 32) and y.shape == (48, 32)
    assert torch.equal(A.hflip(*A.hflip(image, mask))[1], mask)
    assert torch.equal(y, torch.rot90(mask, 1, (0, 1)))


def test_rotate_zero_is_identity_and_ninety_matches_rot90_inside() -> None:
    image, mask = _pair(32, 32)
    x, y = A.rotate(image, mask, 0.0)
    assert torch.allclose(x, image, atol=1e-5) and torch.equal(y, mask)
    x, y = A.rotate(image, mask, 90.0)
    rx, ry = A.rot90(image, mask, 1)
    assert torch.equal(y[2:-2, 2:-2], ry[2:-2, 2:-2])
    assert torch.allclose(x[:, 2:-2, 2:-2], rx[:, 2:-2, 2:-2], atol=1e-3)


def test_rotate_fills_the_corners_with_ignore_and_fill() -> None:
    image, mask = _pair(40, 40)
    x, y = A.rotate(image, mask, 45.0, fill=-7.0)
    assert y.dtype == mask.dtype and y.shape == mask.shape
    assert int(y[0, 0]) == 255 and int(y[-1, -1]) == 255 and int(y[20, 20]) != 255
    assert float(x[1, 0, 0]) == pytest.approx(-7.0)
    assert set(torch.unique(y).tolist()) <= set(torch.unique(mask).tolist()) | {255}
    inside = y != 255
    # Nearest-neighbour labels inside: the mask still agrees with the bilinear image away from label edges.
    agree = ((x[0] / 50).round().long() == y)[inside].float().mean()
    assert agree > 0.8


def test_rotate_keeps_non_square_pictures_rigid() -> None:
    # A horizontal bar in a wide image, turned by 90 degrees about the centre, becomes a vertical bar of the
    # same length (a non-rigid map would stretch it by W/H).
    mask = torch.zeros(40, 80, dtype=torch.long)
    mask[19:21, 30:50] = 1
    image = mask[None].float()
    _, y = A.rotate(image, mask, 90.0)
    rows = torch.nonzero(y == 1)[:, 0]
    assert 18 <= int(rows.max() - rows.min()) + 1 <= 22


def test_uint8_images_stay_uint8() -> None:
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    mask = torch.zeros(24, 24, dtype=torch.uint8)
    for x, y in (A.rotate(image, mask, 10.0), A.rescale(image, mask, 1.5), A.crop(image, mask, -2, -2, 30, 30)):
        assert x.dtype == torch.uint8 and y.dtype == torch.uint8


def test_rescale_sizes_and_nearest_labels() -> None:
    image, mask = _pair(32, 48)
    x, y = A.rescale(image, mask, 0.5)
    assert x.shape == (3, 16, 24) and y.shape == (16, 24)
    assert set(torch.unique(y).tolist()) <= set(torch.unique(mask).tolist())
    x, y = A.rescale(image, mask, 2.0)
    assert y.shape == (64, 96) and torch.equal(y[::2, ::2], mask)


def test_crop_pads_mask_with_ignore() -> None:
    image, mask = _pair(20, 20)
    x, y = A.crop(image, mask, -5, 3, 30, 10, fill=0.5)
    assert x.shape == (3, 30, 10) and y.shape == (30, 10)
    assert bool((y[:5] == 255).all()) and bool((x[:, :5] == 0.5).all())
    assert bool((y[25:] == 255).all())
    assert torch.equal(y[5:25], mask[:, 3:13])


def test_augment_is_deterministic_given_a_generator() -> None:
    aug = A.Augment.from_config({"hflip": 0.5, "vflip": 0.5, "rot90": True, "rotate_deg": 10,
                                 "scale": [0.75, 1.25], "crop": 32})
    image, mask = _pair(32, 32)
    a = aug(image, mask, torch.Generator().manual_seed(3))
    b = aug(image, mask, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 32, 32) and a[1].shape == (32, 32)
    outs = {tuple(aug(image, mask, torch.Generator().manual_seed(s))[1].flatten().tolist()) for s in range(6)}
    assert len(outs) > 1


def test_batched_samples_draw_their_own_parameters() -> None:
    aug = A.Augment(hflip=0.5, vflip=0.5, rot90=True)
    image, mask = _pair(16, 16)
    images = image.expand(8, -1, -1, -1).clone()
    masks = mask.expand(8, -1, -1).clone()
    x, y = aug(images, masks, torch.Generator().manual_seed(0))
    assert x.shape == images.shape and y.shape == masks.shape
    assert len({tuple(m.flatten().tolist()) for m in y}) > 1
    assert all(_consistent(x[i], y[i]) for i in range(8))
    # Sample i of a batch is augmented as it would be alone with the same stream position.
    g = torch.Generator().manual_seed(0)
    singles = [aug(images[i], masks[i], g) for i in range(8)]
    assert all(torch.equal(singles[i][1], y[i]) for i in range(8))


def test_batches_of_non_square_images_keep_one_shape() -> None:
    image, mask = _pair(16, 32)
    images, masks = image.expand(4, -1, -1, -1).clone(), mask.expand(4, -1, -1).clone()
    x, y = A.Augment(rot90=True, scale=(0.5, 1.5))(images, masks, torch.Generator().manual_seed(1))
    # Still wide (a 90-degree turn would make it tall), one shared scale for all four.
    assert abs(2 * x.shape[-2] - x.shape[-1]) <= 1 and y.shape == (4, *x.shape[-2:])
    assert x.shape[-2:] != images.shape[-2:]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown augmentation option"):
        A.Augment.from_config({"hfilp": 0.5})
    with pytest.raises(ValueError, match="probability"):
        A.Augment(hflip=1.5)
    with pytest.raises(ValueError, match="scale"):
        A.Augment(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="crop"):
        A.Augment(crop=0)
    assert A.Augment.from_config({}).is_identity() and A.Augment.from_config(None).is_identity()
    assert A.Augment.from_config({"crop": [16, 24]}).crop == (16, 24)


def test_shape_errors() -> None:
    aug = A.Augment(hflip=1.0)
    with pytest.raises(ValueError, match="expected image"):
        aug(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="differ in H, W"):
        aug(torch.zeros(3, 4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="batch sizes differ"):
        aug(torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4))


def masks_agree(a: torch.Tensor, b: torch.Tensor, tolerance: float = 0.01) -> bool:
    """Whether two label maps (any devices) have the same shape and differ in at most ``tolerance`` of pixels."""
    return a.shape == b.shape and (a.cpu() != b.cpu()).float().mean().item() <= tolerance


def test_masks_agree_tolerates_boundary_pixels_only() -> None:
    mask = torch.zeros(10, 10, dtype=torch.long)
    mask[2:6, 2:6] = 1
    shifted = mask.clone()
    shifted[6, 2] = 1  # one boundary pixel rounded to the other neighbour
    assert masks_agree(mask, shifted) and not masks_agree(mask, torch.roll(mask, 3, 0))
    assert not masks_agree(mask, mask[:9])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here; the CPU path is tested above")
def test_same_result_on_cuda() -> None:
    aug = A.Augment(hflip=0.5, vflip=0.5, rot90=True, rotate_deg=10, scale=(0.8, 1.2), crop=32)
    image, mask = _pair(32, 32)
    a = aug(image, mask, torch.Generator().manual_seed(4))
    b = aug(image.cuda(), mask.cuda(), torch.Generator().manual_seed(4))
    assert b[0].is_cuda and b[1].is_cuda
    assert torch.allclose(a[0], b[0].cpu(), atol=1e-4)
    # Nearest-neighbour masks: a sampling coordinate within float rounding of a pixel boundary may round to the
    # other neighbour on another device, so a few boundary pixels may differ; not more than 1 %.
    assert masks_agree(a[1], b[1])
