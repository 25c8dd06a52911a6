"""DDP: ``torchrun --standalone --nproc_per_node=2 -m smelib train`` (gloo on CPU, 127.0.0.1) against one process
with the same global batch.

What must match, and why it can: the two processes each take half of every global batch (a contiguous slice of
the epoch's seeded permutation), augment each sample from (seed, epoch, index) exactly as one process would, and
DDP averages their gradients. With a pixel-averaged loss (cross-entropy) over equally sized images without
ignored pixels, the mean of the two half-batch means *is* the full-batch mean, so the gradients agree up to
float32 summation order. Two things would break the equivalence and are switched off here: dropout (its random
masks differ by process) and batch statistics in BatchNorm (torch has no SyncBatchNorm on CPU; per-process
statistics over 2 images differ from those over 4), so BatchNorm runs on its running statistics
(``train.freeze_bn``). Dice is not decomposable over sub-batches either, hence CE.

Tolerance: after 2 SGD steps (lr 0.05, momentum 0.9) the weights may differ by float32 rounding of the gradient
reduction, ~1e-7 relative per step; we allow 1e-5 absolute, three orders of magnitude below the size of an
update (asserted too, so the comparison is not vacuous).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import make_neu, tiny_config, write_yaml

from smelib import runtime
from smelib import training as engine
from smelib.checkpoint import read_checkpoint
from smelib.config import resolve


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    neu = make_neu(tmp_path / "neu", n_train=16, n_test=2, size=48)
    overrides = {**tiny_config(neu)["model"]["overrides"], "dropout": [0.0, 0.0]}
    cfg = tiny_config(
        neu,
        model={"name": "sme_deeplabv3plus_lite", "overrides": overrides},
        data={"batch_size": 4, "augment": {"hflip": 0.5, "vflip": 0.5, "rot90": True}},
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
        schedule={"name": "constant", "warmup_epochs": 0},
        loss="ce",
        train={"epochs": 1, "max_steps": 2, "freeze_bn": True, "checkpoint_every_steps": 0, "test_at_end": True},
    )
    config = write_yaml(tmp_path / "ddp.yaml", cfg)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "SMELIB_QUICK": "0"}
    two = tmp_path / "two"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "smelib", "train", "--config", str(config),
         "--out", str(two), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = engine.train(resolve(cfg), out=tmp_path / "one", quiet=True)

    record = json.loads((two / "record.json").read_text())
    assert record["world_size"] == 2 and record["steps_done"] == 2 and record["status"] == "completed"
    a, b = read_checkpoint(one.last_checkpoint), read_checkpoint(two / "checkpoints" / "last.pt")
    # The logged loss is the mean over ranks, i.e. the global batch's loss.
    assert b["history"][0]["train_loss"] == pytest.approx(a["history"][0]["train_loss"], abs=1e-5)
    diffs = {k: (a["model"][k].double() - b["model"][k].double()).abs().max().item()
             for k in a["model"] if a["model"][k].is_floating_point()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, (worst, diffs[worst])
    # Not vacuous: the weights moved by far more than the tolerance.
    runtime.seed_everything(0)
    init = engine.build_model(resolve(cfg), 4).state_dict()
    moved = max((a["model"][k] - init[k]).abs().max().item() for k in init if init[k].is_floating_point())
    assert moved > 1e-3
    # Confusion matrices are summed over ranks: the test set is evaluated in full, not per shard.
    one_test, two_test = one.record["final"]["test"], record["final"]["test"]
    assert sum(map(sum, two_test["confusion"])) == sum(map(sum, one_test["confusion"])) == 2 * 48 * 48
    # Same predictions up to pixels whose two best logits are within float rounding of each other.
    assert (torch.tensor(two_test["confusion"]) - torch.tensor(one_test["confusion"])).abs().sum() <= 8
