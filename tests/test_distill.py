"""``train.distill``: pixel-wise knowledge distillation from a frozen teacher checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_helpers import make_neu, tiny_config
from smelib import training
from smelib.config import ConfigError, resolve
from smelib.losses import DistillationLoss


def test_the_loss_is_the_tempered_kl_over_labelled_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    teacher = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 0] = 255
    loss = DistillationLoss(temperature=3.0, ignore_index=255)(student, teacher, target)
    kl = F.kl_div(F.log_softmax(student / 3, 1), F.log_softmax(teacher / 3, 1), log_target=True,
                  reduction="none").sum(1)
    valid = target != 255
    assert loss.item() == pytest.approx(9 * kl[valid].mean().item(), rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad[0, :, 0].abs().max() == 0  # ignored pixels pull nothing
    same = DistillationLoss(2.0)(teacher, teacher, target)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(0.0)
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationLoss()(student, teacher[:, :3], target)


@pytest.mark.parametrize("spec, key", [
    ({"teacher": "t.pt"}, "train.distill"),
    ({"teacher": "", "temperature": 2.0, "weight": 1.0}, "train.distill.teacher"),
    ({"teacher": "t.pt", "temperature": 0, "weight": 1.0}, "train.distill.temperature"),
    ({"teacher": "t.pt", "temperature": 2.0, "weight": -1}, "train.distill.weight"),
])
def test_a_bad_spec_is_a_config_error_naming_its_key(spec: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve({"train": {"distill": spec}})


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"), n_train=12, n_test=4, size=32)


def test_a_student_learns_from_the_teacher_and_records_it(neu: Path, tmp_path: Path) -> None:
    teacher = training.train(tiny_config(neu, train={"max_steps": 3}), out=tmp_path / "teacher", quiet=True)
    spec = {"teacher": str(teacher.checkpoint), "temperature": 2.0, "weight": 1.0}
    student = training.train(tiny_config(neu, train={"max_steps": 3, "distill": spec}), out=tmp_path / "s",
                             quiet=True)
    plain = training.train(tiny_config(neu, train={"max_steps": 3}), out=tmp_path / "p", quiet=True)
    assert student.record["teacher"]["run_id"] == teacher.record["run_id"]
    assert len(student.record["teacher"]["sha256"]) == 64
    # same seed, same batches: only the distillation term separates the two losses
    assert student.history[0]["train_loss"] > plain.history[0]["train_loss"]
    assert "teacher" not in plain.record
    weightless = {**spec, "weight": 0.0}
    again = training.train(tiny_config(neu, train={"max_steps": 3, "distill": weightless}), out=tmp_path / "w",
                           quiet=True)
    assert again.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-6)


def test_a_missing_teacher_is_one_clear_error(neu: Path, tmp_path: Path) -> None:
    spec = {"teacher": str(tmp_path / "nowhere.pt"), "temperature": 2.0, "weight": 1.0}
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher.*nowhere\.pt"):
        training.train(tiny_config(neu, train={"max_steps": 1, "distill": spec}), out=tmp_path / "s", quiet=True)
