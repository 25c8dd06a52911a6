"""ONNX export: round trip through onnxruntime (dynamic batch and spatial axes), checkpoints, errors."""

from __future__ import annotations

import json

import pytest
import torch

from smelib.cli import main
from smelib.tools.export import ExportError, export_onnx, load_source

onnx = pytest.importorskip("onnx",
                           reason="onnx is not installed: `pip install onnx onnxruntime` to run the export tests")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: no numerical ONNX check possible")


def test_export_round_trip_from_model_name(tmp_path) -> None:
    out = tmp_path / "lite.onnx"
    report = export_onnx("sme_deeplabv3plus_lite", out, size=(48, 64), batch=1)
    assert out.is_file() and report["bytes"] > 0
    assert report["onnx_checker"].startswith("passed")
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert len(report["max_abs_diff"]) == 2, "the export size and a second size (dynamic axes)"
    assert all(0 <= v <= 1e-3 for v in report["max_abs_diff"].values())
    assert report["passed"] is True
    # run it ourselves at a third shape
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model, _ = load_source("sme_deeplabv3plus_lite")
    x = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == (3, 4, 40, 56)
    assert abs(got - ref).max() < 1e-3


def test_export_from_checkpoint_and_rewrite(tmp_path) -> None:
    from smelib.checkpoint import CHECKPOINT_VERSION, FORMAT, atomic_save
    from smelib.models import build

    torch.manual_seed(3)
    model = build("sme_deeplabv3plus_lite", num_classes=3)
    for m in model.modules():  # trained-looking BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = {"format": FORMAT, "version": CHECKPOINT_VERSION, "model_name": "sme_deeplabv3plus_lite",
            "model_config": dict(model.config), "num_classes": 3, "in_channels": 3,
            "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3},
            "model": {k: v.clone() for k, v in model.state_dict().items()}}
    path = atomic_save(ckpt, tmp_path / "best.pt")
    report = export_onnx(str(path), tmp_path / "ck.onnx", size=(32, 32), rewrite=True)
    assert report["source"]["kind"] == "checkpoint" and report["source"]["num_classes"] == 3
    assert report["source"]["normalization"] == {"mean": [0.5] * 3, "std": [0.2] * 3}
    assert report["passed"]
    sess = ort.InferenceSession(str(tmp_path / "ck.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert abs(sess.run(None, {"image": x.numpy()})[0] - ref).max() < 1e-3, "the checkpoint's weights were exported"


def test_export_errors(tmp_path) -> None:
    with pytest.raises(ExportError, match="neither a checkpoint"):
        export_onnx("no_such_model", tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(str(tmp_path / "missing.pt"), tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="opset"):
        export_onnx("sme_deeplabv3plus_lite", tmp_path / "x.onnx", opset=11)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot load checkpoint"):
        export_onnx(str(bad), tmp_path / "x.onnx")


def test_export_detects_a_mismatch(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The numerical check can fail: corrupt the ONNX runtime's output."""
    real = ort.InferenceSession

    class Skewed:
        def __init__(self, *a, **k) -> None:
            self.s = real(*a, **k)

        def run(self, *a, **k):
            return [o + 0.01 for o in self.s.run(*a, **k)]

    monkeypatch.setattr(ort, "InferenceSession", Skewed)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx("sme_deeplabv3plus_lite", tmp_path / "x.onnx", size=(32, 32))


def test_cli_export(tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "sme_deeplabv3plus_lite", "--onnx", str(out), "--size", "32", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and report["passed"]
    assert main(["export", "nope", "--onnx", str(out)]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err
