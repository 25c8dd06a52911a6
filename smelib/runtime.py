"""The process's runtime: seeding, the device, autocast precision, threads and the allocator.

What a training or inference process sets once before it starts, kept in one place so the training loop, the
evaluation and the tools agree on it.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from smelib.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "amp_dtype",
    "bf16_native",
    "choose_precision",
    "precision_name",
    "resolve_device",
    "reuse_freed_memory",
    "seed_everything",
    "set_threads",
    "setup_runtime",
]

#: The autocast dtype of each precision name a checkpoint or record stores (``fp32``: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process from ``train.device``.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: this process's GPU under ``torchrun`` (``LOCAL_RANK``); 0 in a single process.
        world_size: processes in the run; under ``torchrun`` (> 1) each process takes ``cuda:<local_rank>``, so a
            fixed ``cuda:N`` (which would put every rank on GPU N) is refused.

    Raises:
        ConfigError: CUDA asked for but not available, or ``cuda:N`` with several processes.
    """
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available (torch {torch.__version__})")
    if spec.startswith("cuda:") and world_size > 1:
        raise ConfigError(f"train.device: {spec!r} under torchrun would put all {world_size} processes on one GPU; "
                          "use train.device=cuda (each process takes its LOCAL_RANK's GPU) and CUDA_VISIBLE_DEVICES "
                          "to choose the GPUs")
    return torch.device(f"cuda:{local_rank}" if spec == "cuda" else spec)


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 autocast runs on native kernels here: on CUDA only at compute capability >= (8, 0) (Ampere and
    later). ``torch.cuda.is_bf16_supported()`` also says yes on T4/V100 (7.x), where it counts emulation and cuDNN
    has no bf16 convolutions: training there fails or crawls. On the CPU autocast is always bf16 (oneDNN)."""
    if device.type != "cuda":
        return True
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def choose_precision(amp: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for an ``amp`` setting on ``device``, and why (one sentence for logs and records).

    Args:
        amp: ``auto`` (bf16 on a GPU that has native bf16, fp16 with a GradScaler on an older GPU, none on the
            CPU), ``none``, ``bf16`` (falls back to fp16 on a GPU without native bf16) or ``fp16``.
        device: where the model runs.

    Returns:
        ``(dtype or None for fp32, reason)``.
    """
    if amp == "none":
        return None, "amp: none (fp32)"
    if amp == "fp16":
        return torch.float16, "amp: fp16 asked for (with a GradScaler when training)"
    if device.type != "cuda":
        if amp == "bf16":
            return torch.bfloat16, "amp: bf16 asked for on the CPU"
        return None, "amp: auto on the CPU: fp32 (CPU autocast is bf16 only and changes the numbers)"
    cap = tuple(torch.cuda.get_device_capability(device))
    if bf16_native(device):
        return torch.bfloat16, f"amp: {amp} on CUDA capability {cap[0]}.{cap[1]} >= 8.0: native bf16"
    return torch.float16, (f"amp: {amp} on CUDA capability {cap[0]}.{cap[1]} < 8.0 (no native bf16 convolutions): "
                           "fp16 with a GradScaler")


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the name :data:`smelib.runtime.PRECISIONS` maps back to the autocast dtype."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def amp_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: fp32); see :func:`smelib.runtime.choose_precision`."""
    return choose_precision(cfg["train"]["amp"], device)[0]


def setup_runtime(cfg: Mapping[str, Any], device: torch.device) -> None:
    """Threads, the current CUDA device and the determinism settings of ``cfg["train"]`` for this process.

    ``torch.cuda.set_device(device)``: without it a run on ``cuda:1`` still allocates its context, pinned memory
    and capability queries on GPU 0. ``deterministic`` is exact on the CPU only: on CUDA, adaptive pooling and
    bilinear upsampling have no deterministic backward kernels, so with ``warn_only`` a GPU run stays
    non-deterministic (and is slower for the other ops); a warning says so.
    """
    if cfg["train"]["threads"]:
        set_threads(int(cfg["train"]["threads"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg["train"]["deterministic"]:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            warnings.warn("train.deterministic on CUDA: adaptive pooling and bilinear upsampling have no "
                          "deterministic CUDA backward, so GPU runs are not bit-reproducible (only CPU runs are), "
                          "and the deterministic kernels of the other ops are slower; set train.deterministic=false "
                          "for speed", stacklevel=2)
        # warn_only: ops without a deterministic kernel (e.g. CUDA bilinear backward) warn instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` when given; returns the threads now in use."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


_REUSE_STATE: dict[str, Any] = {"set": False}


def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (``mallopt``: mmap threshold 1 GiB, trim threshold
    2 GiB), so that large activations stop being fresh, page-faulting mappings on every forward pass.

    Process-wide and not undone. Returns True when the setting is in effect (glibc found, both calls accepted),
    False elsewhere (macOS, musl, Windows), where it is a no-op.
    """
    if _REUSE_STATE["set"]:
        return True
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h constants
    ok = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 31))
    _REUSE_STATE["set"] = ok
    return ok
