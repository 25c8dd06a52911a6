"""Fast tests of smelib.attention on an untrained lite SME-DeepLabV3+."""

from __future__ import annotations

import pytest
import torch

from smelib.attention import attention_maps, ela_map, spatial_mass, upsample_map
from smelib.models.registry import build


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("sme_deeplabv3plus_lite", num_classes=4).eval()


def test_shapes_and_ranges(model: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    maps = attention_maps(model, x)
    assert maps["ela"].shape == (2, 16, 16)
    assert maps["msaa_spatial"].shape == (2, 8, 8)
    assert maps["msaa_channel"].shape == (2, model.context.fusion.dim)
    assert maps["logits"].shape == (2, 4, 64, 64)
    for key in ("ela", "msaa_spatial", "msaa_channel"):
        assert float(maps[key].min()) > 0 and float(maps[key].max()) < 1
    # hooks removed, model output unchanged
    assert not model.low_attention._forward_hooks
    torch.testing.assert_close(maps["logits"], model(x))


def test_ela_map_matches_module(model: torch.nn.Module) -> None:
    feat = torch.randn(1, model.low_attention.conv.in_channels, 10, 12)
    a_h, a_w = model.low_attention.attention(feat)
    m = ela_map(a_h, a_w)
    torch.testing.assert_close(m, (model.low_attention(feat) / feat).mean(dim=1), rtol=1e-4, atol=1e-5)
    top = ela_map(a_h, a_w, top_k=2)
    assert top.shape == (1, 10, 12)


def test_mass_and_upsample() -> None:
    m = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert float(spatial_mass(m)) == pytest.approx(0.75)
    assert float(spatial_mass(m, level=0.5)) == pytest.approx(0.75)
    assert upsample_map(m, (8, 8)).shape == (1, 8, 8)


def test_rejects_models_without_modules() -> None:
    with pytest.raises(TypeError):
        attention_maps(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 8, 8))
