"""The training commands end to end: ``smelib train / eval / predict / results / reproduce``, a VOC dataset with
3 classes and images of different sizes, and resume after SIGKILL ending bit-identical to an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TINY_MODEL, make_neu, make_voc, tiny_config, write_yaml
from PIL import Image

from smelib.checkpoint import read_checkpoint
from smelib.cli import main
from smelib.settings import repo_root, sample_root

METRIC_KEYS = {"miou", "iou", "precision", "recall", "mpa", "pixel_acc", "defects_only"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    neu = make_neu(root / "neu")
    config = write_yaml(root / "tiny.yaml", tiny_config(neu, train={"max_steps": 2}))
    return {"root": root, "neu": neu, "config": config}


@pytest.fixture(scope="module")
def trained(setup: dict[str, Path]) -> Path:
    """``smelib train`` once; returns the run directory."""
    out = setup["root"] / "run"
    assert main(["train", "--config", str(setup["config"]), "--out", str(out), "--seed", "3", "--quiet",
                 "optim.lr=3e-3"]) == 0
    return out


def test_train_command_writes_a_run(trained: Path) -> None:
    record = json.loads((trained / "record.json").read_text())
    assert record["status"] == "completed" and record["seed"] == 3 and record["config"]["optim"]["lr"] == 3e-3
    assert record["config_name"] == "tiny" and record["steps_done"] == 2
    assert (trained / "checkpoints" / "best.pt").is_file() and (trained / "log.csv").is_file()
    assert (trained / "config.yaml").read_text().startswith("name: tiny")


def test_train_refuses_to_overwrite_and_bad_input(setup: dict[str, Path], trained: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "train", "--config", setup["config"], "--out", trained, "--quiet")
    assert code == 2 and "not empty" in err and "--resume" in err
    code, _, err = _run(capsys, "train", "--config", setup["config"], "--out", setup["root"] / "fresh", "--resume")
    assert code == 2 and "cannot resume" in err
    code, _, err = _run(capsys, "train", "--config", setup["config"], "optim.lrr=1")
    assert code == 2 and "did you mean 'optim.lr'" in err
    code, _, err = _run(capsys, "train", "--config", setup["config"], "--data-root", setup["root"] / "nowhere",
                        "--out", setup["root"] / "nowhere_run")
    assert code == 2 and "nowhere" in err
    code, _, err = _run(capsys, "train", "--out", setup["root"] / "x")
    assert code == 2 and "--config" in err


def test_eval_json(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = trained / "checkpoints" / "best.pt"
    code, out, _ = _run(capsys, "eval", "--checkpoint", ckpt, "--json")
    assert code == 0
    metrics = json.loads(out)
    assert METRIC_KEYS <= set(metrics) and metrics["split"] == "test" and metrics["images"] == 4
    assert len(metrics["iou"]) == 4 and all(v is None or 0 <= v <= 1 for v in metrics["iou"])
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["defects_only"]["miou"] <= 1
    code, out, _ = _run(capsys, "eval", "--checkpoint", ckpt, "--json", "--tta", "--split", "val")
    tta = json.loads(out)
    assert code == 0 and tta["tta"] is True and tta["split"] == "val" and sum(map(sum, tta["confusion"])) > 0
    code, out, _ = _run(capsys, "eval", "--checkpoint", ckpt)
    assert code == 0 and "mean (defects only)" in out
    code, _, err = _run(capsys, "eval", "--checkpoint", trained / "nope.pt")
    assert code == 2 and "does not exist" in err


def test_eval_record_states_what_was_evaluated_and_is_never_overwritten(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = trained / "checkpoints" / "best.pt"
    path = tmp_path / "headroom" / "tta.json"
    code, out, _ = _run(capsys, "eval", "--checkpoint", ckpt, "--tta", "--json", "--record", path)
    assert code == 0
    rec = json.loads(path.read_text())
    assert rec["kind"] == "evaluation" and rec["tta"] is True and rec["subset"] == "test" and rec["images"] == 4
    assert rec["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    # the weights by hash and in words (the run and epoch by default): a path can later hold other weights
    assert rec["weights"] == {"sha256": rec["checkpoint_sha256"],
                              "label": f"run {rec['run_id']}, epoch index {rec['epoch']}"}
    labelled = tmp_path / "headroom" / "labelled.json"
    assert _run(capsys, "eval", "--checkpoint", ckpt, "--record", labelled, "--weights-label", "tiny, 1 epoch")[0] == 0
    assert json.loads(labelled.read_text())["weights"]["label"] == "tiny, 1 epoch"
    labelled.unlink()
    assert rec["run_id"] and rec["decision"] == {"mode": "argmax"} and rec["wall_seconds"] > 0
    assert rec["class_names"] == ["background", "inclusion", "patches", "scratches"]
    assert rec["metrics"]["miou"] == pytest.approx(json.loads(out)["miou"]) and "commit" in rec["git"]
    before = path.read_text()
    code, _, err = _run(capsys, "eval", "--checkpoint", ckpt, "--record", path)
    assert code == 2 and "exists" in err and path.read_text() == before
    code, _, err = _run(capsys, "eval", "--checkpoint", ckpt, "--record", tmp_path / "tta.txt")
    assert code == 2 and ".json" in err and not (tmp_path / "tta.txt").exists()
    from smelib.study.results import load_eval_records

    assert [(r["file"], r["tta"]) for r in load_eval_records(path.parent)] == [("tta", True)]
    (path.parent / "stray.json").write_text('{"kind": "run"}')
    with pytest.raises(ValueError, match=r"stray\.json.*not an evaluation record"):
        load_eval_records(path.parent)


def test_predict_writes_masks_and_refuses_to_overwrite(trained: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in {"a": (48, 48), "b": (30, 70)}.items():
        pixels = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{name}.jpg")
    ckpt = trained / "checkpoints" / "best.pt"
    out = tmp_path / "pred"
    code, _, _ = _run(capsys, "predict", "--checkpoint", ckpt, images, "--out", out)
    assert code == 0
    for name, shape in {"a": (48, 48), "b": (30, 70)}.items():
        mask = np.asarray(Image.open(out / f"{name}.png"))
        assert mask.shape == shape and mask.max() < 4
        assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (*shape, 3)
    before = (out / "a.png").stat().st_mtime_ns
    code, _, err = _run(capsys, "predict", "--checkpoint", ckpt, images / "a.jpg", "--out", out)
    assert code == 2 and "--force" in err and (out / "a.png").stat().st_mtime_ns == before
    assert _run(capsys, "predict", "--checkpoint", ckpt, images / "a.jpg", "--out", out, "--force")[0] == 0
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = _run(capsys, "predict", "--checkpoint", ckpt, images, "--out", tmp_path / "pred2")
    assert code == 2 and "broken.jpg" in err and not (tmp_path / "pred2").exists()


def test_results_command(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "summary.csv"
    code, out, _ = _run(capsys, "results", "--runs", trained.parent, "--csv", csv_path)
    assert code == 0 and "tiny" in out and "sme_deeplabv3plus_lite" in out
    header = csv_path.read_text().splitlines()[0].split(",")
    for key in ("config", "model", "split", "n_seeds", "miou_mean", "miou_std", "precision_mean", "mpa_mean",
                "recall_mean", "iou_scratches_mean", "miou_defects_mean", "gmacs", "params_m", "train_minutes"):
        assert key in header
    # --missing: a queue of train commands on stdout (the tiny run is no protocol of the plan, so all are missing)
    from smelib.study.plan import OPTION_RUNS, REQUIRED_RUNS

    code, out, err = _run(capsys, "results", "--runs", trained.parent, "--missing")
    lines = out.splitlines()
    assert code == 0 and len(lines) == sum(r.n_seeds for r in REQUIRED_RUNS) + 3 * len(OPTION_RUNS)
    assert all(line.startswith("smelib train --config configs/cpu_budget.yaml --model ") for line in lines)
    assert sum("name=cpu_budget_prior model_init.classifier_prior=true" in line for line in lines) == 3
    assert "grouped sme_deeplabv3plus seed 0: no earlier run of this model to time" in err


def test_voc_dataset_with_three_classes_and_mixed_sizes(setup: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    sizes = [(40, 56), (56, 40), (48, 48), (36, 60), (52, 44), (44, 52), (40, 40), (60, 36)] * 2
    voc = make_voc(tmp_path / "voc", sizes, num_classes=3)
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "train", "--config", setup["config"], "--data-root", voc, "--num-classes", "3",
                             "--max-steps", "2", "--out", out, "--quiet")
    assert code == 0, err
    record = json.loads((out / "record.json").read_text())
    assert record["num_classes"] == 3 and record["class_names"] == ["background", "blob", "stripe"]
    assert record["split"]["train"] == 8 and record["steps_done"] == 2
    code, stdout, _ = _run(capsys, "eval", "--checkpoint", out / "checkpoints" / "best.pt", "--json")
    metrics = json.loads(stdout)
    assert code == 0 and len(metrics["iou"]) == 3
    # Every test pixel counted once, at each image's own size.
    assert sum(map(sum, metrics["confusion"])) == sum(h * w for h, w in sizes[12:])


@pytest.mark.slow
def test_reproduce_quick_on_the_bundled_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job (fine-tune the shipped checkpoint -> eval -> tables -> figure) on the real sample, shortened to
    2 steps; it writes into the git-ignored scratch/ folder, never into results/."""
    import smelib.settings

    assert (sample_root() / "images" / "training").is_dir()
    config, data = str(smelib.settings.repo_root() / "configs" / "quick.yaml"), str(sample_root())
    monkeypatch.setattr(smelib.settings, "repo_root", lambda: tmp_path)
    code, out, err = _run(capsys, "reproduce", "--quick", "--config", config, "--data-root", data, "--max-steps", "2",
                          "--quiet", "data.limit=8", "data.batch_size=4")
    assert code == 0, err
    assert not (tmp_path / "results").exists()
    run_dir = next((tmp_path / "scratch" / "runs").iterdir())
    assert run_dir.name.startswith("quick_sme_deeplabv3plus_lite_official_s0_")
    for name in ("record.json", "log.csv", "curves.png", "summary.csv", "eval_test.json"):
        assert (run_dir / name).is_file(), name
    assert "mean (defects only)" in out and "mIoU" in out
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["config"]["model"]["init"] == "sme_deeplabv3plus_lite_neuseg"
    # fine-tuned from the shipped weights, it segments defects after 2 steps (a random start predicts background)
    assert json.loads((run_dir / "eval_test.json").read_text())["miou"] > 0.5
    ref = json.loads((run_dir / "eval_test_sme_deeplabv3plus_lite_neuseg.json").read_text())
    assert ref["images"] == 8 and ref["miou"] > 0.5
    assert "before fine-tuning: the shipped checkpoint" in out and "optimistic" in out
    assert "started from the weights of sme_deeplabv3plus_lite_neuseg" in out


def test_model_init_must_fit_the_model(tmp_path: Path) -> None:
    from smelib.config import ConfigError
    from smelib.training import train

    cfg = tiny_config(tmp_path / "none", model={**TINY_MODEL, "init": "sme_deeplabv3plus_lite_neuseg"})
    make_neu(tmp_path / "none", n_train=8, n_test=2, size=32)
    with pytest.raises(ConfigError, match="weights do not fit|holds sme_deeplabv3plus_lite"):
        train(cfg, out=tmp_path / "r", quiet=True)


# ---------------------------------------------------------------------------------------------------------------
# Resume after SIGKILL


def _smelib(*args: object) -> list[str]:
    return [sys.executable, "-m", "smelib", *map(str, args)]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path) -> None:
    neu = make_neu(tmp_path / "neu", n_train=40, n_test=2, size=64)
    # 32 training images, batch 2: 16 steps per epoch, 2 epochs; a resumable checkpoint after every step.
    cfg = tiny_config(neu, data={"batch_size": 2, "val_fraction": 0.2},
                      train={"epochs": 2, "max_steps": None, "checkpoint_every_steps": 1, "test_at_end": False})
    config = write_yaml(tmp_path / "resume.yaml", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SMELIB_QUICK": "0"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_smelib("train", "--config", config, "--out", full, "--quiet"), env=env, check=True,
                   timeout=300)

    proc = subprocess.Popen(_smelib("train", "--config", config, "--out", killed, "--quiet"), env=env)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    try:
        while True:  # a mid-epoch checkpoint of the first epoch, after a few steps
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            if last.is_file():
                state = torch.load(last, map_location="cpu", weights_only=True)
                if state["global_step"] >= 3 and not state["epoch_complete"]:
                    break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    interrupted = read_checkpoint(last)
    assert 3 <= interrupted["global_step"] < 32, interrupted["global_step"]
    stopped = json.loads((killed / "record.json").read_text())
    # the record follows the checkpoints (it is written right after each one, so the kill may fall in between)
    assert stopped["status"] == "running"
    assert interrupted["global_step"] - 1 <= stopped["steps_done"] <= interrupted["global_step"]

    subprocess.run(_smelib("train", "--config", config, "--out", killed, "--resume", "--quiet"), env=env,
                   check=True, timeout=300)
    a, b = read_checkpoint(full / "checkpoints" / "last.pt"), read_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 32
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    record = json.loads((killed / "record.json").read_text())
    assert record["status"] == "completed" and record["epochs_done"] == 2
    # each process's share of the run: the killed one up to its last checkpoint, the resumed one the rest
    first, second = record["segments"]
    assert (first["steps_start"], first["steps_end"]) == (0, interrupted["global_step"])
    assert (second["steps_start"], second["steps_end"]) == (interrupted["global_step"], 32)
    assert first["git"] == second["git"] == record["git"] and second["host"]["cpu"] == record["host"]["cpu"]
    assert record["wall_seconds"] == pytest.approx(first["wall_seconds"] + second["wall_seconds"], abs=0.05)
    [whole] = json.loads((full / "record.json").read_text())["segments"]
    assert (whole["steps_start"], whole["steps_end"]) == (0, 32)
    # The weights really moved away from the seed's initialisation (the comparison is not vacuous).
    init = _initial_state(cfg)
    assert sum(not torch.equal(init[k], a["model"][k]) for k in init) > len(init) // 2


def _initial_state(cfg: dict) -> dict[str, torch.Tensor]:
    from smelib.config import resolve
    from smelib.runtime import seed_everything
    from smelib.training import build_model

    seed_everything(0)
    return build_model(resolve(cfg), 4).state_dict()


def test_repo_configs_exist() -> None:
    for name in ("quick", "cpu_budget", "paper"):
        assert (repo_root() / "configs" / f"{name}.yaml").is_file()
