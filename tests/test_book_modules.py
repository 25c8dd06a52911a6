"""The modules the book writes out are the library's: run the chapters' `defines-*` cells and compare.

Each chapter that builds a module in the text tags those code cells ``defines-<Name>``. This test executes the
tagged cells of a chapter (nothing else of it) and checks the result against the library module with
:func:`smelib.study.book_check.compare_modules`: same parameter names and shapes, and the same outputs after
loading the library module's (perturbed) weights. An edit to either side that changes the computation fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from smelib import models
from smelib.models.msaa_ela import ChannelAttention, MSAAFusion, SpatialAttention
from smelib.study import star_theory
from smelib.study.book_check import compare_modules, tagged_sources

BOOK = Path(__file__).resolve().parent.parent / "book"


def _namespace(chapter: str, *tags: str) -> dict[str, Any]:
    sources = tagged_sources(BOOK / f"{chapter}.ipynb")
    missing = [t for t in tags if t not in sources]
    assert not missing, f"{chapter}.ipynb has no cells tagged {['defines-' + t for t in missing]}"
    ns: dict[str, Any] = {"__name__": f"book_{chapter}"}
    for source in sources.values():
        exec(compile(source, f"{chapter}.ipynb", "exec"), ns)  # noqa: S102 - the book's own cells
    return ns


def _check(ours: torch.nn.Module, library: torch.nn.Module, *inputs: torch.Tensor) -> None:
    torch.manual_seed(0)
    table = compare_modules(ours, library, *inputs)
    assert table.rows[-1][-1] == sum(p.numel() for p in library.parameters())


def test_star_layer() -> None:
    ns = _namespace("star_operation", "StarLayer")
    _check(ns["StarLayer"](5, 3), star_theory.StarLayer(5, 3), torch.randn(8, 5))


def test_star_block_and_stage() -> None:
    ns = _namespace("starnet", "StarBlock", "star_stage")
    _check(ns["StarBlock"](16, 3), models.StarBlock(16, 3), torch.randn(2, 16, 9, 9))
    s1 = models.starnet("s1", features_only=True)
    _check(ns["star_stage"](48, 96, 8), s1.stages[2], torch.randn(1, 48, 14, 14))


def test_msaa_and_ela() -> None:
    ns = _namespace("msaa_ela", "ELA", "MSAA")
    _check(ns["ChannelAttention"](16), ChannelAttention(16), torch.randn(2, 16, 5, 5))
    _check(ns["SpatialAttention"](7), SpatialAttention(7), torch.randn(2, 16, 5, 5))
    _check(ns["MSAAFusion"](48, 32), MSAAFusion(48, 32), torch.randn(2, 48, 6, 7))
    _check(ns["MSAA"](64, 96), models.MSAA(64, 96), torch.randn(1, 64, 8, 8))
    _check(ns["ELA"](32), models.ELA(32, "B"), torch.randn(2, 32, 11, 13))
    _check(ns["ELA"](24, gn_groups=8), models.ELA(24, "B", gn_groups=8), torch.randn(1, 24, 10, 10))


def test_decoder_and_model() -> None:
    num_classes = 4
    ns = _namespace("sme_deeplabv3plus", "DeepLabV3PlusDecoder", "SMEDeepLabV3Plus")
    decoder = ns["DeepLabV3PlusDecoder"](96, 24, num_classes, 64, 32)
    _check(decoder, models.DeepLabV3PlusDecoder(96, 24, num_classes, 64, 32),
           torch.randn(1, 96, 4, 4), torch.randn(1, 24, 16, 16))
    _check(ns["SMEDeepLabV3Plus"](num_classes), models.build("sme_deeplabv3plus", num_classes=num_classes),
           torch.randn(1, 3, 64, 64))


def test_a_changed_computation_is_caught() -> None:
    ns = _namespace("msaa_ela", "ELA")

    class Drifted(ns["ELA"]):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1e-3

    with pytest.raises(AssertionError):
        compare_modules(Drifted(32), models.ELA(32, "B"), torch.randn(1, 32, 8, 8))
    with pytest.raises(AssertionError, match="conv.weight"):
        compare_modules(ns["ELA"](32), models.ELA(32, "T"), torch.randn(1, 32, 8, 8))


def test_diagrams_are_drawn_from_the_modules() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smelib.study import diagrams

    model = models.build("sme_deeplabv3plus_lite", num_classes=4)

    def texts(fig: Any) -> str:
        out = " ".join(t.get_text() for t in fig.axes[0].texts)
        plt.close(fig)
        return out

    net = texts(diagrams.network_diagram(model, image_size=96))
    assert "24×24×24" in net and "MSAA" in net and "ELA" in net and "stride 8" in net
    assert "1×1 conv\n576→24" in texts(diagrams.msaa_diagram(model.context))
    assert "GroupNorm(8)" in texts(diagrams.ela_diagram(model.low_attention, (24, 24)))
    assert "24→96" in texts(diagrams.star_block_diagram(model.backbone.stages[0][1]))
    assert "12 star blocks" in texts(diagrams.starnet_diagram(models.starnet("s4", features_only=True), 64))
