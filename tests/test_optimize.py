"""Inference optimisations: BatchNorm folding, the exact MSAA/star rewrites, the wrapper, the compile fallback."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from smelib import runtime
from smelib.tools import optimize_inference as optimize
from smelib.models import build
from smelib.models.backbones.starnet import StarBlock
from smelib.models.msaa_ela import MSAA
from smelib.tools.optimize_inference import (
    FastMSAA,
    FastStarBlock,
    OptimizeOptions,
    conv_bn_pairs,
    fold_batchnorm,
    fuse_msaa,
    fuse_star,
    optimize_for_inference,
)

SIZE = (64, 64)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding them is a real change."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.fixture(scope="module")
def lite() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(build("sme_deeplabv3plus_lite")).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_batchnorm_is_exact_and_removes_every_bn_after_a_conv(lite: nn.Module, x: torch.Tensor) -> None:
    assert n_bn(lite) > 0 and conv_bn_pairs(lite, x), "the lite model has Conv->BN pairs to fold"
    folded = copy.deepcopy(lite)
    report = fold_batchnorm(folded, x)
    assert report.folded == n_bn(lite)
    assert report.batchnorms_left == 0 and n_bn(folded) == 0
    assert conv_bn_pairs(folded, x) == []
    with torch.no_grad():
        ref, got = lite(x), folded(x)
    assert (ref - got).abs().max().item() < 1e-4
    # The check can fail: dropping the BatchNorms without folding them changes the output a lot.
    dropped = copy.deepcopy(lite)
    for name, m in list(dropped.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            parent, attr = optimize._named_parent(dropped, name)
            setattr(parent, attr, nn.Identity())
    with torch.no_grad():
        assert (dropped(x) - ref).abs().max().item() > 1e-3


def test_fold_batchnorm_refuses_training_mode(lite: nn.Module) -> None:
    m = copy.deepcopy(lite).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(m)


class AttrPair(nn.Module):
    """conv -> bn written as attributes (as Xception's separable conv), then a conv -> bn whose conv output is
    also used by a residual add, which must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        z = self.conv2(y)
        return self.bn2(z) + z


def test_fold_batchnorm_traces_attribute_pairs_and_skips_shared_outputs(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    m = randomise_bn(AttrPair()).eval()
    assert fold_batchnorm(copy.deepcopy(m)).folded == 0  # without an example only Sequential pairs are seen
    pairs = {bn: excl for _, bn, excl in conv_bn_pairs(m, x)}
    assert pairs == {"bn": True, "bn2": False}
    folded = copy.deepcopy(m)
    report = fold_batchnorm(folded, x)
    assert report.traced == ["bn"] and report.skipped == ["bn2"]
    assert isinstance(folded.bn, nn.Identity) and isinstance(folded.bn2, nn.BatchNorm2d)
    assert folded.conv.bias is not None
    with torch.no_grad():
        assert (folded(x) - m(x)).abs().max().item() < 1e-5


def test_fuse_msaa_is_exact() -> None:
    torch.manual_seed(0)
    msaa = MSAA(16, 32).eval()
    xin = torch.randn(2, 16, 12, 12)
    holder = nn.Sequential(copy.deepcopy(msaa))
    assert fuse_msaa(holder) == 1
    fast = holder[0]
    assert isinstance(fast, FastMSAA)
    assert fast.conv.kernel_size == (7, 7) and fast.down.in_channels == 16
    with torch.no_grad():
        assert (fast(xin) - msaa(xin)).abs().max().item() < 1e-5


def test_fuse_star_is_exact() -> None:
    torch.manual_seed(0)
    block = randomise_bn(StarBlock(8, 3)).eval()
    xin = torch.randn(2, 8, 10, 10)
    holder = nn.Sequential(copy.deepcopy(block))
    assert fuse_star(holder) == 1 and isinstance(holder[0], FastStarBlock)
    assert holder[0].f12.out_channels == 2 * 24
    with torch.no_grad():
        assert (holder[0](xin) - block(xin)).abs().max().item() < 1e-5


@pytest.mark.parametrize("disable", [None, "fold_bn", "fuse_msaa", "fuse_star", "channels_last", "inference_mode"])
def test_optimised_output_equals_eager(lite: nn.Module, x: torch.Tensor, disable: str | None) -> None:
    opts = OptimizeOptions.from_names(disable=["compile"] + ([disable] if disable else []))
    assert not opts.compile
    fast = optimize_for_inference(lite, opts, example=x)
    assert fast.applied["verify_max_abs_diff"] < 1e-4
    if disable in ("fold_bn", "fuse_msaa", "fuse_star"):
        assert fast.applied[disable] is False
    else:
        assert fast.applied["fold_bn"]["folded"] > 0
    xb = torch.randn(3, 3, 48, 80)
    with torch.no_grad():
        ref = lite(xb)
    got = fast(xb)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4
    assert lite.training is False and n_bn(lite) > 0, "the original model is left as it was"


def test_from_names_only_and_unknown() -> None:
    opts = OptimizeOptions.from_names(only=["channels_last"])
    assert opts.channels_last and not opts.fold_bn and not opts.compile and opts.amp is None
    assert OptimizeOptions.from_names().compile and OptimizeOptions.from_names().amp == "bf16"
    with pytest.raises(ValueError, match="unknown optimisation"):
        OptimizeOptions.from_names(disable=["warp_drive"])


def test_compile_failure_falls_back_to_eager(lite: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken_compile(module: nn.Module, device: torch.device, cuda_graphs: bool = False):
        def run(*args: object) -> None:
            calls.append(1)
            raise RuntimeError("simulated: no working C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(optimize, "_compile", broken_compile)
    monkeypatch.setattr(optimize, "compile_available", lambda device="cpu": (True, "pretend"))
    fast = optimize_for_inference(lite, OptimizeOptions(compile=True), example=x)
    assert fast.compile_status == "pending"
    with torch.no_grad():
        ref = lite(x)
    got = fast(x)
    assert calls == [1]
    assert fast.compile_status.startswith("fallback: RuntimeError: simulated: no working C++ compiler")
    assert fast.applied["compile"] == fast.compile_status
    assert (got - ref).abs().max().item() < 1e-4
    fast(x)
    assert calls == [1], "after a failure the compiled path is not tried again"


def test_compile_unavailable_is_recorded(lite: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimize, "compile_available", lambda device="cpu": (False, "no C++ compiler found"))
    fast = optimize_for_inference(lite, OptimizeOptions(compile=True))
    assert fast.compile_status == "fallback: no C++ compiler found"
    assert fast(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_compile_available_reports_a_reason() -> None:
    ok, why = optimize.compile_available("cpu")
    assert isinstance(ok, bool) and why


def test_verify_catches_a_wrong_rewrite(lite: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_fuse(model: nn.Module) -> int:
        model.decoder.classifier.bias.data += 1.0
        return 1

    monkeypatch.setattr(optimize, "fuse_msaa", bad_fuse)
    with pytest.raises(RuntimeError, match="differs from the original"):
        optimize_for_inference(lite, OptimizeOptions(), example=x)


def test_set_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1
        assert runtime.set_threads(None) == 1
        with pytest.raises(ValueError):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_pick_threads_returns_the_fastest_and_restores() -> None:
    import time

    before = torch.get_num_threads()
    seen = []

    def fn() -> None:
        n = torch.get_num_threads()
        seen.append(n)
        time.sleep(0.002 if n == 1 else 0.02)

    best, timings = optimize.pick_threads(fn, candidates=[1, 2], trials=1)
    assert best == 1 and set(timings) == {1, 2} and timings[1] < timings[2]
    assert set(seen) == {1, 2}
    assert torch.get_num_threads() == before


def test_optimised_threads_are_scoped(lite: nn.Module) -> None:
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    fast = optimize_for_inference(lite, OptimizeOptions(threads=want))
    seen = []
    fast.module.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    fast(torch.randn(1, 3, 32, 32))
    assert seen == [want] and torch.get_num_threads() == before


def test_cpu_bf16_autocast_is_opt_in_and_close(lite: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = lite(x)
    plain = optimize_for_inference(lite, OptimizeOptions(amp="bf16"), example=x)
    assert plain.amp_dtype is None and plain(x).dtype == torch.float32  # amp alone is CUDA-only
    fast = optimize_for_inference(lite, OptimizeOptions(amp="bf16", cpu_amp=True), example=x)
    y = fast(x)
    assert fast.applied["amp"] == "bf16" and y.dtype == torch.bfloat16
    err = (y.float() - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item()  # bf16 changes the numbers, a little
    with pytest.raises(ValueError, match="cpu_amp needs amp='bf16'"):
        OptimizeOptions(amp="fp16", cpu_amp=True).autocast_dtype("cpu")


def test_reuse_memory_is_applied_on_glibc_and_listed_by_the_cli(lite: nn.Module, x: torch.Tensor) -> None:
    import platform

    from smelib.cli import build_parser
    from smelib.runtime import reuse_freed_memory
    from smelib.tools.optimize_inference import OPTIMISATIONS

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert reuse_freed_memory() is glibc
    fast = optimize_for_inference(lite, OptimizeOptions(), example=x)
    assert fast.applied["reuse_memory"] is glibc
    assert optimize_for_inference(lite, OptimizeOptions(reuse_memory=False), example=x).applied["reuse_memory"] is False
    bench_help = build_parser()._subparsers._group_actions[0].choices["bench"].format_help()
    assert all(name in bench_help for name in OPTIMISATIONS)
