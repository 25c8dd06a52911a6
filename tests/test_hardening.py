"""Faults found by probing the CLI with bad inputs, tampered files and killed processes: each gets one clear error
or the right result."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine_helpers import make_neu, make_voc, tiny_config
from smelib import records as R
from smelib import training
from smelib.checkpoint import DIGEST_KEY, CheckpointError, load_checkpoint, read_checkpoint, release_path
from smelib.cli import main
from smelib.config import ConfigError
from smelib.data import DatasetError, read_image

RELEASE = "sme_deeplabv3plus_lite_neuseg"


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"), n_train=12, n_test=4, size=32)


@pytest.fixture(scope="module")
def run(neu: Path, tmp_path_factory: pytest.TempPathFactory) -> training.RunResult:
    out = tmp_path_factory.mktemp("runs") / "r"
    return training.train(tiny_config(neu, train={"max_steps": 2, "checkpoint_every_steps": 1}), out=out, quiet=True)


def _flip_a_weight_bit(src: Path, dst: Path) -> None:
    """A copy of a checkpoint with one bit of one weight flipped, saved as torch would (the digest key kept)."""
    ckpt = torch.load(src, weights_only=True)
    # a 1-D tensor: its reshape is a view (channels_last conv weights would reshape into a copy)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() == 1 and v.numel() > 8)
    flat = ckpt["model"][name].reshape(-1)
    bits = flat.view(torch.int16) if flat.dtype == torch.float16 else flat.view(torch.int32)
    bits[3] ^= 1 << 9
    torch.save(ckpt, dst)


# ---------------------------------------------------------------------------------------------- 1. integrity


def test_every_written_checkpoint_carries_a_digest_that_loading_verifies(run: training.RunResult,
                                                                         tmp_path: Path) -> None:
    assert DIGEST_KEY in torch.load(run.last_checkpoint, weights_only=True)
    read_checkpoint(run.last_checkpoint)  # intact: loads
    bad = tmp_path / "best.pt"
    _flip_a_weight_bit(run.checkpoint, bad)
    with pytest.raises(CheckpointError, match="do not match the digest"):
        load_checkpoint(bad)
    with pytest.warns(UserWarning, match="without an integrity check"):
        read_checkpoint(bad, verify=False)


def test_a_tampered_copy_of_the_shipped_release_is_refused(tmp_path: Path) -> None:
    # The shipped release predates digests: its copy is checked against the package manifest's SHA-256.
    good = tmp_path / "copy.pt"
    shutil.copy(release_path(RELEASE), good)
    load_checkpoint(good)
    bad = tmp_path / "tampered.pt"
    _flip_a_weight_bit(release_path(RELEASE), bad)
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(bad)
    assert main(["eval", "--checkpoint", str(bad), "--limit", "2"]) == 2


class Payload:
    """Not a tensor nor plain data: what ``weights_only=True`` refuses to unpickle."""


def test_the_unsafe_load_advice_of_torch_is_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"format": "smelib-checkpoint", "x": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "weights_only=False" not in str(info.value) and "do not load it with pickle" in str(info.value)


# ---------------------------------------------------------------------------------------------- 2. predict outputs


def _gray(path: Path) -> Path:
    Image.fromarray((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)).save(path)
    return path


def test_predict_refuses_outputs_that_share_a_name_or_replace_an_input(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _gray(folder / "a.jpg")
    _gray(folder / "a_overlay.png")
    assert main(["predict", str(folder), "--checkpoint", RELEASE, "--out", str(tmp_path / "out")]) == 2
    assert "would both write a_overlay.png" in capsys.readouterr().err
    (folder / "a_overlay.png").unlink()
    _gray(folder / "b.png")
    # --out is the input folder: b's mask b.png would replace the input b.png, even with --force
    assert main(["predict", str(folder), "--checkpoint", RELEASE, "--out", str(folder), "--force"]) == 2
    assert "is an input image" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.png"]


def test_predict_writes_what_it_says_with_a_colour_key(tmp_path: Path, capsys) -> None:
    _gray(tmp_path / "x.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "x.jpg"), "--checkpoint", RELEASE, "--out", str(out), "--palette"]) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["legend.png", "x_mask.png", "x_overlay.png"]
    assert "inclusion = orange" in said and "wrote 2 files" in said
    mask = Image.open(out / "x_mask.png")
    assert mask.mode == "P" and np.asarray(mask).max() <= 3
    assert main(["predict", str(tmp_path / "x.jpg"), "--checkpoint", RELEASE, "--out", str(out / "legend.png")]) == 2
    assert "is a file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 3. resume threads


def test_resume_refuses_another_thread_count_unless_told(neu: Path, tmp_path: Path) -> None:
    cfg = tiny_config(neu, train={"max_steps": 2, "checkpoint_every_steps": 1, "epochs": 1})
    out = tmp_path / "r"
    training.train(cfg, out=out, quiet=True)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert last["threads"] == torch.get_num_threads()
    other = {**cfg, "train": {**cfg["train"], "threads": torch.get_num_threads() + 1}}
    try:
        with pytest.raises(ConfigError, match=f"trained with {last['threads']} intra-op threads"):
            training.train(other, out=out, resume=True, quiet=True)
        result = training.train(other, out=out, resume=True, quiet=True, allow_thread_change=True)
        assert result.record["status"] == "completed"
    finally:
        torch.set_num_threads(last["threads"])


# ---------------------------------------------------------------------------------------------- 4, 5, 8. eval


def test_eval_of_a_release_name_writes_its_record(tmp_path: Path) -> None:
    record = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", RELEASE, "--limit", "2", "--record", str(record)]) == 0
    rec = json.loads(record.read_text())
    assert rec["checkpoint_sha256"] == json.loads(
        (release_path(RELEASE).parent / "manifest.json").read_text())[RELEASE]["sha256"]


@pytest.mark.parametrize("limit", ["0", "-1", "two"])
def test_limit_must_be_a_positive_number(limit: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["eval", "--checkpoint", RELEASE, "--limit", limit])
    assert info.value.code == 2 and "--limit" in capsys.readouterr().err


def test_a_class_count_mismatch_is_refused(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path / "voc", [(32, 32)] * 4, num_classes=3)
    assert main(["eval", "--checkpoint", RELEASE, "--data-root", str(voc), "--split", "test"]) == 2
    assert "predicts 4 classes" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 6. run folders


def test_a_run_folder_is_locked_while_it_trains(tmp_path: Path) -> None:
    held = R.RunLock(tmp_path / "r").acquire()
    try:
        with pytest.raises(R.RunDirError, match="being trained by another process"):
            R.RunLock(tmp_path / "r").acquire()
        # A separate process sees the lock too (flock is per open file, not per process).
        code = ("import sys; from smelib.records import RunLock, RunDirError\n"
                "try:\n    RunLock(sys.argv[1]).acquire()\nexcept RunDirError:\n    sys.exit(3)\n")
        assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")]).returncode == 3
    finally:
        held.release()
    R.RunLock(tmp_path / "r").acquire().release()


def test_a_run_killed_before_its_first_checkpoint_can_be_restarted(neu: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    (out / "checkpoints").mkdir(parents=True)
    (out / "record.json").write_text(json.dumps({"status": "running", "steps_done": 0}))
    (out / "config.yaml").write_text("name: tiny\n")
    (out / "checkpoints" / ".last.pt.abc.tmp").write_bytes(b"half a checkpoint")
    result = training.train(tiny_config(neu, train={"max_steps": 1}), out=out, quiet=True)
    assert result.record["status"] == "completed"
    assert not list((out / "checkpoints").glob(".*.tmp"))
    # a folder holding a real run is still never reused
    with pytest.raises(R.RunDirError, match="not empty"):
        training.train(tiny_config(neu, train={"max_steps": 1}), out=out, quiet=True)


# ---------------------------------------------------------------------------------------------- 7. one-line errors


def test_cuda_on_a_cpu_build_is_one_line(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as info:
        main(["eval", "--checkpoint", RELEASE, "--device", "cuda"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "CUDA is not available" in err and "Traceback" not in err


def test_a_decompression_bomb_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    path = _gray(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 > 2 x 100: Pillow's bomb error
    with pytest.raises(DatasetError, match="huge.png: too large to decode safely"):
        read_image(path)
