"""Engine tests: training runs and their records, overfitting, checkpoints (weights_only, mismatches), evaluation,
TTA, prediction, the NaN stop, AMP/channels_last code paths on CPU, the schedule, data order, results tables."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import NaNAtCall, make_neu, tiny_config
from torch import nn

from smelib import inference
from smelib import training as engine
from smelib.checkpoint import CheckpointError, atomic_save, load_checkpoint, read_checkpoint
from smelib.config import ConfigError, resolve
from smelib.distributed import DistContext, shard
from smelib.data.loading import epoch_batches, load_data
from smelib.optim import LRSchedule
from smelib.records import LOG_COLUMNS, RECORD_KEYS, RunDirError, create_run_dir
from smelib.study.results import DIRTY_MARK, format_summary, is_dirty, load_records, summarize, write_csv


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"))


@pytest.fixture(scope="module")
def run(neu: Path, tmp_path_factory: pytest.TempPathFactory) -> engine.RunResult:
    """One 3-step run (one epoch: 12 training images, batch 4) shared by several tests."""
    return engine.train(tiny_config(neu), runs_dir=tmp_path_factory.mktemp("runs"), quiet=True)


# ---------------------------------------------------------------------------------------------------------------
# A run and its record


def test_record_has_every_key_and_consistent_values(run: engine.RunResult) -> None:
    rec = json.loads((run.run_dir / "record.json").read_text())
    assert set(RECORD_KEYS) <= set(rec), set(RECORD_KEYS) - set(rec)
    assert rec["status"] == "completed"
    assert rec["steps_done"] == 3 and rec["epochs_done"] == 1
    assert rec["split"] == {**rec["split"], "kind": "official", "train": 12, "val": 4, "test": 4}
    assert rec["model"] == "sme_deeplabv3plus_lite" and rec["model_config"]["decoder_width"] == 16
    assert rec["params"] == sum(p.numel() for p in load_checkpoint(run.checkpoint)[0].parameters())
    assert rec["gmacs"] > 0 and rec["input_size"] == [48, 48]
    assert rec["images_per_s"] > 0 and rec["wall_seconds"] >= rec["train_seconds"] > 0
    assert rec["torch_version"] == torch.__version__ and rec["host"]["cpu_cores"] >= 1
    assert isinstance(rec["host"]["reuse_freed_memory"], bool)
    # train.channels_last: auto trains NHWC on every device; the layout a run used is recorded.
    assert rec["config"]["train"]["channels_last"] == "auto" and rec["host"]["channels_last"] is True
    assert set(rec["host"]["thread_env"]) <= {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                               "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY", "KMP_BLOCKTIME"}
    assert set(rec["git"]) == {"commit", "dirty"}
    assert set(rec["host"]["cpu_flags"]) <= {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile",
                                             "avx512_vnni"}
    if Path("/proc/stat").exists():
        assert 0.0 <= rec["cpu_steal_fraction"] <= 1.0
        assert 0.0 <= rec["cpu_others_fraction"] <= 1.0
        assert 0.0 <= rec["segments"][-1]["cpu_others_fraction"] <= 1.0
    else:
        assert rec["cpu_steal_fraction"] is None and rec["cpu_others_fraction"] is None
    # Final metrics on val and test, both conventions (background included, defects only).
    for part in ("val", "test"):
        m = rec["final"][part]
        assert len(m["iou"]) == 4 and 0 <= m["miou"] <= 1 and 0 <= m["defects_only"]["miou"] <= 1
        assert sum(map(sum, m["confusion"])) == (4 * 48 * 48)
    # The checkpoint's hash is that of the file on disk.
    assert rec["checkpoint"]["sha256"] == hashlib.sha256(Path(rec["checkpoint"]["path"]).read_bytes()).hexdigest()
    assert run.run_dir.name.startswith("tiny_sme_deeplabv3plus_lite_official_s0_")


def test_log_csv_has_one_row_per_epoch(run: engine.RunResult) -> None:
    with open(run.run_dir / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert len(rows) == 1 and int(rows[0]["epoch"]) == 1 and int(rows[0]["step"]) == 3
    assert math.isfinite(float(rows[0]["train_loss"])) and 0 <= float(rows[0]["val_miou"]) <= 1


def test_run_directories_are_never_reused(run: engine.RunResult, neu: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not empty"):
        engine.train(tiny_config(neu), out=run.run_dir, quiet=True)
    a, b = create_run_dir(tmp_path, "same"), create_run_dir(tmp_path, "same")
    assert a != b and a.is_dir() and b.is_dir()


def test_overfit_one_batch(neu: Path, tmp_path: Path) -> None:
    """One fixed batch (4 images, no augmentation) for 20 steps: the loss must fall well below its start."""
    cfg = tiny_config(neu, data={"limit": 4, "augment": None, "batch_size": 4},
                      optim={"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
                      schedule={"name": "constant", "warmup_epochs": 0},
                      train={"epochs": 20, "max_steps": None, "val_every": 0, "test_at_end": False,
                             "checkpoint_every_steps": 0})
    result = engine.train(cfg, out=tmp_path / "overfit", quiet=True)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 20
    print("overfit losses", [round(v, 3) for v in losses])
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(run: engine.RunResult) -> None:
    raw = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)
    assert raw["format"] == "smelib-checkpoint" and raw["global_step"] == 3
    assert set(raw["rng"]) == {"python", "numpy", "torch", "cuda"}
    model, meta = load_checkpoint(run.checkpoint)
    assert meta["model_name"] == "sme_deeplabv3plus_lite" and meta["num_classes"] == 4
    assert meta["class_names"] == ["background", "inclusion", "patches", "scratches"]
    saved = read_checkpoint(run.checkpoint)["model"]
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


def test_checkpoint_mismatches_give_clear_errors(run: engine.RunResult, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds model 'sme_deeplabv3plus_lite', not 'sme_deeplabv3plus'"):
        load_checkpoint(run.checkpoint, model_name="sme_deeplabv3plus")
    with pytest.raises(CheckpointError, match="trained for 4 classes, not 3"):
        load_checkpoint(run.checkpoint, num_classes=3)
    # Weights of one width put into a model of another: a shape mismatch, named.
    ckpt = read_checkpoint(run.checkpoint)
    ckpt["model_config"]["decoder_width"] = 24
    atomic_save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "wrong.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an smelib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    # A pickle that would run code is refused by weights_only=True.
    torch.save({"format": "smelib-checkpoint", "evil": nn.ReLU()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation, TTA, prediction


def test_evaluate_checkpoint_metrics_in_range(run: engine.RunResult) -> None:
    meta = load_checkpoint(run.checkpoint)[1]
    test = load_data(meta["config"]).test
    metrics = inference.evaluate(run.checkpoint, test).to_dict()
    for key in ("miou", "iou", "precision", "recall", "mpa", "pixel_acc", "defects_only"):
        assert key in metrics
    assert all(v is None or 0 <= v <= 1 for v in metrics["iou"])
    assert 0 <= metrics["pixel_acc"] <= 1 and metrics["mpa"] == metrics["recall"]
    # The engine's final test metrics were computed with the same checkpoint: identical counts.
    assert metrics["confusion"] == run.record["final"]["test"]["confusion"]


class _Pointwise(nn.Module):
    """A 1x1 convolution: commutes with every flip and rotation, so TTA must change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.num_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_tta_inverts_each_transform() -> None:
    torch.manual_seed(0)
    model = _Pointwise().eval()
    x = torch.randn(2, 3, 20, 28)  # non-square: a wrong inverse would not even have the right shape
    plain = inference.predict_proba(model, x)
    tta = inference.predict_proba(model, x, tta=True)
    assert tta.shape == (2, 4, 20, 28)
    torch.testing.assert_close(tta, plain, atol=1e-6, rtol=0)
    # A model that is not rotation-equivariant gives a different (averaged) answer with TTA.
    model.conv = nn.Conv2d(3, 4, (1, 5), padding=(0, 2))
    assert not torch.allclose(inference.predict_proba(model, x, tta=True), inference.predict_proba(model, x), atol=1e-4)


def test_predict_returns_masks_at_each_image_size(run: engine.RunResult, tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for i, (h, w) in enumerate([(48, 48), (37, 61)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w), dtype=np.uint8)).save(p)
        paths.append(p)
    masks = inference.predict(run.checkpoint, paths)
    assert [m.shape for m in masks] == [(48, 48), (37, 61)]
    assert all(m.dtype == np.uint8 and m.max() < 4 for m in masks)


# ---------------------------------------------------------------------------------------------------------------
# Failure handling and CPU code paths


def test_nan_loss_stops_and_keeps_last_good_checkpoint(neu: Path, tmp_path: Path, monkeypatch) -> None:
    real = engine.build_loss
    monkeypatch.setattr(engine, "build_loss", lambda *a, **kw: NaNAtCall(real(*a, **kw), at=3))
    cfg = tiny_config(neu, train={"max_steps": 5, "checkpoint_every_steps": 1, "epochs": 2})
    with pytest.raises(engine.TrainingDiverged, match="non-finite loss .* at step 3"):
        engine.train(cfg, out=tmp_path / "nan", quiet=True)
    last = read_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    record = json.loads((tmp_path / "nan" / "record.json").read_text())
    assert record["status"] == "diverged" and "non-finite loss" in record["error"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_code_paths_run_on_cpu(neu: Path, tmp_path: Path, amp: str) -> None:
    cfg = tiny_config(neu, train={"max_steps": 2, "amp": amp, "channels_last": True, "grad_clip": 1.0,
                                  "test_at_end": False, "checkpoint_every_steps": 0})
    result = engine.train(cfg, out=tmp_path / amp, quiet=True)
    assert math.isfinite(result.history[0]["train_loss"])
    scaler = read_checkpoint(result.last_checkpoint)["scaler"]
    assert bool(scaler) == (amp == "fp16")  # GradScaler only for fp16


def test_bad_config_is_refused_before_any_work(neu: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.batch_size=64 is larger than the 12 training images"):
        engine.train(tiny_config(neu, data={"batch_size": 64}), out=tmp_path / "big", quiet=True)
    with pytest.raises(ConfigError, match="optim.lr"):
        engine.train(tiny_config(neu, optim={"lr": -1.0}), out=tmp_path / "neg", quiet=True)


# ---------------------------------------------------------------------------------------------------------------
# Schedule, data order, sharding


def test_schedule_warmup_cosine_and_poly() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cos = LRSchedule(opt, 1.0, total_steps=11, warmup_steps=2, name="cosine", warmup_start_ratio=0.1,
                     min_lr_ratio=0.01)
    assert [round(cos.lr(s), 6) for s in (0, 1, 2)] == [0.1, 0.55, 1.0]
    assert cos.lr(10) == pytest.approx(0.01) and cos.lr(6) == pytest.approx(0.505)
    poly = LRSchedule(opt, 2.0, total_steps=5, warmup_steps=0, name="poly", min_lr_ratio=0.0, power=1.0)
    assert [poly.lr(s) for s in range(5)] == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])
    cos.step_count = 2
    assert cos.apply() == 1.0 and opt.param_groups[0]["lr"] == 1.0


def test_epoch_order_is_seeded_and_shards_partition_the_batch() -> None:
    a, b = epoch_batches(10, 4, seed=0, epoch=0), epoch_batches(10, 4, seed=0, epoch=0)
    assert a == b and len(a) == 2 and len({i for batch in a for i in batch}) == 8  # last partial batch dropped
    assert epoch_batches(10, 4, seed=0, epoch=1) != a and epoch_batches(10, 4, seed=1, epoch=0) != a
    parts = [shard(a[0], DistContext(rank=r, world_size=2)) for r in range(2)]
    assert parts[0] + parts[1] == a[0] and len(parts[0]) == 2


# ---------------------------------------------------------------------------------------------------------------
# Results tables


def _fake_record(seed: int, miou: float, status: str = "completed", config: str = "c", epochs: int = 3) -> dict:
    metrics = {"miou": miou, "iou": [0.9, miou, miou, miou], "precision": 0.5, "recall": 0.6, "mpa": 0.6,
               "pixel_acc": 0.9, "defects_only": {"miou": miou - 0.1}}
    return {"run_id": f"r{seed}{status}", "status": status, "config_name": config, "model": "m",
            "split": {"kind": "official"}, "seed": seed, "epochs": epochs, "class_names": ["background", "a", "b", "c"],
            "final": {"test": metrics}, "gmacs": 1.5, "params_m": 2.0, "wall_seconds": 120.0,
            "finished_utc": f"2025-01-0{seed + 1}"}


def test_summarize_means_and_stds_over_seeds(tmp_path: Path) -> None:
    rows = summarize([_fake_record(0, 0.5), _fake_record(1, 0.7), _fake_record(2, 0.1, status="diverged"),
                      _fake_record(0, 0.9, config="other")])
    assert [(r["config"], r["n_seeds"]) for r in rows] == [("c", 2), ("other", 1)]
    row = rows[0]
    assert row["miou_mean"] == pytest.approx(0.6) and row["miou_std"] == pytest.approx(math.sqrt(0.02))
    assert row["iou_a_mean"] == pytest.approx(0.6) and row["miou_defects_mean"] == pytest.approx(0.5)
    assert row["iou_a_std"] == pytest.approx(math.sqrt(0.02)) and row["iou_background_std"] == pytest.approx(0.0)
    assert rows[1]["iou_a_std"] is None  # one seed: no spread
    assert row["train_minutes"] == pytest.approx(2.0) and rows[1]["miou_std"] is None
    for key in ("precision_mean", "mpa_mean", "recall_mean", "gmacs", "params_m", "iou_background_mean"):
        assert key in row
    assert "60.00 ± 14.14" in format_summary(rows)
    # Records without host fields say so; two kinds of machine are both named, never averaged out of sight.
    assert row["hosts"] == "unknown" and row["cpu_steal_mean"] is None
    a, b = _fake_record(0, 0.5), _fake_record(1, 0.7)
    a["host"] = {"cpu": "Xeon", "cpu_flags": ["avx2", "avx512f"], "cpu_cores": 2}
    b["host"], b["cpu_steal_fraction"] = {"cpu": "EPYC", "cpu_flags": ["avx2"], "cpu_cores": 2}, 0.4
    mixed = summarize([a, b])[0]
    assert mixed["hosts"] == "EPYC [avx2] x2 | Xeon [avx512] x2" and mixed["cpu_steal_mean"] == pytest.approx(0.4)
    # A run made from a tree with uncommitted changes is counted and marked, in the CSV and in the text table.
    assert row["dirty_runs"] == 0 and not is_dirty(row) and DIRTY_MARK not in format_summary(rows)
    a["git"], b["git"] = {"commit": "x", "dirty": True}, {"commit": "x", "dirty": False}
    [flagged] = summarize([a, b])
    assert flagged["dirty_runs"] == 1 and is_dirty(flagged) and is_dirty({"dirty_runs": "1"})
    assert f"60.00 ± 14.14 {DIRTY_MARK}" in format_summary([flagged])
    write_csv([flagged], tmp_path / "summary.csv")
    with open(tmp_path / "summary.csv", encoding="utf-8") as fh:
        assert is_dirty(next(csv.DictReader(fh)))
    # A seed re-trained for more epochs under the same config name is its own row, not a replacement.
    longer = summarize([_fake_record(0, 0.5), _fake_record(1, 0.7), _fake_record(0, 0.8, epochs=6)])
    assert [(r["epochs"], r["n_seeds"], round(r["miou_mean"], 6)) for r in longer] == [(3, 2, 0.6), (6, 1, 0.8)]
    # Round trip through record files.
    for rec in (_fake_record(0, 0.5), _fake_record(1, 0.7)):
        (tmp_path / rec["run_id"]).mkdir()
        (tmp_path / rec["run_id"] / "record.json").write_text(json.dumps(rec))
    assert summarize(load_records(tmp_path))[0]["miou_mean"] == pytest.approx(0.6)
    # A damaged record is an error that names it, never a run silently left out of the tables.
    (tmp_path / "broken_run").mkdir()
    (tmp_path / "broken_run" / "record.json").write_text('{"run_id": "broken_run", "final": ')
    with pytest.raises(ValueError, match=r"broken_run/record\.json.*cannot be read"):
        load_records(tmp_path)
    (tmp_path / "broken_run" / "record.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a JSON object but a list"):
        load_records(tmp_path)
    (tmp_path / "broken_run" / "record.json").unlink()
    text = write_csv(rows, tmp_path / "summary.csv").read_text()
    assert text.splitlines()[0].startswith("config,model,split,")


def test_resolve_rejects_unknown_model_override(neu: Path, tmp_path: Path) -> None:
    cfg = resolve(tiny_config(neu, train={"max_steps": 1}))
    cfg["model"]["overrides"]["no_such_argument"] = 1
    with pytest.raises(ConfigError, match="does not accept"):
        engine.train(cfg, out=tmp_path / "x", quiet=True)


def test_max_steps_compresses_the_schedule() -> None:
    from smelib.optim import build_schedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = resolve({"optim": {"lr": 1.0}, "schedule": {"warmup_epochs": 1, "min_lr_ratio": 0.01},
                   "train": {"epochs": 10, "max_steps": 20}})
    sched = build_schedule(cfg, opt, steps_per_epoch=100)
    assert sched.total_steps == 20 and sched.warmup_steps == 2  # 1 of 10 epochs -> 2 of 20 steps
    assert sched.lr(2) == pytest.approx(1.0) and sched.lr(19) == pytest.approx(0.01)
    full = build_schedule(resolve({**cfg, "train": {"epochs": 10, "max_steps": None}}), opt, 100)
    assert full.total_steps == 1000 and full.warmup_steps == 100


def test_worker_processes_do_not_change_the_result(neu: Path, tmp_path: Path) -> None:
    """Augmentation is seeded per sample from (seed, epoch, index): loading in 2 worker processes gives the
    same weights, bit for bit, as loading in the main process."""
    states = []
    for workers in (0, 2):
        cfg = tiny_config(neu, data={"workers": workers}, train={"max_steps": 2, "val_every": 0,
                                                                 "test_at_end": False, "checkpoint_every_steps": 0})
        states.append(read_checkpoint(engine.train(cfg, out=tmp_path / f"w{workers}", quiet=True).last_checkpoint))
    assert all(torch.equal(states[0]["model"][k], states[1]["model"][k]) for k in states[0]["model"])
    assert states[0]["history"][0]["train_loss"] == states[1]["history"][0]["train_loss"]


def test_resume_refuses_a_different_config_and_continues_a_finished_run(run: engine.RunResult, neu: Path) -> None:
    with pytest.raises(ConfigError, match=r"these keys differ: optim.lr: 0.005 in the run, 0.001 now"):
        engine.train(tiny_config(neu, optim={"lr": 1e-3}), out=run.run_dir, resume=True, quiet=True)
    before = read_checkpoint(run.last_checkpoint)
    again = engine.train(None, out=run.run_dir, resume=True, quiet=True)  # already finished: nothing to add
    assert again.record["steps_done"] == 3 and len(again.history) == 1
    after = read_checkpoint(run.last_checkpoint)
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
