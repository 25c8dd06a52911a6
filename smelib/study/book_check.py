"""Check that a module written out in a chapter is the library's: used by the chapters and by the tests.

The book writes ``StarBlock``, ``MSAA``, ``ELA`` and the DeepLabV3+ decoder out in short cells tagged
``defines-<Name>``; :func:`compare_modules` proves a written-out module equal to the library's, and
:func:`tagged_sources` reads those cells back from the ``.ipynb`` file so a test can run them.
"""

from __future__ import annotations

import json
import os
import torch
from torch import nn

from smelib.study.tables import Table


def _perturb(module: nn.Module, seed: int) -> None:
    """Move every parameter and buffer away from its initial value, so equality is not an accident of init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.rand(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise)
            else:
                t.add_(0.1 * (noise - 0.5))


def compare_modules(ours: nn.Module, library: nn.Module, *inputs: torch.Tensor, seed: int = 0) -> Table:
    """Assert that ``ours`` computes what ``library`` computes, and tabulate the evidence.

    Checks that both have the same parameter and buffer names with the same shapes, perturbs the library
    module's parameters and buffers (seeded), loads its ``state_dict`` into ``ours`` (strictly) and compares the
    outputs on ``inputs`` in eval mode with ``torch.testing.assert_close``.

    Returns:
        One row per parameter tensor: name, shape and count in ``ours``, and the totals.

    Raises:
        AssertionError: a name, shape or output differs.
    """
    mine, theirs = ours.state_dict(), library.state_dict()
    assert list(mine) == list(theirs), f"state_dict names differ: {sorted(set(mine) ^ set(theirs))}"
    for name in mine:
        assert mine[name].shape == theirs[name].shape, f"{name}: {mine[name].shape} vs {theirs[name].shape}"
    _perturb(library, seed)
    ours.load_state_dict(library.state_dict(), strict=True)
    ours.eval(), library.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(*inputs), library(*inputs))
    rows: list[list[object]] = [[name, "×".join(map(str, p.shape)), p.numel()] for name, p in ours.named_parameters()]
    total_ours = sum(p.numel() for p in ours.parameters())
    assert total_ours == sum(p.numel() for p in library.parameters())
    rows.append(["total (same in the library)", "", total_ours])
    return Table(["parameter", "shape", "count"], rows,
                 title=f"{type(ours).__name__} written out = {type(library).__module__}.{type(library).__name__}")


def tagged_sources(notebook: str | os.PathLike, prefix: str = "defines-") -> dict[str, str]:
    """The source of every code cell of ``notebook`` with a tag starting with ``prefix``, keyed by the rest of the
    tag, in notebook order (cells with the same tag are joined)."""
    with open(notebook, encoding="utf-8") as fh:
        cells = json.load(fh)["cells"]
    out: dict[str, str] = {}
    for cell in cells:
        for tag in cell.get("metadata", {}).get("tags", []):
            if cell["cell_type"] == "code" and tag.startswith(prefix):
                source = "".join(cell["source"])
                key = tag[len(prefix):]
                out[key] = f"{out[key]}\n\n{source}" if key in out else source
    return out
