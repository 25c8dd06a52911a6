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
    assert ema.current_decay() == pytest.approx(0.1)  # the warm-up: (1 + 0) / (10 + 0)
    ema.update(model)
    assert torch.allclose(ema.state["weight"], torch.full((2,), 0.1 * 1.0 + 0.9 * 3.0))
    assert int(ema.state["num_batches_tracked"]) == 7 and ema.updates == 1
    ema.updates = 1000  # past the warm-up, the decay is the one asked for
    assert ema.current_decay() == 0.75
    with torch.no_grad():
        model.weight.fill_(0.8)
    ema.update(model)
    assert torch.allclose(ema.state["weight"], torch.full((2,), 0.75 * 2.8 + 0.25 * 0.8))
    averaged = ema.averaged(model)
    assert torch.allclose(averaged.weight, torch.full((2,), 2.3))
    assert torch.allclose(model.weight, torch.full((2,), 0.8))  # the model itself is left as it is
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
    logged = (tmp_path / "r" / "log.csv").read_text().splitlines()
    assert "val_raw_miou" in logged[0].split(",") and len(logged) == 1 + len(rows)  # log.csv keeps the raw side
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


def test_a_resumed_run_continues_the_average_and_its_warm_up(neu: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(neu, data={"batch_size": 2}, train={"epochs": 1, "max_steps": None, "checkpoint_every_steps": 1,
                                                          "ema": 0.9, "test_at_end": False})
    whole = training.train(cfg, out=tmp_path / "whole", quiet=True)
    real, calls = training._train_step, []

    def stop_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a stop after two steps, each checkpointed
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(training, "_train_step", real)
    assert read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["ema_updates"] == 2
    resumed = training.train(None, out=tmp_path / "cut", resume=True, quiet=True)
    a, b = read_checkpoint(whole.last_checkpoint), read_checkpoint(resumed.last_checkpoint)
    assert a["ema_updates"] == b["ema_updates"] == a["global_step"] >= 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
