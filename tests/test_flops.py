"""FLOP and parameter counting: the paper's Table 2 to the digit, our thop rules against thop itself, and
fvcore's counts against hand-computed ones."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from smelib.cli import main
from smelib.models.complexity import count_params, fvcore_macs
from smelib.tools.flops import thop_count
from smelib.study.table2 import TABLE2, table2
from smelib.models import build
from smelib.models.backbones.starnet import StarBlock


@pytest.mark.parametrize("row", TABLE2, ids=lambda r: r.config)
def test_table2_is_reproduced_to_three_decimals(row) -> None:
    torch.manual_seed(0)
    count = thop_count(build(row.config), torch.zeros(1, 3, 512, 512))
    assert f"{count.paper_gflops:.3f}" == f"{row.paper_gflops:.3f}"
    assert f"{count.params / 1e6:.3f}" == f"{row.paper_params_m:.3f}"


@pytest.mark.parametrize("name,size", [("sme_deeplabv3plus_lite", 64), ("starnet_aspp_msaa", 96),
                                       ("deeplabv3plus_mobilenetv2", 64)])
def test_our_thop_rules_agree_with_thop(name: str, size: int) -> None:
    thop = pytest.importorskip("thop")
    model = build(name)
    x = torch.zeros(1, 3, size, size)
    ours = thop_count(model, x)
    macs, params = thop.profile(model, inputs=(x,), verbose=False)
    assert ours.macs == macs
    assert ours.params == params


def test_thop_misses_what_runs_outside_modules() -> None:
    # ELA is a GroupNorm, a sigmoid and products around one Conv1d: thop sees only the Conv1d.
    with_ela = thop_count(build("starnet_msaa_ela"), torch.zeros(1, 3, 128, 128))
    without = thop_count(build("starnet_msaa"), torch.zeros(1, 3, 128, 128))
    conv1d_ops = 32 * 1 * 7 * (32 + 32)  # C out-channels x (C/groups) x k, over H=32 and W=32 strips
    assert with_ela.macs - without.macs == conv1d_ops
    assert with_ela.params - without.params == 32 * 7  # GroupNorm's 64 parameters are not counted
    assert count_params(build("starnet_msaa_ela")) - count_params(build("starnet_msaa")) == 32 * 7 + 64


def test_fvcore_counts_one_per_multiply_add() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    macs, _ = fvcore_macs(conv, torch.zeros(1, 3, 10, 10))
    assert macs == 8 * 10 * 10 * 3 * 3 * 3
    assert thop_count(conv, torch.zeros(1, 3, 10, 10)).macs == macs


def test_elementwise_handles_count_the_star_operation() -> None:
    dim, ratio, h, w = 8, 4, 6, 5
    block = StarBlock(dim, ratio)
    x = torch.zeros(1, dim, h, w)
    plain, _ = fvcore_macs(block, x)
    extra, _ = fvcore_macs(block, x, elementwise=True)
    # ReLU6 (hardtanh) and the product, each one op per element of the (r·d, H, W) hidden tensor
    assert extra - plain == 2 * ratio * dim * h * w


def test_table2_rows_have_the_documented_keys() -> None:
    rows = table2(64, 64)
    assert [r["config"] for r in rows] == [r.config for r in TABLE2]
    assert set(rows[0]) == {"paper_label", "config", "paper_gflops", "paper_params_m", "gflops_paper_convention",
                            "params_m_paper_convention", "params_m_true", "gmacs_fvcore"}
    assert rows[0]["paper_gflops"] == 74.604


def test_flops_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "sme_deeplabv3plus_lite", "--size", "64", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["height"] == 64 and report["params_m_true"] == pytest.approx(2.936, abs=1e-3)
    assert report["gmacs_fvcore"] > 0 and set(report["by_module_gmacs_fvcore"]) >= {"backbone", "decoder"}


def test_flops_cli_rejects_unknown_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "not_a_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
