"""``train.ema``: an exponential moving average of the weights, validated, saved and evaluated as the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine_helpers import make_neu, tiny_config
from smelib import inference, training
from smelib.checkpoint import load_checkpoint, read_checkpoint
from smelib.config import ConfigError, resolve
from smelib.optim import WeightEMA


def test_the_average_follows_its_formula_and_copies_integer_buffers() -> None:
    model = nn.BatchNorm1d(2)
    ema = WeightEMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(3.0)  # the average starts at 1.0
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.state["weight"], torch.full((2,), 0.75 * 1.0 + 0.25 * 3.0))
    assert int(ema.state["num_batches_tracked"]) == 7
    averaged = ema.averaged(model)
    assert torch.allclose(averaged.weight, torch.full((2,), 1.5))
    assert torch.allclose(model.weight, torch.full((2,), 3.0))  # the model itself is left as it is
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, 1.0)


def test_a_decay_outside_zero_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="train.ema"):
        resolve({"train": {"ema": 1.5}})
    assert resolve({})["train"]["ema"] is None


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"), n_train=12, n_test=4, size=32)


def test_the_average_is_what_is_saved_and_scored(neu: Path, tmp_path: Path) -> None:
    cfg = tiny_config(neu, train={"max_steps": 3, "checkpoint_every_steps": 1, "ema": 0.5})
    result = training.train(cfg, out=tmp_path / "r", quiet=True)
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt["ema_decay"] == 0.5
    assert any(not torch.equal(ckpt["model"][k], ckpt["train_model"][k]) for k in ckpt["model"]
               if ckpt["model"][k].is_floating_point())
    model, _ = load_checkpoint(result.checkpoint)  # the averaged weights
    bundle = training.load_data(result.record["config"], seed=0)
    metrics = inference.evaluate(model, bundle.test, num_classes=4, ignore_index=255,
                                 batch_size=8, channels_last=True)
    assert metrics.to_dict()["miou"] == pytest.approx(result.record["final"]["test"]["miou"])
    plain = training.train(tiny_config(neu, train={"max_steps": 3}), out=tmp_path / "p", quiet=True)
    assert "train_model" not in read_checkpoint(plain.checkpoint)


def test_the_raw_weights_are_validated_and_tested_beside_the_average(neu: Path, tmp_path: Path) -> None:
    """The average's effect is a paired difference on one trajectory: each epoch validates both, the record tests
    the best raw weights beside the best average."""
    cfg = tiny_config(neu, train={"epochs": 2, "ema": 0.5})
    result = training.train(cfg, out=tmp_path / "r", quiet=True)
    rows = result.history
    assert all("val_raw_miou" in row and "val_miou" in row for row in rows)
    raw = result.record["final"]["raw"]
    assert raw["checkpoint"] == "best_raw" and 0.0 <= raw["test"]["miou"] <= 1.0
    best_raw = read_checkpoint(tmp_path / "r" / "checkpoints" / "best_raw.pt")
    assert best_raw["best_raw"]["miou"] == max(row["val_raw_miou"] for row in rows)
    model, _ = load_checkpoint(tmp_path / "r" / "checkpoints" / "best_raw.pt")
    model.load_state_dict(best_raw["train_model"])
    bundle = training.load_data(result.record["config"], seed=0)
    metrics = inference.evaluate(model, bundle.test, num_classes=4, ignore_index=255, batch_size=8,
                                 channels_last=True)
    assert metrics.to_dict()["miou"] == pytest.approx(raw["test"]["miou"])
    plain = training.train(tiny_config(neu, train={"epochs": 1}), out=tmp_path / "p", quiet=True)
    assert "raw" not in plain.record["final"] and "val_raw_miou" not in plain.history[0]
