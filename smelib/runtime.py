"""The process's runtime: seeding, the device, autocast precision, threads and the allocator.

What a training or inference process sets once before it starts, kept in one place so the training loop, the
evaluation and the tools agree on it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from smelib.errors import ConfigError

__all__ = ["amp_dtype", "resolve_device", "reuse_freed_memory", "seed_everything", "set_threads", "setup_runtime"]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available (torch {torch.__version__})")
    return torch.device(f"cuda:{local_rank}" if spec == "cuda" else spec)


def amp_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    amp = cfg["train"]["amp"]
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def setup_runtime(cfg: Mapping[str, Any], device: torch.device) -> None:
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    if cfg["train"]["deterministic"]:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
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
