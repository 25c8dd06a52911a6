"""The star operation, made explicit: quadratic feature maps, equivalent linear weights, monomial counts, and the
toy networks of the book's "star operation" chapter.

A *star layer* fuses two linear maps of the same input by an elementwise product. With the bias folded into the
input as a constant coordinate, ``x̃ = (x_1, ..., x_d, 1)``, one output channel is

    (w1ᵀ x̃)(w2ᵀ x̃) = Σ_i Σ_j w1_i w2_j x̃_i x̃_j = Σ_{i ≤ j} c_ij x̃_i x̃_j,

a linear model on the ``(d + 2)(d + 1) / 2`` distinct monomials ``x̃_i x̃_j`` (``i ≤ j``) with coefficients
``c_ii = w1_i w2_i`` and ``c_ij = w1_i w2_j + w1_j w2_i``. :func:`quadratic_features` builds that feature map and
:func:`star_to_linear_weights` the coefficients, so the identity can be checked numerically.

Stacking ``l`` star layers gives polynomials of degree ``2**l``; :func:`polynomial_space_dimension` counts the
space they live in exactly and :func:`implicit_dimension_estimate` gives StarNet's approximation
``(d / √2) ** (2**l)``.

The rest serves the chapter's experiments: :class:`ToyFusionNet` (a tiny network whose blocks fuse two branches by
``*`` or ``+``), two seeded 2-D datasets, a full-batch trainer, and :func:`official_starnet_init`, which replays
the initialisation of StarNet's official code, bug included, for the "StarNet" chapter's comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "StarLayer",
    "ToyFusionNet",
    "ToyResult",
    "accuracy",
    "augment",
    "decision_grid",
    "implicit_dimension_estimate",
    "make_circles",
    "make_moons",
    "monomial_pairs",
    "num_monomials",
    "official_starnet_init",
    "pairwise_products",
    "polynomial_space_dimension",
    "quadratic_features",
    "star_stack_span_rank",
    "star_to_linear_weights",
    "train_toy",
]


# ---------------------------------------------------------------------------------------------------------------
# One star layer as a linear model on quadratic features
# ---------------------------------------------------------------------------------------------------------------


def augment(x: Tensor) -> Tensor:
    """Append the constant coordinate that carries the bias: ``(N, d)`` → ``(N, d + 1)``, last column 1."""
    if x.dim() != 2:
        raise ValueError(f"x must be (N, d), got shape {tuple(x.shape)}")
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def num_monomials(d: int) -> int:
    """Distinct monomials ``x̃_i x̃_j`` (``i ≤ j``) of ``d`` inputs plus the constant: ``(d + 2)(d + 1) / 2``."""
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    return (d + 2) * (d + 1) // 2


def monomial_pairs(d: int) -> list[tuple[int, int]]:
    """The index pairs ``(i, j)``, ``0 ≤ i ≤ j ≤ d``, of the monomials ``x̃_i x̃_j``, in row-major order.

    Index ``d`` is the constant coordinate, so ``(i, d)`` is the linear term ``x_i`` and ``(d, d)`` the constant 1.
    The list has :func:`num_monomials` ``(d)`` entries and fixes the column order of :func:`quadratic_features`.
    """
    return [(i, j) for i in range(d + 1) for j in range(i, d + 1)]


def pairwise_products(x: Tensor) -> Tensor:
    """All ``(d + 1)²`` products ``x̃_i x̃_j``, duplicates included: ``(N, d)`` → ``(N, (d + 1)²)``.

    Column ``i·(d + 1) + j`` holds ``x̃_i x̃_j``; ``x̃_i x̃_j`` and ``x̃_j x̃_i`` are equal columns, which is why the
    matrix has rank :func:`num_monomials` ``(d)`` and not ``(d + 1)²``.
    """
    xt = augment(x)
    return (xt.unsqueeze(2) * xt.unsqueeze(1)).flatten(1)


def quadratic_features(x: Tensor) -> Tensor:
    """The explicit feature map of a star layer: ``(N, d)`` → ``(N, (d + 2)(d + 1) / 2)``.

    Column ``k`` holds ``x̃_i x̃_j`` for the ``k``-th pair of :func:`monomial_pairs`: the quadratic terms, the
    linear terms (``j = d``) and the constant (``i = j = d``).
    """
    xt = augment(x)
    d = x.shape[1]
    rows, cols = torch.triu_indices(d + 1, d + 1, device=x.device)
    return xt[:, rows] * xt[:, cols]


def star_to_linear_weights(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Coefficients ``C`` with ``(W1 x + b1) * (W2 x + b2) = quadratic_features(x) @ C.T``.

    Args:
        w1, w2: ``(h, d)`` weights of the two branches (``nn.Linear(d, h).weight``).
        b1, b2: ``(h,)`` biases.

    Returns:
        ``(h, (d + 2)(d + 1) / 2)``: ``C[:, k] = w̃1_i w̃2_i`` for a diagonal pair ``i = j`` and
        ``w̃1_i w̃2_j + w̃1_j w̃2_i`` otherwise, with ``w̃ = [w, b]`` the bias-augmented weights.
    """
    a = torch.cat([w1, b1.unsqueeze(1)], dim=1)  # (h, d + 1)
    b = torch.cat([w2, b2.unsqueeze(1)], dim=1)
    outer = a.unsqueeze(2) * b.unsqueeze(1)  # (h, d + 1, d + 1): w̃1_i w̃2_j
    sym = outer + outer.transpose(1, 2)
    d1 = a.shape[1]
    rows, cols = torch.triu_indices(d1, d1, device=a.device)
    coeffs = sym[:, rows, cols]
    diagonal = rows == cols
    coeffs[:, diagonal] = coeffs[:, diagonal] / 2  # the diagonal was counted twice by the symmetrisation
    return coeffs


class StarLayer(nn.Module):
    """The bare star operation on vectors: ``(W1 x + b1) * (W2 x + b2)``, ``(N, d)`` → ``(N, h)``.

    StarNet's block applies ReLU6 to the first branch; this layer omits it, which is the form the algebra is about.
    Written out in the book's chapter :ref:`chap-star-operation`.
    """

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.f1 = nn.Linear(d, h)
        self.f2 = nn.Linear(d, h)

    def forward(self, x: Tensor) -> Tensor:
        return self.f1(x) * self.f2(x)

    def linear_weights(self) -> Tensor:
        """The equivalent weights on :func:`quadratic_features`, shape ``(h, (d + 2)(d + 1) / 2)``."""
        return star_to_linear_weights(self.f1.weight, self.f1.bias, self.f2.weight, self.f2.bias)


# ---------------------------------------------------------------------------------------------------------------
# Stacked star layers: the implicit dimension
# ---------------------------------------------------------------------------------------------------------------


def polynomial_space_dimension(d: int, degree: int) -> int:
    """Monomials of total degree ≤ ``degree`` in ``d`` variables, ``C(d + degree, degree)``.

    ``l`` stacked star layers compute polynomials of degree ``2**l`` of the input, so this with ``degree = 2**l`` is
    the dimension of the space an ``l``-layer star network's outputs live in; for ``l = 1`` it is
    :func:`num_monomials`.
    """
    return math.comb(d + degree, degree)


def implicit_dimension_estimate(d: float, layers: int) -> float:
    """StarNet's estimate of the implicit dimension after ``layers`` star layers of width ``d``: ``(d/√2)^(2^l)``.

    It comes from ``(d + 2)(d + 1)/2 ≈ d²/2 = (d/√2)²`` applied once per layer, with each layer's output dimension
    taken as the next layer's ``d``.
    """
    return (d / math.sqrt(2.0)) ** (2**layers)


def star_stack_span_rank(d: int, layers: int, num_nets: int = 200, num_points: int = 400, seed: int = 0) -> int:
    """Numerical dimension of the span of functions computed by random ``layers``-deep star networks.

    Each network keeps width ``d`` (``x ← (W1 x + b1) * (W2 x + b2)`` per layer, ``W`` Gaussian) and sums its
    last layer's channels into one output. The outputs of ``num_nets`` networks on ``num_points`` random inputs in
    ``[-1, 1]^d`` form a ``(num_points, num_nets)`` matrix whose rank (float64) is returned; when both sizes
    exceed :func:`polynomial_space_dimension` ``(d, 2**layers)`` it equals that number.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(num_points, d, generator=gen, dtype=torch.float64) * 2 - 1
    outputs = []
    for _ in range(num_nets):
        h = x
        for _ in range(layers):
            w1 = torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
            w2 = torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
            b1 = torch.randn(d, generator=gen, dtype=torch.float64)
            b2 = torch.randn(d, generator=gen, dtype=torch.float64)
            h = (h @ w1.T + b1) * (h @ w2.T + b2)
        outputs.append(h.sum(dim=1))
    return int(torch.linalg.matrix_rank(torch.stack(outputs, dim=1)))


# ---------------------------------------------------------------------------------------------------------------
# Star versus sum on 2-D toy problems
# ---------------------------------------------------------------------------------------------------------------


class ToyFusionNet(nn.Module):
    """A tiny classifier whose blocks fuse two branches by ``*`` (star) or ``+`` (sum), at a fixed width.

    ``x → Linear(in, width)``, then ``depth`` residual blocks ``x ← x + g(ReLU6(f1(x)) ∘ f2(x))`` with
    ``∘ ∈ {*, +}`` and ``f1, f2, g`` all ``Linear(width, width)`` (the star block of StarNet without its
    convolutions), then ``Linear(width, num_classes)``. Both modes have exactly the same parameters.

    Shapes: ``(N, in_features)`` → logits ``(N, num_classes)``.
    """

    def __init__(self, width: int, depth: int = 2, mode: str = "star", in_features: int = 2, num_classes: int = 2):
        super().__init__()
        if mode not in ("star", "sum"):
            raise ValueError(f"mode must be 'star' or 'sum', got {mode!r}")
        self.mode = mode
        self.stem = nn.Linear(in_features, width)
        self.f1 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.f2 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.g = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.act = nn.ReLU6()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for f1, f2, g in zip(self.f1, self.f2, self.g):
            a, b = self.act(f1(x)), f2(x)
            x = x + g(a * b if self.mode == "star" else a + b)
        return self.head(x)


def make_moons(n: int, noise: float = 0.15, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two interleaving half circles, ``n`` points (half per class), Gaussian noise of std ``noise``.

    Returns ``x (n, 2)`` float32, roughly centred on the origin, and labels ``y (n,)`` int64 in {0, 1}.
    """
    gen = torch.Generator().manual_seed(seed)
    n0 = n // 2
    t0 = torch.rand(n0, generator=gen) * math.pi
    t1 = torch.rand(n - n0, generator=gen) * math.pi
    upper = torch.stack([torch.cos(t0), torch.sin(t0)], dim=1)
    lower = torch.stack([1 - torch.cos(t1), 0.5 - torch.sin(t1)], dim=1)
    x = torch.cat([upper, lower]) + noise * torch.randn(n, 2, generator=gen)
    x = x - torch.tensor([0.5, 0.25])
    y = torch.cat([torch.zeros(n0, dtype=torch.int64), torch.ones(n - n0, dtype=torch.int64)])
    return x, y


def make_circles(n: int, noise: float = 0.1, factor: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two concentric circles of radius 1 (class 0) and ``factor`` (class 1), Gaussian noise of std ``noise``.

    Returns ``x (n, 2)`` float32 and labels ``y (n,)`` int64 in {0, 1}.
    """
    gen = torch.Generator().manual_seed(seed)
    n0 = n // 2
    t = torch.rand(n, generator=gen) * 2 * math.pi
    radius = torch.cat([torch.ones(n0), torch.full((n - n0,), factor)])
    x = torch.stack([torch.cos(t), torch.sin(t)], dim=1) * radius.unsqueeze(1)
    x = x + noise * torch.randn(n, 2, generator=gen)
    y = torch.cat([torch.zeros(n0, dtype=torch.int64), torch.ones(n - n0, dtype=torch.int64)])
    return x, y


@dataclass(frozen=True)
class ToyResult:
    """One training run: the final training loss and the train and test accuracies (fractions)."""

    final_loss: float
    train_acc: float
    test_acc: float


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x (N, F)`` whose argmax logit equals ``y (N,)``."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train_toy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    steps: int = 400,
    lr: float = 1e-2,
) -> ToyResult:
    """Train ``model`` full-batch with Adam and cross-entropy for ``steps`` steps; evaluate on both sets.

    Deterministic given the model's initial weights (no sampling happens here).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    return ToyResult(float(loss.detach()), accuracy(model, x, y), accuracy(model, x_test, y_test))


def decision_grid(
    model: nn.Module, xlim: tuple[float, float], ylim: tuple[float, float], resolution: int = 200
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-1 probability of a 2-D classifier on a regular grid.

    Returns ``xx, yy, p``, each ``(resolution, resolution)``: grid coordinates (``meshgrid`` with ``indexing="xy"``)
    and ``softmax(model(·))[:, 1]`` there, for ``contourf``.
    """
    xs = torch.linspace(*xlim, resolution)
    ys = torch.linspace(*ylim, resolution)
    xx, yy = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        p = torch.softmax(model(torch.stack([xx.flatten(), yy.flatten()], dim=1)), dim=1)[:, 1]
    return xx, yy, p.reshape(resolution, resolution)


# ---------------------------------------------------------------------------------------------------------------
# StarNet's official initialisation, bug included
# ---------------------------------------------------------------------------------------------------------------


def official_starnet_init(m: nn.Module) -> None:
    """Replay ``StarNet._init_weights`` of the official code on one module (use with ``model.apply``).

    The official test ``isinstance(m, nn.Linear or nn.Conv2d)`` evaluates ``nn.Linear or nn.Conv2d`` first, which
    is ``nn.Linear``; so only Linear layers get ``trunc_normal_(std=0.02)`` and a zero bias, and every convolution
    keeps PyTorch's default initialisation. Likewise ``nn.LayerNorm or nn.BatchNorm2d`` is ``nn.LayerNorm``
    (BatchNorm keeps its default weight 1 and bias 0, which is what the line intended anyway).

    Because :class:`smelib.models.backbones.starnet.StarNet` already initialises its convolutions the intended way,
    this function
    resets every ``nn.Conv2d`` to PyTorch's default (``reset_parameters``): what the official code leaves them at.
    """
    if isinstance(m, nn.Linear or nn.Conv2d):  # noqa: SIM101 - the official code's bug, replayed on purpose
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm or nn.BatchNorm2d):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)
    elif isinstance(m, nn.Conv2d):
        m.reset_parameters()
