"""``train.progressive``: the first epochs train at a smaller size, the rest (and all evaluation) at data.size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine_helpers import make_neu, tiny_config
from smelib import training
from smelib.config import ConfigError, resolve
from smelib.data.loading import resize_pair


@pytest.mark.parametrize("spec, key", [
    ({"size": 128}, "train.progressive"),
    ({"size": 8, "epochs": 1}, "train.progressive.size"),
    ({"size": [64, 64, 3], "epochs": 1}, "train.progressive.size"),
    ({"size": 64, "epochs": 2}, "train.progressive.epochs"),  # not fewer than train.epochs
    ({"size": 64, "epochs": 0}, "train.progressive.epochs"),
])
def test_a_bad_spec_is_a_config_error_naming_its_key(spec: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve({"train": {"epochs": 2, "progressive": spec}})


def test_epoch_size_follows_the_spec() -> None:
    cfg = resolve({"train": {"epochs": 5, "progressive": {"size": 128, "epochs": 3}}})
    assert [training.epoch_size(cfg, e) for e in range(5)] == [(128, 128)] * 3 + [None] * 2
    cfg = resolve({"data": {"size": 256}, "train": {"epochs": 3, "progressive": {"size": [96, 64], "epochs": 1}}})
    assert [training.epoch_size(cfg, e) for e in range(3)] == [(96, 64), (256, 256), (256, 256)]
    assert training.epoch_size(resolve({}), 0) is None


def test_a_downscale_averages_the_image_and_keeps_mask_labels() -> None:
    image = torch.zeros(1, 4, 4)
    image[:, ::2, ::2] = 4.0  # one bright pixel per 2x2 block: skipping pixels would keep 4 or 0
    mask = torch.tensor([[0, 0, 1, 1]] * 4)
    small, small_mask = resize_pair(image, mask, (2, 2))
    assert small.mean().item() == pytest.approx(1.0, abs=0.05) and 0.5 < small.min() and small.max() < 1.5
    assert small_mask.tolist() == [[0, 1], [0, 1]] and small_mask.dtype == torch.int64


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"), n_train=12, n_test=4, size=32)


def test_the_model_trains_small_first_and_is_validated_at_full_size(neu: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, tuple[int, ...]]] = []
    real = training.build_model

    def spying_build(cfg, num_classes):
        model = real(cfg, num_classes)
        model.register_forward_pre_hook(
            lambda m, args: seen.append((m.training, tuple(int(v) for v in args[0].shape[-2:]))))
        return model

    monkeypatch.setattr(training, "build_model", spying_build)
    cfg = tiny_config(neu, train={"epochs": 3, "max_steps": None, "progressive": {"size": 16, "epochs": 2},
                                  "test_at_end": True})
    result = training.train(cfg, out=tmp_path / "r", quiet=True)
    train_sizes = [shape for training_mode, shape in seen if training_mode]
    eval_sizes = {shape for training_mode, shape in seen if not training_mode}
    steps = result.record["steps_per_epoch"]
    assert train_sizes == [(16, 16)] * (2 * steps) + [(32, 32)] * steps
    assert eval_sizes == {(32, 32)}
    assert len(result.history) == 3
