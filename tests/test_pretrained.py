"""Released checkpoints: fp16 weights, SHA256-verified before loading, usable wherever a path is."""

from __future__ import annotations

import pytest
import torch

from smelib import checkpoint as pretrained
from smelib.tools.release import make_release
from smelib.checkpoint import FORMAT, CheckpointError, atomic_save, load_checkpoint
from smelib.models import build


@pytest.fixture()
def training_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build("sme_deeplabv3plus_lite", context_width=32, decoder_width=32, low_level_width=16).eval()
    ckpt = {"format": FORMAT, "version": 1, "kind": "best", "run_id": "unit", "model_name": "sme_deeplabv3plus_lite",
            "model_config": dict(model.config), "num_classes": 4, "in_channels": 3,
            "class_names": ["background", "inclusion", "patches", "scratches"],
            "normalization": {"mean": [0.4455], "std": [0.2057]}, "model": model.state_dict(),
            "train_stats": {"class_pixel_fraction": [0.9, 0.03, 0.05, 0.02], "defect_area_q1": 0.04,
                            "defect_area_median": 0.1, "defect_area_q3": 0.16},
            "optimizer": {"state": {}, "param_groups": []}}
    path = atomic_save(ckpt, tmp_path / "best.pt")
    return path, model


@pytest.fixture()
def release_dir(tmp_path, monkeypatch):
    out = tmp_path / "releases"
    monkeypatch.setattr(pretrained, "MANIFEST", out / "manifest.json")
    return out


def test_release_is_fp16_listed_and_loads_by_name(training_checkpoint, release_dir) -> None:
    path, model = training_checkpoint
    entry = make_release(path, "unit_release", metrics={"test_miou": 0.5}, out_dir=release_dir)
    assert entry["bytes"] < path.stat().st_size  # no optimiser state, half-precision weights
    stored = torch.load(release_dir / "unit_release.pt", weights_only=True)
    assert stored["kind"] == "release" and "optimizer" not in stored
    assert all(v.dtype == torch.float16 for v in stored["model"].values() if v.is_floating_point())
    loaded, meta = load_checkpoint("unit_release")
    assert meta["class_names"][3] == "scratches"
    # the dynamic decision rule reads the training statistics: a release keeps them
    assert meta["train_stats"]["defect_area_q3"] == 0.16
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=2e-2)


def test_a_tampered_release_is_refused(training_checkpoint, release_dir) -> None:
    make_release(training_checkpoint[0], "unit_release", out_dir=release_dir)
    with (release_dir / "unit_release.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="SHA256"):
        load_checkpoint("unit_release")


def test_releases_are_never_overwritten_and_unknown_names_are_clear(training_checkpoint, release_dir) -> None:
    make_release(training_checkpoint[0], "unit_release", out_dir=release_dir)
    with pytest.raises(CheckpointError, match="exists already"):
        make_release(training_checkpoint[0], "unit_release", out_dir=release_dir)
    with pytest.raises(CheckpointError, match="unit_release"):
        pretrained.release_path("no_such_release")


def test_the_shipped_manifest_verifies() -> None:
    entries = pretrained.manifest(pretrained.RELEASE_DIR / "manifest.json")
    if not entries:
        pytest.skip("no checkpoint has been released yet")
    for name, entry in entries.items():
        path = pretrained.release_path(name, pretrained.RELEASE_DIR / "manifest.json")
        assert path.stat().st_size == entry["bytes"] <= 20 * 2**20
