"""ONNX export with a numerical check against PyTorch.

``smelib export CHECKPOINT_OR_MODEL --onnx OUT [--size H W]`` (or :func:`export_onnx`):

* the source is a checkpoint written by training (read with :func:`smelib.checkpoint.load_checkpoint`, which
  loads with ``weights_only=True``) or a registered model name (random initialisation, seed 0: for testing);
* the graph is exported with the TorchScript-based exporter (``dynamo=False``: it needs neither ``onnxscript``
  nor a network) at opset 17 by default, with the batch, height and width axes dynamic;
* ``onnx.checker.check_model`` validates the file when ``onnx`` is installed;
* when ``onnxruntime`` is installed, the ONNX model runs on the export size and on a second size (another batch
  and spatial size, which exercises the dynamic axes) and is compared with PyTorch: the max abs difference is
  reported, and a difference above ``atol`` (1e-3) is an error.

Both ``onnx`` and ``onnxruntime`` are optional: without them the export still runs and the report says which
check was skipped and why.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ExportError", "export_onnx", "load_source"]


class ExportError(RuntimeError):
    """The source cannot be loaded, the export failed, or ONNX and PyTorch disagree."""


def load_source(source: str, num_classes: int = 4) -> tuple[nn.Module, dict[str, Any]]:
    """A model in eval mode from a checkpoint path or a registry name; returns ``(model, info)``."""
    from smelib.models import build, names

    path = Path(source)
    if path.is_file():
        from smelib.checkpoint import CheckpointError, load_checkpoint

        try:
            model, meta = load_checkpoint(path)
        except CheckpointError as err:
            raise ExportError(str(err)) from None
        return model.eval(), {"kind": "checkpoint", "path": str(path), "model": meta.get("model_name"),
                              "num_classes": meta.get("num_classes"), "in_channels": meta.get("in_channels", 3),
                              # the exported graph takes images already normalised with these
                              "normalization": meta.get("normalization")}
    if source in names():
        torch.manual_seed(0)
        model = build(source, num_classes=num_classes).eval()
        return model, {"kind": "registry (random init, seed 0)", "model": source, "num_classes": num_classes,
                       "in_channels": 3}
    if path.suffix in (".pt", ".pth") or "/" in source:
        raise ExportError(f"checkpoint {source!r} does not exist")
    raise ExportError(f"{source!r} is neither a checkpoint file nor a registered model (see `smelib models`)")


def _optional(name: str) -> tuple[Any, str | None]:
    try:
        return importlib.import_module(name), None
    except Exception as err:  # ImportError, or a broken install
        return None, f"{name} is not importable here ({type(err).__name__}: {err})"


def export_onnx(
    source: str | nn.Module,
    out: str | Path,
    size: tuple[int, int] = (200, 200),
    batch: int = 1,
    opset: int = 17,
    dynamic: bool = True,
    check: bool = True,
    atol: float = 1e-3,
    rewrite: bool = False,
    num_classes: int = 4,
) -> dict[str, Any]:
    """Export to ONNX and check it; returns a report (JSON-ready dict).

    Args:
        source: checkpoint path, registered model name, or a module (exported as is, in eval mode).
        out: the ``.onnx`` file to write (folders are created).
        size: ``(H, W)`` of the example input.
        batch: batch of the example input.
        opset: ONNX opset (>= 17).
        dynamic: batch, height and width as dynamic axes.
        check: run ``onnx.checker`` and the onnxruntime comparison where the packages are available.
        atol: largest allowed max abs difference between onnxruntime and PyTorch.
        rewrite: export the inference rewrites of :mod:`smelib.tools.optimize_inference` (BatchNorm folding, MSAA and
        star
            fusions) instead of the model as written (the same function; fewer nodes).

    Raises:
        ExportError: unknown source, failed export, checker failure, or a difference above ``atol``.
    """
    if opset < 17:
        raise ExportError(f"opset {opset} is below 17")
    if isinstance(source, nn.Module):
        model, info = source.eval(), {"kind": "module", "model": type(source).__name__}
    else:
        model, info = load_source(source, num_classes)
    in_channels = int(info.get("in_channels") or 3)
    h, w = size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, h, w, generator=gen)
    if rewrite:
        from smelib.tools.optimize_inference import OptimizeOptions, optimize_for_inference

        opts = OptimizeOptions(channels_last=False, compile=False)
        model = optimize_for_inference(model, opts, example=x[:1]).module.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_axes=axes if dynamic else None,
                              do_constant_folding=True)
    except Exception as err:
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {err}") from None
    report: dict[str, Any] = {"source": info, "out": str(out), "opset": opset, "size": [h, w], "batch": batch,
                              "dynamic_axes": axes if dynamic else None, "rewrite": rewrite,
                              "bytes": out.stat().st_size, "atol": atol}
    if not check:
        report["onnx_checker"] = report["onnxruntime"] = "skipped (check=False)"
        return report

    onnx, why = _optional("onnx")
    if onnx is None:
        report["onnx_checker"] = f"skipped: {why}"
    else:
        try:
            proto = onnx.load(str(out))
            onnx.checker.check_model(proto)
        except Exception as err:
            raise ExportError(f"onnx.checker rejected {out}: {err}") from None
        report["onnx_checker"] = f"passed (onnx {onnx.__version__})"
        report["nodes"] = len(proto.graph.node)

    ort, why = _optional("onnxruntime")
    if ort is None:
        report["onnxruntime"] = f"unavailable: {why}; no numerical check was run"
        return report
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = [x]
    if dynamic:
        h2, w2 = max(8, h - h // 4 + 3), max(8, w + w // 4 - 5)
        inputs.append(torch.randn(batch + 1, in_channels, h2, w2, generator=gen))
    diffs = {}
    for xi in inputs:
        with torch.no_grad():
            ref = model(xi).numpy()
        got = session.run(None, {"image": xi.numpy()})[0]
        key = "x".join(str(s) for s in xi.shape)
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} for input {key}")
        diffs[key] = float(abs(got - ref).max())
    report["onnxruntime"] = f"onnxruntime {ort.__version__}"
    report["max_abs_diff"] = diffs
    worst = max(diffs.values())
    report["passed"] = worst <= atol
    if not report["passed"]:
        raise ExportError(f"onnxruntime differs from PyTorch by {worst:.3g} > {atol} ({diffs})")
    return report
