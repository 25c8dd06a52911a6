"""The Table 1 baselines (Res-UNet, PSPNet, HRNetV2): shapes at odd sizes, gradients, sizes, options."""

from __future__ import annotations

import pytest
import torch

from smelib.models import build, names
from smelib.models.baselines.hrnet import HRNet
from smelib.models.baselines.pspnet import PSPNet
from smelib.models.registry import _REGISTRY
from smelib.models.baselines.resunet import ResUNet

# The tests trace models with torch.jit on purpose (a traced model must match eager): this torch deprecates
# torch.jit, and tracing warns about shape-dependent Python branches it freezes.
pytestmark = [pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.\w+` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


BASELINES = ("resunet", "pspnet", "hrnet")

#: Parameter counts measured at num_classes=4, in_channels=3 (resunet 2 057 860, pspnet 13 819 748,
#: hrnet 2 103 096), with a margin for a changed detail, not for a changed design.
PARAM_RANGES = {"resunet": (1.9e6, 2.2e6), "pspnet": (13.0e6, 14.5e6), "hrnet": (1.9e6, 2.3e6)}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_without_fallback() -> None:
    # The registry imports the three files unconditionally now, so the names are there after names().
    assert set(BASELINES) <= set(names())
    assert all(name in _REGISTRY for name in BASELINES)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("size", [(64, 64), (33, 47)])
def test_forward_backward(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 4, *size)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Every parameter is on the path to the output (no dead branch in the fusions or the pyramid).
    assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads)


@pytest.mark.parametrize("name", BASELINES)
def test_params_and_config(name: str) -> None:
    model = build(name)
    n = _n_params(model)
    lo, hi = PARAM_RANGES[name]
    assert lo < n < hi, f"{name}: {n} parameters"
    assert model.config["num_classes"] == 4 and model.config["in_channels"] == 3


@pytest.mark.parametrize("name", BASELINES)
def test_grayscale_and_classes(name: str) -> None:
    model = build(name, num_classes=2, in_channels=1).eval()
    assert model.config["in_channels"] == 1
    with torch.no_grad():
        y = model(torch.randn(1, 1, 40, 37))
    assert y.shape == (1, 2, 40, 37)


@pytest.mark.parametrize("name, cls", [("resunet", ResUNet), ("pspnet", PSPNet), ("hrnet", HRNet)])
def test_width_override(name: str, cls: type) -> None:
    small, default = build(name, width=8), build(name)
    assert isinstance(small, cls) and small.config["width"] == 8
    assert _n_params(small) < _n_params(default) / 2  # HRNet's stem and stage 1 keep width 64
    with pytest.raises(TypeError):
        build(name, not_an_option=1)


def test_resunet_paper_width() -> None:
    # The paper's Res-UNet is 7.8 M parameters; ours adds 0.43 M of 1x1 projection shortcuts.
    assert 8.1e6 < _n_params(build("resunet", width=64)) < 8.3e6


def test_pspnet_options() -> None:
    model = build("pspnet", output_stride=16, deep_stem=False, aux_head=True)
    x = torch.randn(2, 3, 33, 47)
    out, aux = model(x)
    assert out.shape == aux.shape == (2, 4, 33, 47)
    model.eval()
    assert model(x).shape == (2, 4, 33, 47)  # the auxiliary head is training-only
    with pytest.raises(ValueError):
        build("pspnet", output_stride=32)


@pytest.mark.parametrize("name", BASELINES)
def test_trace_matches_eager(name: str) -> None:
    model = build(name).eval()
    x = torch.randn(1, 3, 35, 29)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), model(x), atol=1e-5)
