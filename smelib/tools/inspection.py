"""Looking inside a model: which submodules run, in which order, on which shapes.

:func:`trace_shapes` registers forward hooks on named submodules, runs one forward pass without gradients and
returns one :class:`ShapeRow` per call, in call order (a module called twice, such as ELA's shared Conv1d, gives
two rows). The book's model chapters use it for their shape walks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ShapeRow", "trace_shapes", "tensor_shapes"]


@dataclass(frozen=True)
class ShapeRow:
    """One call of a traced submodule.

    Attributes:
        name: the submodule's qualified name (``""`` is the model itself).
        kind: its class name.
        inputs: shapes of the tensor positional arguments (tensors inside lists/tuples included, in order).
        output: shapes of the tensors it returned (one entry for a single tensor).
        params: parameters the submodule owns, counted once per row (all of them, recursively).
    """

    name: str
    kind: str
    inputs: tuple[tuple[int, ...], ...]
    output: tuple[tuple[int, ...], ...]
    params: int


def tensor_shapes(value: Any) -> tuple[tuple[int, ...], ...]:
    """Shapes of every tensor in ``value`` (a tensor, or nested lists/tuples of them), depth first."""
    if isinstance(value, Tensor):
        return (tuple(value.shape),)
    if isinstance(value, (list, tuple)):
        return tuple(shape for item in value for shape in tensor_shapes(item))
    return ()


def trace_shapes(model: nn.Module, x: Tensor, names: Sequence[str] | None = None) -> list[ShapeRow]:
    """Run ``model(x)`` once (eval mode, no gradients) and record the shapes seen by the named submodules.

    Args:
        model: any module; its train/eval mode is restored afterwards.
        x: the input, e.g. ``(1, 3, 200, 200)``.
        names: qualified names from ``model.named_modules()`` (``""`` for the model itself); ``None`` traces the
            direct children.

    Returns:
        One :class:`ShapeRow` per call of a traced submodule, in the order the calls finished (a parent finishes
        after its children).

    Raises:
        KeyError: a name that is not a submodule of ``model``.
    """
    modules = dict(model.named_modules())
    if names is None:
        names = [name for name, _ in model.named_children()]
    missing = [name for name in names if name not in modules]
    if missing:
        raise KeyError(f"not submodules of the model: {missing}")
    rows: list[ShapeRow] = []

    def make_hook(name: str, module: nn.Module) -> Any:
        params = sum(p.numel() for p in module.parameters())

        def hook(_: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            rows.append(ShapeRow(name, type(module).__name__, tensor_shapes(args), tensor_shapes(out), params))

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name, modules[name])) for name in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return rows
