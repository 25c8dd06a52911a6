"""``smelib doctor``: what this machine's torch offers smelib, and with ``--gpu`` a few-minute proof that the CUDA
path works.

Without a GPU it reports the torch build and says plainly that no GPU was found (exit status 0: nothing is
wrong with a CPU machine). On a GPU, ``--gpu``:

1. reports the device, its compute capability and the precision ``train.amp: auto`` chooses there, and why
   (:func:`smelib.runtime.choose_precision`);
2. trains ``configs/paper.yaml`` for ``steps`` optimiser steps twice from the same initial weights: with AMP and
   channels_last (as a paper run trains), and in IEEE fp32, NCHW, TF32 off (the reference); then compares the
   final training loss and the test metrics;
3. with two or more GPUs, trains the AMP run again under ``torchrun --nproc_per_node=2`` (NCCL, SyncBatchNorm);
4. times :func:`smelib.tools.bench.benchmark` (a training step and inference of the paper's model) against a
   matmul peak measured in the convolutions' math mode (TF32 when cuDNN uses it), so no percent passes 100;

and writes everything to ``results/doctor/doctor_<UTC stamp>.json`` with the git commit.

The comparison tolerances are loose on purpose: after a few dozen steps from random weights, bf16/fp16 and fp32
training drift apart by rounding; what the check finds is a path that is broken (NaN, a loss that does not move,
metrics far apart), not a rounding difference.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from smelib import records as R
from smelib.config import dump_yaml, load_config
from smelib.runtime import bf16_native, choose_precision, precision_name
from smelib.settings import repo_root

__all__ = ["DOCTOR_TOLERANCE", "doctor", "gpu_environment"]

#: How far the AMP run may end from the fp32 reference before the check fails (the relative difference of the
#: final training loss, and the absolute difference of test mIoU as a fraction, not percent).
DOCTOR_TOLERANCE = {"train_loss_rel": 0.10, "test_miou_abs": 0.05}


def gpu_environment() -> dict[str, Any]:
    """The torch build, CUDA/cuDNN versions, every visible GPU (name, capability, memory, native bf16) and the
    precision ``train.amp: auto`` chooses on the first one (with the reason)."""
    env: dict[str, Any] = {
        "torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0, "gpus": [],
    }
    if not env["cuda_available"]:
        env["precision"] = dict(zip(("autocast", "reason"), _named(*choose_precision("auto", torch.device("cpu")))))
        return env
    env["cudnn"] = torch.backends.cudnn.version()
    env["tf32"] = {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
                   "cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    for i in range(env["device_count"]):
        dev = torch.device("cuda", i)
        props = torch.cuda.get_device_properties(dev)
        env["gpus"].append({"index": i, "name": props.name, "capability": list(torch.cuda.get_device_capability(dev)),
                            "memory_gib": round(props.total_memory / 2**30, 1), "bf16_native": bf16_native(dev)})
    env["precision"] = dict(zip(("autocast", "reason"), _named(*choose_precision("auto", torch.device("cuda", 0)))))
    return env


def _named(dtype: torch.dtype | None, reason: str) -> tuple[str, str]:
    return precision_name(dtype), reason


def doctor(gpu: bool = False, steps: int = 30, config: str | os.PathLike | None = None,
           data_root: str | None = None, out_dir: str | os.PathLike | None = None,
           say: Any = print) -> dict[str, Any]:
    """Run the checks (module docstring) and return the report; on a GPU with ``gpu`` also write the record.

    Args:
        gpu: train, compare, run torchrun and bench on the GPU (else the environment report only).
        steps: optimiser steps of each training check.
        config: the training config (default ``configs/paper.yaml``).
        data_root: dataset folder (default: :func:`smelib.settings.data_root`, the bundled sample when NEU-Seg
            is not installed).
        out_dir: where the record goes (default ``<repo>/results/doctor``).
        say: where the progress lines go.

    Returns:
        ``{"status": "no_gpu" | "report" | "passed" | "failed", "message", "environment", ...}`` with ``train``,
        ``ddp``, ``bench`` and ``record_path`` after a GPU check.
    """
    env = gpu_environment()
    report: dict[str, Any] = {"started_utc": R.utc_iso(), "environment": env}
    say(f"torch {env['torch']}  CUDA build {env['cuda_build'] or 'none'}  precision (amp: auto): "
        f"{env['precision']['autocast']} ({env['precision']['reason']})")
    if not env["cuda_available"]:
        report.update(status="no_gpu", message=f"no GPU found: torch.cuda.is_available() is False (torch "
                      f"{env['torch']}, CUDA build {env['cuda_build'] or 'none'}); nothing to check on a GPU")
        say(report["message"])
        return report
    for g in env["gpus"]:
        say(f"GPU {g['index']}: {g['name']}, capability {g['capability'][0]}.{g['capability'][1]}, "
            f"{g['memory_gib']} GiB, native bf16: {g['bf16_native']}")
    if not gpu:
        report.update(status="report", message="add --gpu to train, compare and time on the GPU")
        say(report["message"])
        return report
    started = time.time()
    cfg_path = Path(config) if config else repo_root() / "configs" / "paper.yaml"
    report["git"] = R.git_info()
    with tempfile.TemporaryDirectory(prefix="smelib_doctor_") as tmp:
        report["train"] = _train_check(cfg_path, steps, data_root, Path(tmp), say)
        report["ddp"] = _ddp_check(cfg_path, steps, data_root, Path(tmp), report["train"].get("amp"), say)
    report["bench"] = _bench_check(say)
    failures = [k for k in ("train", "ddp", "bench") if report[k].get("ok") is False]
    report.update(status="failed" if failures else "passed", wall_seconds=time.time() - started,
                  message=("failed: " + ", ".join(failures)) if failures else "every GPU check passed")
    path = Path(out_dir) if out_dir else repo_root() / "results" / "doctor"
    report["record_path"] = str(R.write_json(path / f"doctor_{R.utc_stamp()}.json", report))
    say(f"{report['message']}; wrote {report['record_path']}")
    return report


def _check_config(cfg_path: Path, steps: int, data_root: str | None, fp32: bool) -> dict[str, Any]:
    """The config of one training check: ``steps`` steps, validation and test at the end, nothing saved but the
    checkpoints; the AMP run as the config says (auto), the reference in fp32, NCHW."""
    overrides: list[tuple[str, Any]] = [
        ("train.max_steps", steps), ("train.val_every", 1), ("train.test_at_end", True),
        ("train.checkpoint_every_steps", 0), ("train.save_predictions", False),
        # GPU kernels are not deterministic anyway (smelib.runtime.setup_runtime); spare the slower kernels
        ("train.deterministic", False), ("train.device", "cuda"),
        ("train.amp", "none" if fp32 else "auto"), ("train.channels_last", not fp32),
    ]
    if data_root:
        overrides.append(("data.root", data_root))
    return load_config(cfg_path, overrides)


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls (a true fp32 reference), restored afterwards."""
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the comparison reads from a run record."""
    last = record["history"][-1] if record.get("history") else {}
    test = (record.get("final") or {}).get("test") or {}
    return {"status": record.get("status"), "steps": record.get("steps_done"), "train_loss": last.get("train_loss"),
            "test_miou": test.get("miou"), "test_pixel_acc": test.get("pixel_acc"),
            "images_per_s": record.get("images_per_s"), "precision": record.get("precision")}


def _train_check(cfg_path: Path, steps: int, data_root: str | None, tmp: Path, say: Any) -> dict[str, Any]:
    """Train the AMP + channels_last run and the fp32 reference; compare their loss and test metrics."""
    from smelib.training import train

    out: dict[str, Any] = {"config": str(cfg_path), "steps": steps, "tolerance": DOCTOR_TOLERANCE}
    try:
        say(f"training {cfg_path.name} for {steps} steps with AMP + channels_last ...")
        amp = train(_check_config(cfg_path, steps, data_root, fp32=False), out=tmp / "amp", quiet=True)
        say(f"training the same {steps} steps in fp32 (TF32 off, NCHW) ...")
        with _ieee_fp32():
            ref = train(_check_config(cfg_path, steps, data_root, fp32=True), out=tmp / "fp32", quiet=True)
    except Exception as err:  # the report must say what broke, not stop at it
        out.update(ok=False, error=f"{type(err).__name__}: {err}")
        say(f"training check failed: {out['error']}")
        return out
    a, b = _summary(amp.record), _summary(ref.record)
    out.update(amp=a, fp32=b)
    loss_rel = abs(a["train_loss"] - b["train_loss"]) / max(abs(b["train_loss"]), 1e-12)
    miou_abs = abs((a["test_miou"] or 0.0) - (b["test_miou"] or 0.0))
    out["train_loss_rel_diff"], out["test_miou_abs_diff"] = loss_rel, miou_abs
    out["ok"] = bool(loss_rel <= DOCTOR_TOLERANCE["train_loss_rel"] and miou_abs <= DOCTOR_TOLERANCE["test_miou_abs"])
    say(f"loss {a['train_loss']:.4f} (AMP) vs {b['train_loss']:.4f} (fp32), test mIoU {100 * (a['test_miou'] or 0):.2f}"
        f" vs {100 * (b['test_miou'] or 0):.2f}; {a['images_per_s']:.1f} vs {b['images_per_s']:.1f} img/s: "
        + ("agree" if out["ok"] else "DISAGREE"))
    return out


def _ddp_check(cfg_path: Path, steps: int, data_root: str | None, tmp: Path, single: dict[str, Any] | None,
               say: Any) -> dict[str, Any]:
    """The AMP run under ``torchrun --nproc_per_node=2`` when two GPUs are visible; its loss against one
    process's (same global batch)."""
    if torch.cuda.device_count() < 2:
        say("one GPU: the 2-process torchrun check is skipped")
        return {"skipped": "fewer than 2 GPUs"}
    import json

    config = tmp / "ddp.yaml"
    config.write_text(dump_yaml(_check_config(cfg_path, steps, data_root, fp32=False)), encoding="utf-8")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    say("training the AMP run again under torchrun --nproc_per_node=2 ...")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "smelib", "train", "--config",
                           str(config), "--out", str(tmp / "ddp"), "--quiet"], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        say("torchrun check failed")
        return {"ok": False, "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}
    two = _summary(json.loads((tmp / "ddp" / "record.json").read_text()))
    out: dict[str, Any] = {"two_processes": two}
    if single and single.get("train_loss") is not None:
        rel = abs(two["train_loss"] - single["train_loss"]) / max(abs(single["train_loss"]), 1e-12)
        out.update(train_loss_rel_diff=rel, ok=bool(rel <= DOCTOR_TOLERANCE["train_loss_rel"]))
    else:
        out["ok"] = two["status"] == "completed"
    say(f"torchrun: loss {two['train_loss']:.4f}, test mIoU {100 * (two['test_miou'] or 0):.2f}: "
        + ("agrees" if out["ok"] else "DISAGREES"))
    return out


def _bench_check(say: Any) -> dict[str, Any]:
    """A training step and inference of the paper's model at 512 px on ``cuda``, against the TF32-consistent peak;
    fails when a percent of peak passes 100 (a peak measured in the wrong math mode)."""
    from smelib.tools.bench import benchmark
    from smelib.tools.optimize_inference import OptimizeOptions

    precision = _named(*choose_precision("auto", torch.device("cuda", 0)))[0]
    out: dict[str, Any] = {}
    for task, train in (("train", True), ("inference", False)):
        say(f"bench: {task}, sme_deeplabv3plus, batch 8, 512 x 512 ...")
        try:
            r = benchmark("sme_deeplabv3plus", size=(512, 512), batch=8, train=train, iters=10, warmup=3,
                          device="cuda", options=OptimizeOptions(compile=False, amp=None if precision == "fp32"
                                                                 else precision))
        except Exception as err:  # reported, not raised
            out[task] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            continue
        modes = {m: {k: r[m][k] for k in ("images_per_s", "percent_of_peak", "peak_gmacs_per_s", "peak_math")}
                 for m in ("eager", "optimised")}
        ok = all(v["percent_of_peak"] <= 100 for v in modes.values())
        out[task] = {"ok": ok, **modes, "speedup": r["speedup"]}
        say(f"  eager {modes['eager']['images_per_s']:.1f} img/s ({modes['eager']['percent_of_peak']:.1f} % of the "
            f"{modes['eager']['peak_math']} peak), optimised {modes['optimised']['images_per_s']:.1f} img/s "
            f"({modes['optimised']['percent_of_peak']:.1f} % of the {modes['optimised']['peak_math']} peak)")
    out["ok"] = all(v.get("ok") for v in out.values() if isinstance(v, dict))
    return out
