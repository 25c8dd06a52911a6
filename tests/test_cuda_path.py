"""The CUDA path, checked on the CPU (issue 43): precision choice by compute capability, the torch floor, precision
kept across a resume, the device of each process, CPU-only seeding, per-rank RNG states, the loss checked every N
steps, predictions with the evaluation's precision, DDP buffers, the bench peak's math mode, no per-call pinning,
host copies in the attention code, and ``smelib doctor`` without a GPU.

There is no GPU here: the CUDA queries (capability, availability, device count, ``set_device``) are mocked, and
what runs on CUDA only is exercised through the CPU code that decides it.
"""

from __future__ import annotations

import ast
import json
import warnings
import re
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import torch
from engine_helpers import NaNAtCall, make_neu, tiny_config
from torch import nn

from smelib import runtime
from smelib import training as engine
from smelib.checkpoint import read_checkpoint
from smelib.config import ConfigError
from smelib.data.loading import seeded
from smelib.distributed import DistContext
from smelib.inference import evaluate, predict_dataset
from smelib.metrics import ConfusionMatrix
from smelib.tools import bench
from smelib.tools.optimize_inference import OptimizeOptions, OptimizedModel

ROOT = Path(__file__).resolve().parents[1]
CUDA0 = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"))


def _capability(major: int, minor: int):
    return mock.patch.object(torch.cuda, "get_device_capability", return_value=(major, minor))


# ---------------------------------------------------------------------------------------------------------------
# 1. bf16 only at capability >= 8.0


@pytest.mark.parametrize("cap, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                           ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_amp_auto_chooses_bf16_only_on_native_hardware(cap: tuple[int, int], expected: torch.dtype) -> None:
    # is_bf16_supported() says yes on T4/V100 (emulation): it must not decide
    with _capability(*cap), mock.patch.object(torch.cuda, "is_bf16_supported", return_value=True):
        assert runtime.amp_dtype({"train": {"amp": "auto"}}, CUDA0) == expected
        dtype, why = runtime.choose_precision("bf16", CUDA0)
        assert dtype == expected and f"{cap[0]}.{cap[1]}" in why
        assert OptimizeOptions(amp="bf16").autocast_dtype(CUDA0) == expected  # bench --amp bf16
    assert runtime.amp_dtype({"train": {"amp": "auto"}}, torch.device("cpu")) is None


def test_eval_bf16_falls_back_to_fp16_on_an_old_gpu() -> None:
    from smelib.tools.commands import _eval_autocast

    with _capability(7, 0):
        assert _eval_autocast(True, CUDA0) == torch.float16
    with _capability(8, 6):
        assert _eval_autocast(True, CUDA0) == torch.bfloat16
    assert _eval_autocast(True, torch.device("cpu")) == torch.bfloat16 and _eval_autocast(False, CUDA0) is None


# ---------------------------------------------------------------------------------------------------------------
# 2. the torch floor


def test_torch_floor_has_grad_scaler_under_torch_amp() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"torch>=(\d+)\.(\d+)", d) for d in deps if d.startswith("torch"))
    # torch.amp.GradScaler (used by training and bench, with device "cpu") exists from 2.3
    assert floor is not None and (int(floor[1]), int(floor[2])) >= (2, 3)
    assert hasattr(torch.amp, "GradScaler")


# ---------------------------------------------------------------------------------------------------------------
# 3. precision in checkpoints, resume


def _steps(neu: Path, **train) -> dict:
    return tiny_config(neu, train={"max_steps": 2, "epochs": 2, "checkpoint_every_steps": 1, "test_at_end": False,
                                   "val_every": 0, **train})


def test_checkpoint_stores_precision_and_a_resume_keeps_it(neu: Path, tmp_path: Path) -> None:
    run = engine.train(_steps(neu), out=tmp_path / "r", quiet=True)
    ckpt = read_checkpoint(run.last_checkpoint)
    assert ckpt["precision"] == "fp32" and ckpt["scaler"] == {}
    assert run.record["precision"]["autocast"] == "fp32"
    # amp: auto resumed where auto would now choose fp16 (an old GPU): the checkpoint's fp32 is kept
    amp, why = engine._resume_precision(ckpt, "auto", torch.device("cpu"), torch.float16, "fp16 here")
    assert amp is None and "checkpoint's precision fp32" in why
    # a precision this device cannot keep changes with a warning, and the reason says so
    with _capability(7, 0), pytest.warns(UserWarning, match="from the checkpoint's bf16 to fp16"):
        amp, why = engine._resume_precision({"precision": "bf16"}, "bf16", CUDA0, torch.float16, "fallback")
    assert amp == torch.float16 and "changed from the checkpoint's bf16" in why


def test_resume_into_fp16_skips_the_empty_scaler_state(neu: Path, tmp_path: Path) -> None:
    """A fp32 checkpoint's scaler state is {}; loading it into an enabled (fp16) scaler used to raise
    ``RuntimeError: The source state dict is empty``."""
    run = engine.train(_steps(neu), out=tmp_path / "r", quiet=True)
    ckpt = read_checkpoint(run.last_checkpoint)
    model = engine.build_model(ckpt["config"], 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    schedule = mock.Mock()
    engine._restore(ckpt, ckpt["config"], 4, model, optimizer, scaler, schedule, engine._fresh_state())
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0


# ---------------------------------------------------------------------------------------------------------------
# 4. the device of each process


def test_cuda_n_is_refused_under_torchrun_and_each_rank_takes_its_gpu() -> None:
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        with pytest.raises(ConfigError, match="would put all 2 processes on one GPU"):
            runtime.resolve_device("cuda:1", local_rank=1, world_size=2)
        assert runtime.resolve_device("cuda", local_rank=1, world_size=2) == torch.device("cuda:1")
        assert runtime.resolve_device("auto", local_rank=1, world_size=2) == torch.device("cuda:1")
        assert runtime.resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.fixture
def global_flags():
    """Restore the process-wide flags setup_runtime changes (cuDNN modules' flags cannot be mock-patched)."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def test_single_process_run_sets_its_cuda_device(global_flags) -> None:
    cfg = {"train": {"threads": None, "deterministic": False}}
    with mock.patch.object(torch.cuda, "set_device") as set_device:
        runtime.setup_runtime(cfg, torch.device("cuda:1"))
    set_device.assert_called_once_with(torch.device("cuda:1"))


# ---------------------------------------------------------------------------------------------------------------
# 5. deterministic on CUDA is a stated limit


def test_deterministic_on_cuda_warns_that_it_is_not_exact(global_flags) -> None:
    cfg = {"train": {"threads": None, "deterministic": True}}
    with mock.patch.object(torch.cuda, "set_device"), \
            pytest.warns(UserWarning, match="GPU runs are not bit-reproducible"):
        runtime.setup_runtime(cfg, CUDA0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.setup_runtime(cfg, torch.device("cpu"))  # exact on the CPU: no warning


# ---------------------------------------------------------------------------------------------------------------
# 6. seeded() leaves the CUDA generators alone


def test_seeded_seeds_only_the_cpu_generator() -> None:
    with mock.patch.object(torch.cuda, "manual_seed_all") as cuda_seed, \
            mock.patch.object(torch.cuda, "manual_seed") as cuda_seed_one:
        with seeded(123):
            inside = torch.rand(3)
    assert not cuda_seed.called and not cuda_seed_one.called
    torch.manual_seed(123)
    assert torch.equal(inside, torch.rand(3))  # the same CPU stream as torch.manual_seed


# ---------------------------------------------------------------------------------------------------------------
# 7. per-rank RNG states


def test_each_rank_resumes_its_own_rng_state(neu: Path, tmp_path: Path) -> None:
    run = engine.train(_steps(neu), out=tmp_path / "r", quiet=True)
    ckpt = read_checkpoint(run.last_checkpoint)
    assert len(ckpt["rng_ranks"]) == 1 and torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng"]["torch"])
    states = [{"torch": torch.full((4,), r)} for r in range(2)]
    two = {"rng": states[0], "rng_ranks": states}
    assert engine._rank_rng(two, DistContext(rank=1, world_size=2)) is states[1]
    assert engine._rank_rng(two, DistContext(rank=0, world_size=2)) is states[0]
    with pytest.warns(UserWarning, match="RNG states of 2 processes and this run has 4"):
        assert engine._rank_rng(two, DistContext(rank=3, world_size=4)) is states[0]


def test_checkpoint_gathers_every_ranks_rng(neu: Path, tmp_path: Path, monkeypatch) -> None:
    gathered = []

    def fake_gather(ctx, obj):
        gathered.append(obj)
        return [obj, {**obj, "marker": torch.tensor([1])}]  # what rank 1 would send

    monkeypatch.setattr(engine.D, "all_gather_object", fake_gather)
    run = engine.train(_steps(neu), out=tmp_path / "r", quiet=True)
    ckpt = read_checkpoint(run.last_checkpoint)
    assert gathered and len(ckpt["rng_ranks"]) == 2 and "marker" in ckpt["rng_ranks"][1]


# ---------------------------------------------------------------------------------------------------------------
# 8. the loss is checked every N steps, on the device


def test_loss_checked_every_n_steps_names_the_bad_step_and_keeps_the_good_checkpoint(
        neu: Path, tmp_path: Path, monkeypatch) -> None:
    """Every 4 steps (as on a GPU): the NaN of step 2 is found at step 4's check, named as step 2; the checkpoint
    of step 1 stays, never one of the steps after the NaN."""
    real = engine.build_loss
    monkeypatch.setattr(engine, "build_loss", lambda *a, **kw: NaNAtCall(real(*a, **kw), at=2))
    monkeypatch.setattr(engine, "_loss_check_every", lambda device: 4)
    reads = []
    real_flush = engine._LossWatch.flush

    def counting_flush(self, epoch):
        reads.append(len(self.pending))
        return real_flush(self, epoch)

    monkeypatch.setattr(engine._LossWatch, "flush", counting_flush)
    cfg = tiny_config(neu, train={"max_steps": 6, "checkpoint_every_steps": 1, "epochs": 2})
    with pytest.raises(engine.TrainingDiverged, match=r"non-finite loss \(nan\) at step 2 \(epoch 1\)"):
        engine.train(cfg, out=tmp_path / "nan", quiet=True)
    last = read_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert last["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "nan" / "record.json").read_text())["status"] == "diverged"


def test_deferred_loss_checks_give_the_same_history(neu: Path, tmp_path: Path, monkeypatch) -> None:
    """Checking every 2 steps instead of every step changes neither the weights nor the logged epoch losses."""
    cfg = tiny_config(neu, train={"max_steps": 3, "checkpoint_every_steps": 0, "val_every": 0,
                                  "test_at_end": False})
    a = engine.train(cfg, out=tmp_path / "every1", quiet=True)
    monkeypatch.setattr(engine, "_loss_check_every", lambda device: 2)
    b = engine.train(cfg, out=tmp_path / "every2", quiet=True)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    sa, sb = read_checkpoint(a.last_checkpoint)["model"], read_checkpoint(b.last_checkpoint)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_check_every_step_on_cpu_only() -> None:
    assert engine._loss_check_every(torch.device("cpu")) == 1
    assert engine._loss_check_every(CUDA0) == engine.LOSS_CHECK_STEPS > 1


# ---------------------------------------------------------------------------------------------------------------
# 10. predictions with the evaluation's precision and layout; DDP buffers; attention on the host


def test_predict_dataset_reproduces_the_confusion_of_evaluate_under_amp(neu: Path, tmp_path: Path) -> None:
    from smelib.data.loading import load_data
    from smelib.config import resolve

    cfg = resolve(tiny_config(neu))
    bundle = load_data(cfg, seed=0)
    torch.manual_seed(0)
    model = engine.build_model(cfg, 4).to(memory_format=torch.channels_last).eval()
    kw = dict(amp_dtype=torch.bfloat16, channels_last=True)
    metrics = evaluate(model, bundle.test, num_classes=4, **kw)
    maps = predict_dataset(model, bundle.test, **kw)
    cm = ConfusionMatrix(4, ignore_index=255)
    for pred, i in zip(maps, range(len(bundle.test))):
        cm.update(torch.from_numpy(pred).long()[None], bundle.test[i][1].long()[None])
    assert torch.equal(cm.compute().confusion, metrics.confusion)


def test_ddp_with_sync_bn_does_not_broadcast_buffers_every_step(monkeypatch) -> None:
    made = {}

    class FakeDDP(nn.Module):
        def __init__(self, module, **kw):
            super().__init__()
            self.module = module
            made.update(kw)

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(nn.SyncBatchNorm, "convert_sync_batchnorm", staticmethod(lambda m: m))
    ctx = DistContext(rank=0, world_size=2, local_rank=0)
    cfg = {"train": {"sync_bn": "auto", "freeze_bn": False}}
    engine._distribute(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)), cfg, ctx, CUDA0)
    assert made["broadcast_buffers"] is False and made["device_ids"] == [0]
    with pytest.warns(UserWarning, match="per process"):
        engine._distribute(nn.Sequential(nn.BatchNorm2d(1)), {"train": {"sync_bn": False, "freeze_bn": False}},
                           ctx, torch.device("cpu"))
    assert made["broadcast_buffers"] is True  # per-process statistics: rank 0's are broadcast


def test_attention_code_copies_tensors_to_the_host_before_numpy() -> None:
    """A bare ``.numpy()`` fails on a CUDA tensor; every call in the attention code must be ``numpy(force=True)``
    (detach + copy to the host). No GPU here, so the source is checked."""
    tree = ast.parse((ROOT / "smelib" / "study" / "attention.py").read_text())
    bare = [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy"
            and not any(k.arg == "force" for k in node.keywords)]
    assert bare == []


# ---------------------------------------------------------------------------------------------------------------
# 9. bench on CUDA


def test_fp32_peak_uses_tf32_exactly_when_the_convolutions_do() -> None:
    seen = []
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for conv_tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = conv_tf32
            torch.backends.cuda.matmul.allow_tf32 = not conv_tf32
            with bench._conv_math(CUDA0, torch.float32):
                seen.append(torch.backends.cuda.matmul.allow_tf32)
            assert torch.backends.cuda.matmul.allow_tf32 is (not conv_tf32)  # restored
            assert bench.peak_math(CUDA0) == ("tf32" if conv_tf32 else "float32")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    assert seen == [True, False]
    assert bench.peak_math(torch.device("cpu")) == "float32" and bench.peak_math(CUDA0, torch.bfloat16) == "bfloat16"


def test_optimised_model_never_pins_an_input_per_call(monkeypatch) -> None:
    model = OptimizedModel(nn.Identity(), OptimizeOptions(), CUDA0, {})
    moves = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pytest.fail("pinned per call"))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: moves.append(kw) or self)
    for pinned in (False, True):
        monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a, p=pinned: p)
        model.prepare(torch.zeros(1, 3, 4, 4))
    assert [m["non_blocking"] for m in moves] == [False, True]  # non_blocking only from pinned memory


# ---------------------------------------------------------------------------------------------------------------
# smelib doctor without a GPU


def test_doctor_says_no_gpu_and_exits_cleanly(tmp_path: Path, capsys) -> None:
    from smelib.cli import main

    assert not torch.cuda.is_available()
    assert main(["doctor", "--gpu", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["status"] == "no_gpu" and "no GPU found" in captured.err
    assert report["environment"]["precision"]["autocast"] == "fp32"
    assert not any(tmp_path.iterdir())  # nothing measured, nothing recorded
