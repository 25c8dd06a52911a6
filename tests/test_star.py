"""Tests for smelib.study.star_theory (the star operation made explicit, toy networks, the official init's bug) and
smelib.tools.inspection (shape traces)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smelib.tools.inspection import trace_shapes
from smelib.models import starnet
from smelib.study.star_theory import (
    StarLayer,
    ToyFusionNet,
    augment,
    decision_grid,
    implicit_dimension_estimate,
    make_circles,
    make_moons,
    monomial_pairs,
    num_monomials,
    official_starnet_init,
    pairwise_products,
    polynomial_space_dimension,
    quadratic_features,
    star_stack_span_rank,
    star_to_linear_weights,
    train_toy,
)


def test_augment_appends_a_column_of_ones() -> None:
    x = torch.tensor([[2.0, 3.0]])
    assert augment(x).tolist() == [[2.0, 3.0, 1.0]]
    with pytest.raises(ValueError):
        augment(torch.zeros(3))


@pytest.mark.parametrize("d", [0, 1, 2, 5, 10])
def test_monomial_count_matches_the_pairs(d: int) -> None:
    pairs = monomial_pairs(d)
    assert len(pairs) == num_monomials(d) == (d + 2) * (d + 1) // 2
    assert len(set(pairs)) == len(pairs)
    assert all(0 <= i <= j <= d for i, j in pairs)


def test_quadratic_features_by_hand() -> None:
    x = torch.tensor([[2.0, 3.0]])
    # pairs of (x1, x2, 1): (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)
    assert quadratic_features(x).tolist() == [[4.0, 6.0, 2.0, 9.0, 3.0, 1.0]]
    assert pairwise_products(x).shape == (1, 9)


@pytest.mark.parametrize("d", [1, 3, 6])
def test_pairwise_products_have_rank_of_distinct_monomials(d: int) -> None:
    x = torch.randn(200, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    assert int(torch.linalg.matrix_rank(pairwise_products(x))) == num_monomials(d)
    assert int(torch.linalg.matrix_rank(quadratic_features(x))) == num_monomials(d)


@pytest.mark.parametrize(("d", "h"), [(1, 1), (3, 2), (7, 5)])
def test_star_layer_is_linear_on_quadratic_features(d: int, h: int) -> None:
    torch.manual_seed(0)
    layer = StarLayer(d, h).double()
    x = torch.randn(50, d, dtype=torch.float64)
    with torch.no_grad():
        direct = layer(x)
        via_features = quadratic_features(x) @ layer.linear_weights().T
    torch.testing.assert_close(direct, via_features, rtol=0, atol=1e-12)


def test_star_to_linear_weights_by_hand() -> None:
    # (x + 1)(2x + 3) = 2x^2 + 5x + 3 on the monomials (x^2, x, 1)
    w = star_to_linear_weights(torch.tensor([[1.0]]), torch.tensor([1.0]), torch.tensor([[2.0]]), torch.tensor([3.0]))
    assert w.tolist() == [[2.0, 5.0, 3.0]]


def test_polynomial_space_dimension_generalises_the_monomial_count() -> None:
    for d in range(6):
        assert polynomial_space_dimension(d, 2) == num_monomials(d)
    assert polynomial_space_dimension(2, 4) == 15
    assert implicit_dimension_estimate(4.0, 1) == pytest.approx(8.0)
    assert implicit_dimension_estimate(4.0, 2) == pytest.approx(64.0)


@pytest.mark.parametrize(("d", "layers"), [(2, 1), (2, 2), (3, 2), (2, 3)])
def test_random_star_stacks_span_the_whole_polynomial_space(d: int, layers: int) -> None:
    target = polynomial_space_dimension(d, 2**layers)
    assert star_stack_span_rank(d, layers, num_nets=2 * target, num_points=3 * target) == target


def test_toy_datasets_are_seeded_and_balanced() -> None:
    for make in (make_moons, make_circles):
        x, y = make(101, seed=3)
        x2, y2 = make(101, seed=3)
        assert x.shape == (101, 2) and y.shape == (101,) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert int(y.sum()) == 51
        assert not torch.equal(make(101, seed=4)[0], x)


def test_toy_nets_have_the_same_parameters_in_both_modes() -> None:
    star, plus = ToyFusionNet(4, 2, "star"), ToyFusionNet(4, 2, "sum")
    assert [p.shape for p in star.parameters()] == [p.shape for p in plus.parameters()]
    assert star(torch.zeros(3, 2)).shape == (3, 2)
    with pytest.raises(ValueError):
        ToyFusionNet(4, 1, "product")


def test_star_toy_net_learns_circles() -> None:
    x, y = make_circles(256, seed=0)
    xt, yt = make_circles(256, seed=1)
    torch.manual_seed(0)
    result = train_toy(ToyFusionNet(8, 1, "star"), x, y, xt, yt, steps=200)
    assert result.test_acc > 0.9
    assert math.isfinite(result.final_loss)


def test_decision_grid_shapes() -> None:
    xx, yy, p = decision_grid(ToyFusionNet(4, 1), (-1.0, 1.0), (-2.0, 2.0), resolution=7)
    assert xx.shape == yy.shape == p.shape == (7, 7)
    assert float(xx[0, 0]) == -1.0 and float(yy[-1, 0]) == 2.0
    assert bool(((p >= 0) & (p <= 1)).all())


def test_official_init_skips_convolutions() -> None:
    torch.manual_seed(0)
    model = starnet("s050").requires_grad_(False)
    conv = model.stages[0][1].f1.conv
    assert float(conv.weight.std()) == pytest.approx(0.02, rel=0.2)  # ours: the intended trunc-normal
    assert float(conv.bias.abs().max()) == 0.0
    model.apply(official_starnet_init)
    bound = 1 / math.sqrt(conv.in_channels)  # PyTorch's default for a 1x1 conv
    assert float(conv.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.2)
    assert float(conv.bias.abs().max()) > 0.0
    assert float(model.head.weight.std()) == pytest.approx(0.02, rel=0.2)
    assert float(model.head.bias.abs().max()) == 0.0


def test_trace_shapes_records_calls_in_order() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model.train()
    rows = trace_shapes(model, torch.zeros(1, 3, 8, 8), ["0", "2", ""])
    assert [r.name for r in rows] == ["0", "2", ""]
    assert rows[0].inputs == ((1, 3, 8, 8),) and rows[0].output == ((1, 4, 4, 4),)
    assert rows[0].params == 3 * 4 * 9 + 4 and rows[0].kind == "Conv2d"
    assert rows[-1].output == ((1, 2, 4, 4),)
    assert model.training
    assert [r.name for r in trace_shapes(model, torch.zeros(1, 3, 8, 8))] == ["0", "1", "2"]
    with pytest.raises(KeyError):
        trace_shapes(model, torch.zeros(1, 3, 8, 8), ["nope"])
