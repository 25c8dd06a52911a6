"""Every registered model goes through the same checks (forward/backward, odd sizes, tracing, state dicts),
then the facts of the papers the modules come from are pinned one by one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smelib.models import ASPP, ELA, MSAA, DeepLabV3Plus, StarNet, build, names, starnet
from smelib.models.backbones.starnet import STARNET_SPECS

# The tests trace models with torch.jit on purpose (a traced model must match eager): this torch deprecates
# torch.jit, and tracing warns about shape-dependent Python branches it freezes.
pytestmark = [pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.\w+` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


PAPER_NAMES = {
    "sme_deeplabv3plus", "sme_deeplabv3plus_lite", "starnet_aspp", "starnet_aspp_ela", "starnet_msaa",
    "starnet_msaa_ela", "starnet_aspp_msaa", "deeplabv3plus_mobilenetv2", "deeplabv3plus_xception",
}
TABLE1_NAMES = {"resunet", "pspnet", "hrnet"}


def small(name: str, **kwargs: object) -> nn.Module:
    """The model at the smallest head widths it accepts, so the suite stays fast on two cores."""
    torch.manual_seed(0)
    try:
        return build(name, context_width=32, decoder_width=32, low_level_width=16, **kwargs)
    except TypeError:  # not a DeepLabV3+ configuration
        return build(name, **kwargs)


def test_every_configuration_of_the_paper_is_registered() -> None:
    assert PAPER_NAMES <= set(names())


def test_table1_baselines_are_registered() -> None:
    missing = TABLE1_NAMES - set(names())
    assert not missing, f"Table 1 baselines not registered: {missing}"


@pytest.mark.parametrize("size", [(200, 200), (199, 257)])
@pytest.mark.parametrize("name", names())
def test_forward_backward(name: str, size: tuple[int, int]) -> None:
    model = small(name).train()
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, 4, *size)
    assert torch.isfinite(y).all()
    y.logsumexp(1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters that never receive a gradient (DDP would fail): {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", names())
def test_eval_determinism_trace_and_state_dict(name: str) -> None:
    model = small(name).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
        assert torch.equal(y1, y2)
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), y1, atol=1e-5)
        clone = small(name).eval()
        clone.load_state_dict(model.state_dict())
        assert torch.equal(clone(x), y1)


@pytest.mark.parametrize("name", names())
def test_single_channel_input(name: str) -> None:
    model = small(name, in_channels=1).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 48, 56))
    assert y.shape == (1, 4, 48, 56)


def test_num_classes_is_the_output_channels() -> None:
    assert small("sme_deeplabv3plus_lite", num_classes=7).eval()(torch.randn(1, 3, 40, 40)).shape[1] == 7


def test_build_errors_are_clear() -> None:
    with pytest.raises(KeyError, match="sme_deeplabv3plus"):
        build("sme_deeplabv3")
    with pytest.raises(TypeError):
        build("sme_deeplabv3plus_lite", no_such_option=1)
    with pytest.raises(ValueError, match="context"):
        DeepLabV3Plus(backbone="starnet_s050", context="psp")


# StarNet -----------------------------------------------------------------------------------------------------


#: The official table's sizes with a 1000-class head, in millions, rounded to one decimal.
OFFICIAL_STARNET_PARAMS_M = {"s1": 2.9, "s2": 3.7, "s3": 5.8, "s4": 7.5}


@pytest.mark.parametrize("variant", sorted(STARNET_SPECS))
def test_starnet_sizes_match_the_official_table(variant: str) -> None:
    n = sum(p.numel() for p in starnet(variant, num_classes=1000).parameters())
    if variant in OFFICIAL_STARNET_PARAMS_M:
        assert round(n / 1e6, 1) == OFFICIAL_STARNET_PARAMS_M[variant]
    else:  # s050/s100/s150 are smaller than s1
        assert n < 2.9e6


def test_starnet_features_have_strides_4_to_32_and_the_stem_is_optional() -> None:
    net = starnet("s1", features_only=True)
    feats = net.forward_features(torch.randn(1, 3, 64, 96), return_stem=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 32, 48), (24, 16, 24), (48, 8, 12), (96, 4, 6), (192, 2, 3)]
    assert net.out_channels == [24, 48, 96, 192]
    assert not hasattr(net, "head")


def test_starnet_init_reaches_convolutions() -> None:
    # The official `isinstance(m, nn.Linear or nn.Conv2d)` leaves convs at PyTorch's default (std ≈ 0.08 for a
    # 1x1 conv from 32 channels); the intended truncated normal has std 0.02.
    net = starnet("s1")
    f1 = net.stages[0][1].f1.conv
    assert f1.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.count_nonzero(f1.bias) == 0


def test_deeplab_head_keeps_pytorch_default_init_and_the_backbone_starnets() -> None:
    # The stated decision (book: SME-DeepLabV3+, "Initialisation: from scratch"): every table row trains with it,
    # so a change here would silently split the run records into two protocols.
    torch.manual_seed(0)
    model = build("sme_deeplabv3plus", num_classes=4)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not name.startswith("backbone."):
            bound = 1 / math.sqrt(m.weight[0].numel())  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
            assert m.weight.abs().max().item() <= bound + 1e-7, name
            assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2), name
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and not name.startswith("backbone."):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    conv = model.backbone.stages[0][1].f1.conv
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_star_block_is_relu6_f1_times_f2() -> None:
    block = starnet("s050").stages[0][1]
    x = torch.randn(2, block.f1.conv.in_channels, 8, 8)
    expected = torch.clamp(block.f1(x), 0, 6) * block.f2(x)
    assert torch.allclose(block.star(x), expected)


def test_drop_path_rate_is_applied_and_only_in_training() -> None:
    net = starnet("s050", drop_path_rate=0.3, features_only=True)
    rates = [b.drop_path.p for s in net.stages for b in list(s)[1:] if hasattr(b.drop_path, "p")]
    assert rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(net(x)[-1], net(x)[-1])


def test_starnet_classifier_output() -> None:
    assert StarNet(16, (1, 1, 1, 1), 3, num_classes=10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# Modules ------------------------------------------------------------------------------------------------------


def test_msaa_one_input_three_times_matches_the_papers_widths() -> None:
    m = MSAA(256, 256)
    assert m.fusion.down.in_channels == 768 and m.fusion.dim == 64 and m.fusion.up.out_channels == 256
    # 1x1 768→64, 3x3/5x5/7x7 64→64 (with bias), CA MLP 64→16→64 (no bias), SA 7x7 2→1 (no bias), 1x1 64→256
    expected = (768 * 64 + 64) + sum(64 * 64 * k * k + 64 for k in (3, 5, 7)) + 2 * 64 * 16 + 2 * 49 + (64 * 256 + 256)
    assert sum(p.numel() for p in m.parameters()) == expected
    assert m(torch.randn(2, 256, 9, 11)).shape == (2, 256, 9, 11)


def test_msaa_multi_input_form() -> None:
    m = MSAA(32, 64, num_inputs=3, repeat=1)
    xs = [torch.randn(1, 32, 8, 8) for _ in range(3)]
    assert m(xs).shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="3 input"):
        m(xs[:2])


@pytest.mark.parametrize("variant,kernel,groups", [("T", 5, 64), ("B", 7, 64), ("S", 5, 8), ("L", 7, 8)])
def test_ela_variants(variant: str, kernel: int, groups: int) -> None:
    ela = ELA(64, variant)
    assert ela.conv.kernel_size == (kernel,) and ela.conv.groups == groups
    x = torch.randn(2, 64, 10, 12)
    a_h, a_w = ela.attention(x)
    assert a_h.shape == (2, 64, 10, 1) and a_w.shape == (2, 64, 1, 12)
    assert torch.allclose(ela(x), x * a_h * a_w)


def test_ela_rejects_channels_its_groupnorm_cannot_divide() -> None:
    with pytest.raises(ValueError, match=r"GroupNorm\(16, C\).*24"):
        ELA(24, "B")
    assert ELA(24, "B", gn_groups=8).norm.num_groups == 8


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_follow_the_output_stride(output_stride: int, rates: tuple[int, int, int]) -> None:
    aspp = ASPP(64, 32, output_stride)
    assert aspp.rates == rates and aspp.branch2[0].dilation == (rates[0], rates[0])
    assert aspp(torch.randn(2, 64, 7, 9)).shape == (2, 32, 7, 9)


def test_the_papers_decoder_is_256_wide_with_dropout_05_01() -> None:
    model = build("sme_deeplabv3plus")
    dropouts = [m.p for m in model.decoder.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.5, 0.1]
    assert model.decoder.classifier.in_channels == 256
    assert model.decoder.shortcut[0].out_channels == 48
    assert model.backbone.out_channels == [32, 64, 128, 256]
    assert isinstance(model.context, MSAA) and isinstance(model.low_attention, ELA)
    assert len(model.upsample) == 2  # stride 32 → 8 before the context module


def test_baselines_reach_output_stride_16_or_8() -> None:
    for os_ in (16, 8):
        model = build("deeplabv3plus_mobilenetv2", output_stride=os_)
        feats = model.backbone.forward_features(torch.randn(1, 3, 64, 64))
        assert feats[0].shape[-1] == 16 and feats[-1].shape[-1] == 64 // os_
