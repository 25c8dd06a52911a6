"""Throughput benchmark: eager versus optimised, side by side in one run, against the machine's peak.

What one run measures (``smelib bench MODEL`` or :func:`benchmark`):

* **Work**: fvcore's multiply-adds of the *original* model per image (:func:`smelib.models.complexity.fvcore_macs`, eval
  mode). For a training step (``train=True``) we count forward + backward as **3 × the forward multiply-adds**
  (the backward pass computes a gradient for the input and one for the weights, each as costly as the forward);
  that is a convention, stated in the record as ``macs_convention``. The optimised graph may execute fewer
  multiply-adds than the model defines (exact rewrites such as MSAA's three convolutions as one): its own count
  is recorded as ``executed_gmacs_per_image``, and ``gmacs_per_s`` always uses the model's count (useful work).
* **Peak**: a ceiling, so that no percent-of-peak exceeds 100. Each round times several kernels that reach the
  hardware by different paths: a square matmul (BLAS, ``n``³ multiply-adds; ``n = 2048`` on the CPU) and 1×1 and
  3×3 channels-last convolutions of about as much work (oneDNN; some CPUs run it faster than their BLAS), in fp32,
  and in the optimised mode's dtype when it autocasts (bf16). The measured peak is the best sample of any kernel;
  every kernel's samples are kept in the record. Should a mode still run faster than the measured peak, the peak
  is raised to that mode's rate and the record says so (``raised_by``; :func:`smelib.tools.bench.peak_ceiling`).
  Beside it the record states the *theoretical* FMA ceiling from the CPU's flags, cores and clock
  (:func:`smelib.tools.bench.theoretical_peak`), with its assumptions.
* **Interleaving**: each repetition times eager then optimised, or optimised then eager (alternating), with a
  peak sample every round, so load from other processes on a shared machine hits both modes alike. The load
  average before and after is recorded.
* **Per mode**: latency per batch (min, p50, p95, in ms), ``images_per_s = batch / p50``,
  ``gmacs_per_s = images_per_s × GMACs per image``, ``percent_of_peak = 100 × gmacs_per_s / peak``; the same
  from the fastest repetition as ``images_per_s_best`` and ``percent_of_peak_best``; and
  ``percent_of_adjacent_peak_p50``, the median over repetitions of each repetition's GMAC/s divided by the peak
  sample taken just before it (less sensitive to load that comes and goes during the run).
* **Threads**: the eager mode and the peak run at ``threads`` (default: torch's, one per core); the optimised
  mode at ``opt_threads`` (a number, or ``"auto"``: the fastest of 1 … cores, probed in the same run).

The JSON (``smelib bench --json``, and the files under ``results/bench/``) is one object::

    {"model", "task": "inference" | "train", "batch", "size": [H, W], "device", "torch",
     "eager": {...}, "optimised": {...}, "speedup": optimised / eager images per s (p50),
     "record": {load averages, threads, CPU model, git commit, optimisations asked for and applied, ...}}

where ``eager`` and ``optimised`` each carry ``mode`` (``"eager"`` | ``"optimised"``), ``images_per_s``,
``gmacs_per_s``, ``peak_gmacs_per_s``, ``percent_of_peak``, ``device``, ``torch`` and the latencies.

"Eager" is the model as written: NCHW, ``torch.no_grad()`` for inference; for training: NCHW, cross-entropy,
backward and ``torch.optim.SGD`` (momentum 0.9, default ``foreach``). "Optimised" is
:func:`smelib.tools.optimize_inference.optimize_for_inference` for inference, and for training the same step with
channels_last, ``torch.compile`` (when asked and working) and the fused SGD kernel where torch has one; graph
rewrites (BatchNorm folding, fusions) are inference-only.

On CUDA the timings are bracketed by ``torch.cuda.synchronize()``, inputs come from host memory pinned once with
``non_blocking`` copies (inside the timed region), and the optimised mode may use autocast (``amp``); its peak
is then measured in that dtype. The fp32 peak is measured in the convolutions' math mode: cuDNN convolutions run
in TF32 by default (``torch.backends.cudnn.allow_tf32``) while cuBLAS matmuls do not, so the peak's matmuls use
TF32 exactly when the convolutions do (``peak_math`` in the record says which); an IEEE fp32 peak would be several
times lower than what TF32 convolutions reach, and the percent of peak could pass 100.

:func:`profile_ops` writes the table the book's Speed chapter reads: top operators by self CPU time, and the
share of time per operator class (7x7 depthwise convolutions, other convolutions, elementwise, ...).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smelib.tools.optimize_inference import (
    OptimizeOptions,
    compile_available,
    optimize_for_inference,
    pick_threads,
    threads_for,
)
from smelib.runtime import reuse_freed_memory, set_threads
from smelib.records import cpu_flags, cpu_model

__all__ = ["benchmark", "format_result", "machine_info", "measure_peak", "peak_ceiling", "peak_gap", "peak_math",
           "profile_ops", "theoretical_peak", "write_profile"]

MODES = ("eager", "optimised")


# ---------------------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model and flags, cores, threads, torch build, git commit, OMP/MKL settings, the GPU if any."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES",
                                           "KMP_AFFINITY", "KMP_BLOCKTIME", "OMP_WAIT_POLICY") if k in os.environ},
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def peak_math(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The math mode of the peak's matmuls: ``tf32`` for an fp32 peak on CUDA while cuDNN convolutions use TF32,
    else the dtype's name (``float32``, ``bfloat16``, ``float16``)."""
    if device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def _conv_math(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Run the block's CUDA fp32 matmuls in the convolutions' math mode (TF32 iff ``cudnn.allow_tf32``), then
    restore the matmul setting. A no-op on the CPU and for other dtypes."""
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _peak_kernels(n: int, device: torch.device, dtype: torch.dtype) -> dict[str, tuple[Callable[[], Any], float]]:
    """The kernels the peak is the best of, each ``name -> (call, multiply-adds per call)``.

    They reach the hardware by different paths: ``matmul`` is BLAS (``torch.mm``, ``n``³ multiply-adds);
    ``conv1x1`` and ``conv3x3`` are convolutions (oneDNN on the CPU, cuDNN on CUDA), channels-last as the optimised
    mode runs them, sized to about the matmul's work. A CPU can run its convolution library faster than its BLAS
    (or the reverse), so one kernel alone is not a ceiling.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    kernels: dict[str, tuple[Callable[[], Any], float]] = {"matmul": (lambda: torch.mm(a, b), float(n) ** 3)}
    for k, c in ((1, max(n // 4, 1)), (3, max(n // 12, 1))):
        side = max(n // 32, 1)
        batch = max(round(n**3 / (c * c * k * k * side * side)), 1)
        x = torch.randn(batch, c, side, side, generator=g).to(device, dtype).contiguous(
            memory_format=torch.channels_last)
        w = torch.randn(c, c, k, k, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
        kernels[f"conv{k}x{k}"] = (lambda x=x, w=w, k=k: F.conv2d(x, w, padding=k // 2),
                                   float(batch * c * c * k * k * side * side))
    return kernels


class _Peak:
    """The peak of one dtype: the best of several kernels (:func:`_peak_kernels`), in the convolutions' math mode
    (:func:`smelib.tools.bench.peak_math`); keeps every sample in GMAC/s.

    ``samples`` holds each round's best kernel; ``kernel_samples`` every kernel's own samples.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None) -> None:
        self.device, self.dtype = device, dtype
        self.n = n or (8192 if device.type == "cuda" else 2048)
        self.kernels = _peak_kernels(self.n, device, dtype)
        self.kernel_samples: dict[str, list[float]] = {name: [] for name in self.kernels}
        self.samples: list[float] = []
        self.sample()  # warm-up, not kept
        self.samples.clear()
        for v in self.kernel_samples.values():
            v.clear()

    def sample(self) -> float:
        """One round: every kernel once; returns (and keeps) the round's best GMAC/s."""
        best = 0.0
        for name, (call, macs) in self.kernels.items():
            with _conv_math(self.device, self.dtype):
                rate = macs / _timed(call, self.device) / 1e9
            self.kernel_samples[name].append(rate)
            best = max(best, rate)
        self.samples.append(best)
        return best

    @property
    def best(self) -> float:
        return max(self.samples)

    def to_json(self) -> dict[str, Any]:
        """Each kernel's multiply-adds, samples and best, and which kernel set the peak."""
        kernels = {name: {"gmacs_per_call": macs / 1e9, "best_gmacs_per_s": max(self.kernel_samples[name]),
                          "samples_gmacs_per_s": [round(v, 2) for v in self.kernel_samples[name]]}
                   for name, (_, macs) in self.kernels.items()}
        return {"dtype": str(self.dtype).removeprefix("torch."), "n": self.n, "kernels": kernels,
                "best_kernel": max(kernels, key=lambda k: kernels[k]["best_gmacs_per_s"])}


def measure_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                 repeats: int = 5) -> dict[str, Any]:
    """The machine's measured peak: the best of ``repeats`` rounds of several kernels (an ``n×n @ n×n`` matmul,
    1×1 and 3×3 convolutions of about as many multiply-adds), in GMAC/s (multiply-adds), each kernel's rate
    recorded, beside the theoretical ceiling (:func:`smelib.tools.bench.theoretical_peak`)."""
    peak = _Peak(torch.device(device), dtype, n)
    for _ in range(repeats):
        peak.sample()
    return {"peak_gmacs_per_s": peak.best, "n": peak.n, "dtype": str(dtype).removeprefix("torch."),
            "samples": [round(s, 2) for s in peak.samples], **peak.to_json(),
            "peak_math": peak_math(peak.device, dtype),
            "theoretical": theoretical_peak(dtype, device=device)}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _max_clock_ghz() -> tuple[float | None, str]:
    """The highest clock the kernel reports, in GHz, and where it came from."""
    try:
        files = Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")
        khz = max(float(f.read_text()) for f in files)
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        return None, ""


def theoretical_peak(dtype: torch.dtype = torch.float32, cpuinfo: str | None = None, clock_ghz: float | None = None,
                     device: torch.device | str = "cpu") -> dict[str, Any]:
    """The CPU's theoretical multiply-add ceiling: physical cores × vector lanes × FMA units × clock.

    A theoretical figure, not a measurement: the number of FMA units per core cannot be read from the CPU's flags
    and is taken as 2 (an upper bound for current x86 cores; a core that splits 512-bit vectors into two 256-bit
    halves, as AMD Zen 4 does, reaches half), and the clock is the highest the kernel reports (cpufreq), else
    ``/proc/cpuinfo``'s current "cpu MHz" (turbo can exceed it). bf16: ``avx512_bf16`` pairs two bf16 products per
    fp32 lane (2×); AMX (``amx_bf16``) is taken as 1024 multiply-adds per cycle per core.

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        cpuinfo: the text of ``/proc/cpuinfo`` (default: read it); clock_ghz: overrides the clock.
        device: a CUDA device gives None figures (not read here).

    Returns:
        ``{"gmacs_per_s", "cores", "macs_per_cycle_per_core", "clock_ghz", "clock_source", "assumptions"}``;
        ``gmacs_per_s`` is None where a figure could not be read.
    """
    out: dict[str, Any] = {"gmacs_per_s": None, "cores": None, "macs_per_cycle_per_core": None, "clock_ghz": None,
                           "clock_source": None, "dtype": str(dtype).removeprefix("torch."),
                           "assumptions": "theoretical: 2 FMA units per core (not readable from the flags); "
                                          "physical cores this process may use; the highest clock reported"}
    if torch.device(device).type != "cpu":
        return out
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    blocks = [b for b in text.split("\n\n") if b.strip()]
    fields = [dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in b.splitlines())) for b in blocks]
    allowed = os.sched_getaffinity(0) if cpuinfo is None and hasattr(os, "sched_getaffinity") else None
    cores = {(f.get("physical id"), f.get("core id", f.get("processor"))) for f in fields
             if allowed is None or int(f.get("processor", -1)) in allowed}
    flags = set(fields[0].get("flags", "").split()) if fields else set()
    lanes = 16 if "avx512f" in flags else 8 if "avx" in flags else 4 if "sse" in flags else 0
    per_core = lanes * (2 if "fma" in flags or "avx512f" in flags else 1)
    if dtype == torch.bfloat16:
        per_core = 1024 if "amx_bf16" in flags else 2 * per_core if "avx512_bf16" in flags else per_core
    clock, source = (clock_ghz, "given") if clock_ghz is not None else _max_clock_ghz()
    if clock is None:
        mhz = [float(f["cpu MHz"]) for f in fields if "cpu MHz" in f]
        clock, source = (max(mhz) / 1e3, "/proc/cpuinfo cpu MHz (current clock)") if mhz else (None, None)
    out.update(cores=len(cores) or None, macs_per_cycle_per_core=per_core or None, clock_ghz=clock,
               clock_source=source)
    if cores and per_core and clock:
        out["gmacs_per_s"] = len(cores) * per_core * clock
    return out


def peak_ceiling(measured_gmacs_per_s: float, achieved: dict[str, float]) -> dict[str, Any]:
    """The peak a percent-of-peak is taken against: the measured peak, raised to any rate that beat it.

    A benchmarked mode (or a profiled operator class) that runs faster than every peak kernel proves the kernels
    missed the hardware's real ceiling; its rate is then the best known lower bound of that ceiling, so no
    percent-of-peak exceeds 100.

    Args:
        measured_gmacs_per_s: the best kernel's rate; achieved: name -> the rate it reached (GMAC/s).

    Returns:
        ``{"gmacs_per_s": the peak, "measured_gmacs_per_s", "raised_by": the name that raised it, or None}``.
    """
    top = max(achieved, key=achieved.__getitem__) if achieved else None
    if top is not None and achieved[top] > measured_gmacs_per_s:
        return {"gmacs_per_s": achieved[top], "measured_gmacs_per_s": measured_gmacs_per_s, "raised_by": top}
    return {"gmacs_per_s": measured_gmacs_per_s, "measured_gmacs_per_s": measured_gmacs_per_s, "raised_by": None}


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------------------------
# Runners: one callable per mode doing one batch (inference) or one step (training)
# ---------------------------------------------------------------------------------------------------------------


def _build(name: str, num_classes: int, seed: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    from smelib.models import build

    torch.manual_seed(seed)
    return build(name, num_classes=num_classes, **(model_kwargs or {}))


def _fused_sgd_ok(device: torch.device) -> bool:
    try:
        p = nn.Parameter(torch.zeros(2, device=device))
        p.grad = torch.ones_like(p)
        torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True).step()
        return True
    except Exception:
        return False


def _train_runner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, optimised: bool,
                  options: OptimizeOptions, notes: dict[str, Any]) -> Callable[[], Any]:
    model = model.to(device).train()
    x_host, y_host = x, y
    fused = optimised and options.fused_optimizer and _fused_sgd_ok(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **({"fused": True} if fused else {}))
    channels_last = optimised and options.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = options.autocast_dtype(device) if optimised else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    compile_state = {"status": "off", "fn": None}
    if optimised and options.compile:
        ok, why = compile_available(device)
        if ok:
            # CUDA graphs (when asked) remove the per-kernel launch cost that bounds a small batch's step
            mode = "reduce-overhead" if device.type == "cuda" and options.cuda_graphs else None
            compile_state.update(status="pending", fn=torch.compile(model, dynamic=False, mode=mode))
        else:
            compile_state["status"] = f"fallback: {why}"
    if optimised and device.type == "cpu" and options.reuse_memory:
        notes["reuse_memory"] = reuse_freed_memory()  # process-wide: the eager mode timed beside it gains too
    pinned = device.type == "cuda" and options.pinned_memory and optimised
    if pinned:
        x_host, y_host = x.pin_memory(), y.pin_memory()

    def step() -> None:
        xb = x_host.to(device, non_blocking=pinned)
        yb = y_host.to(device, non_blocking=pinned)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else _null():
            fn = compile_state["fn"]
            if fn is not None:
                try:
                    out = fn(xb)
                    compile_state["status"] = "compiled"
                except Exception as err:
                    compile_state.update(fn=None, status=f"fallback: {type(err).__name__}: {str(err)[:300]}")
                    out = forward(xb)
            else:
                out = forward(xb)
            loss = F.cross_entropy(out.float(), yb)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        notes["compile"] = compile_state["status"]

    notes.update({"channels_last": channels_last, "fused_sgd": fused, "amp": options.amp if amp_dtype else False,
                  "pinned_memory": pinned, "compile": compile_state["status"]})
    return step


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------


def _runners(base: nn.Module, x: Tensor, y: Tensor, dev: torch.device, train: bool, options: OptimizeOptions,
             rebuild: Callable[[], nn.Module]) -> tuple[dict[str, Callable[[], Any]], dict[str, dict[str, Any]],
                                                       float | None]:
    """The two timed callables (eager, optimised), their settings notes, and the optimised graph's executed GMACs
    per image (inference only; None when fvcore cannot trace it)."""
    from smelib.models.complexity import fvcore_macs

    notes: dict[str, dict[str, Any]] = {"eager": {}, "optimised": {}}
    if train:
        runners = {"eager": _train_runner(base, x, y, dev, False, options, notes["eager"]),
                   "optimised": _train_runner(rebuild(), x, y, dev, True, options, notes["optimised"])}
        return runners, notes, None
    eager_model = base.to(dev)

    def eager() -> Any:  # the host-to-device copy is timed in both modes (a no-op on the CPU)
        with torch.no_grad():
            return eager_model(x.to(dev))

    fast = optimize_for_inference(base, options, example=x[:2].to(dev), device=dev)
    x_in = x.pin_memory() if dev.type == "cuda" and options.pinned_memory else x
    notes["optimised"] = fast.applied
    try:
        executed_macs, _ = fvcore_macs(fast.module, torch.zeros(1, *x.shape[1:], device=dev))
        executed: float | None = executed_macs / 1e9
    except Exception:  # fvcore cannot trace every rewritten graph; the record then says so with None
        executed = None
    return {"eager": eager, "optimised": lambda: fast(x_in)}, notes, executed


def _interleaved(runners: dict[str, Callable[[], Any]], peaks: dict[str, _Peak], mode_threads: dict[str, int],
                 iters: int, dev: torch.device, gmacs_per_batch: float) -> tuple[dict[str, list[float]],
                                                                               dict[str, list[float]]]:
    """Time the modes in alternating order, sampling the peak beside each repetition: per mode the seconds per
    batch, and each repetition's GMAC/s over the peak sample taken just before it."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    paired: dict[str, list[float]] = {m: [] for m in MODES}
    unique_peaks = list({id(p): p for p in peaks.values()}.values())
    for p in unique_peaks:
        for _ in range(3):
            p.sample()
    for i in range(iters):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for p in unique_peaks:
            p.sample()
        for mode in order:
            with threads_for(mode_threads[mode]):
                dt = _timed(runners[mode], dev)
            times[mode].append(dt)
            paired[mode].append(gmacs_per_batch / dt / peaks[mode].samples[-1])
    for p in unique_peaks:
        for _ in range(2):
            p.sample()
    return times, paired


def _summarise(mode: str, t: list[float], paired: list[float], peak_meas: _Peak, ceiling: dict[str, Any], batch: int,
               gmacs_per_image: float, dev: torch.device, threads: int, notes: dict[str, Any]) -> dict[str, Any]:
    """One mode's figures: images/s at the median and the best repetition, latencies, GMAC/s, percent of peak.

    ``ceiling`` is :func:`smelib.tools.bench.peak_ceiling` of the mode's dtype; a repetition faster than the peak
    sample beside it raises that sample to its own rate (counted in ``adjacent_peak_raised``)."""
    p50, p95, best = _percentile(t, 0.5), _percentile(t, 0.95), min(t)
    ips, ips_best = batch / p50, batch / best
    peak = ceiling["gmacs_per_s"]
    return {
        "mode": mode,
        "device": str(dev),
        "torch": torch.__version__,
        "images_per_s": ips,
        "images_per_s_best": ips_best,
        "latency_ms_min": 1e3 * best,
        "latency_ms_p50": 1e3 * p50,
        "latency_ms_p95": 1e3 * p95,
        "gmacs_per_s": ips * gmacs_per_image,
        "gmacs_per_s_best": ips_best * gmacs_per_image,
        "peak_gmacs_per_s": peak,
        "peak_measured_gmacs_per_s": ceiling["measured_gmacs_per_s"],
        "peak_raised_by": ceiling["raised_by"],
        "peak_dtype": str(peak_meas.dtype).removeprefix("torch."),
        "peak_math": peak_math(dev, peak_meas.dtype),
        "percent_of_peak": 100 * ips * gmacs_per_image / peak,
        "percent_of_peak_best": 100 * ips_best * gmacs_per_image / peak,
        "percent_of_adjacent_peak_p50": 100 * _percentile([min(r, 1.0) for r in paired], 0.5),
        "adjacent_peak_raised": sum(r > 1.0 for r in paired),
        "threads": threads,
        "latencies_ms": [round(1e3 * v, 3) for v in t],
        "settings": notes,
    }


def benchmark(
    model: str,
    size: tuple[int, int] = (200, 200),
    batch: int = 16,
    train: bool = False,
    iters: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    device: str = "cpu",
    options: OptimizeOptions | None = None,
    num_classes: int = 4,
    peak_n: int | None = None,
    seed: int = 0,
    opt_threads: int | str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark ``model`` (a registry name) eager versus optimised; returns the JSON object described above.

    Args:
        model: a name from :func:`smelib.models.registry.names`.
        size: ``(H, W)`` of the input.
        batch: images per batch (per training step).
        train: time a training step (forward, cross-entropy, backward, SGD step) instead of inference.
        iters: timed repetitions per mode (interleaved).
        warmup: untimed repetitions per mode first (the first optimised call also compiles, when asked).
        threads: intra-op threads of the eager mode and of the peak measurement (``None``: leave, i.e. torch's
            default, one per core).
        opt_threads: threads of the optimised mode: a number, ``"auto"`` (time the optimised step at 1 … cores
            threads after the warm-up and keep the fastest; the probe's timings are recorded) or ``None``
            (same as ``threads``). The peak stays the all-thread one, so a mode that is faster with fewer
            threads is credited against the whole machine's peak.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        options: optimisations of the optimised mode (default:
            :class:`~smelib.tools.optimize_inference.OptimizeOptions` with ``compile=True``).
        num_classes: output classes.
        peak_n: matmul size of the peak measurement (default 2048 on CPU, 8192 on CUDA).
        seed: seeds the model weights and the data.
        model_kwargs: keyword arguments of the model's factory (e.g. ``{"decoder_width": 64}``: the widths the
            CPU-budget protocol trains); recorded.
    """
    from smelib.models.complexity import fvcore_macs

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch.cuda.is_available() is False")
    if iters < 1 or warmup < 0 or batch < 1:
        raise ValueError("need iters >= 1, warmup >= 0 and batch >= 1")
    options = options or OptimizeOptions(compile=True)
    load_before = _loadavg()
    threads_used = set_threads(threads)
    h, w = size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, h, w, generator=g)
    y = torch.randint(0, num_classes, (batch, h, w), generator=g)

    base = _build(model, num_classes, seed, model_kwargs).eval()
    macs_per_image, _ = fvcore_macs(base, torch.zeros(1, 3, h, w))
    gmacs_per_image = macs_per_image / 1e9 * (3 if train else 1)
    runners, notes, executed = _runners(base, x, y, dev, train, options, lambda: _build(model, num_classes, seed,
                                                                                 model_kwargs))

    opt_dtype = options.autocast_dtype(dev) or torch.float32
    eager_peak = _Peak(dev, torch.float32, peak_n)  # autocast: the optimised mode against the same dtype's matmul
    opt_peak = eager_peak if opt_dtype == torch.float32 else _Peak(dev, opt_dtype, peak_n)
    peaks = {"eager": eager_peak, "optimised": opt_peak}

    mode_threads = {"eager": threads_used, "optimised": threads_used}
    if isinstance(opt_threads, int):
        if opt_threads < 1:
            raise ValueError(f"opt_threads must be >= 1, got {opt_threads}")
        mode_threads["optimised"] = opt_threads
    # A compiling mode is called at least once before timing: its first call compiles.
    for _ in range(max(warmup, 1 if options.compile else 0)):
        for mode in MODES:
            with threads_for(mode_threads[mode]):
                runners[mode]()
    probe = None
    if opt_threads == "auto" and dev.type == "cpu":
        best_n, timings = pick_threads(runners["optimised"], trials=2)
        mode_threads["optimised"] = best_n
        probe = {str(k): round(v * 1e3, 3) for k, v in timings.items()}
    elif opt_threads not in (None, "auto") and not isinstance(opt_threads, int):
        raise ValueError(f"opt_threads must be an integer, 'auto' or None, got {opt_threads!r}")
    for mode in MODES:
        notes[mode]["threads"] = mode_threads[mode]
    times, paired = _interleaved(runners, peaks, mode_threads, iters, dev, batch * gmacs_per_image)
    load_after = _loadavg()

    result = {"model": model, "task": "train" if train else "inference", "batch": batch, "size": [h, w],
              "device": str(dev), "torch": torch.__version__}
    ceilings = _ceilings(peaks, times, batch * gmacs_per_image)
    for mode in MODES:
        result[mode] = _summarise(mode, times[mode], paired[mode], peaks[mode], ceilings[id(peaks[mode])], batch,
                                  gmacs_per_image, dev, mode_threads[mode], notes[mode])
    result["speedup"] = result["optimised"]["images_per_s"] / result["eager"]["images_per_s"]
    result["record"] = {
        "model_kwargs": dict(model_kwargs or {}),
        "gmacs_per_image": gmacs_per_image,
        "gmacs_per_image_forward": macs_per_image / 1e9,
        "executed_gmacs_per_image_optimised": executed,
        "macs_convention": ("fvcore multiply-adds of the original model in eval mode; training step counted as "
                            "3 x forward (forward + input gradients + weight gradients)" if train else
                            "fvcore multiply-adds of the original model in eval mode"),
        "peak": {**_peak_record(peaks["eager"], ceilings[id(peaks["eager"])], dev),
                 "math": peak_math(dev, torch.float32)},
        "iters": iters,
        "warmup": warmup,
        "threads": threads_used,
        "threads_optimised": mode_threads["optimised"],
        "threads_probe_ms": probe,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "options": options.to_dict(),
        "machine": machine_info(dev),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if peaks["optimised"] is not peaks["eager"]:
        result["record"]["peak_optimised"] = {**_peak_record(peaks["optimised"], ceilings[id(peaks["optimised"])],
                                                             dev), "dtype": str(opt_dtype)}
    return result


def _ceilings(peaks: dict[str, _Peak], times: dict[str, list[float]], gmacs_per_batch: float) -> dict[int, dict]:
    """:func:`smelib.tools.bench.peak_ceiling` of each distinct peak (by ``id``): a mode that beats every peak
    kernel raises its dtype's peak, for both modes when they share it."""
    return {id(p): peak_ceiling(p.best, {m: gmacs_per_batch / min(times[m]) for m in MODES if peaks[m] is p})
            for p in peaks.values()}


def _peak_record(peak: _Peak, ceiling: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    """The record's account of one dtype's peak: each kernel's samples, the measured best, the peak used (raised by
    a mode that beat it, and which), and the theoretical ceiling."""
    return {**peak.to_json(), "samples_gmacs_per_s": [round(s, 2) for s in peak.samples],
            "measured_best_gmacs_per_s": ceiling["measured_gmacs_per_s"], "best_gmacs_per_s": ceiling["gmacs_per_s"],
            "raised_by": ceiling["raised_by"], "theoretical": theoretical_peak(peak.dtype, device=dev)}


def _format_peak(peak: dict[str, Any]) -> str:
    kernels = peak.get("kernels") or {}
    line = (f"peak: {peak['best_gmacs_per_s']:.1f} GMAC/s {peak.get('dtype', 'float32')} (best of "
            f"{len(peak['samples_gmacs_per_s'])} rounds of " + ", ".join(
                f"{k} {v['best_gmacs_per_s']:.1f}" for k, v in kernels.items()) + ")")
    if peak.get("raised_by"):
        line += f"; raised from the measured {peak['measured_best_gmacs_per_s']:.1f} by the {peak['raised_by']} mode"
    theory = peak.get("theoretical") or {}
    if theory.get("gmacs_per_s"):
        line += (f"; theoretical ceiling {theory['gmacs_per_s']:.0f} ({theory['cores']} cores x "
                 f"{theory['macs_per_cycle_per_core']} MAC/cycle x {theory['clock_ghz']:.2f} GHz)")
    return line


def format_result(r: dict[str, Any]) -> str:
    """A short human-readable table of one :func:`benchmark` result."""
    rec = r["record"]
    lines = [
        f"{r['model']} {r['task']}  batch {r['batch']}  {r['size'][0]}x{r['size'][1]}  {r['device']}  "
        f"torch {r['torch']}  threads {rec['threads']}",
        f"work: {rec['gmacs_per_image']:.3f} GMACs per image ({rec['macs_convention']})",
        _format_peak(rec["peak"]),
        "",
        f"{'mode':10s} {'img/s p50':>10s} {'img/s best':>10s} {'p50 ms':>9s} {'p95 ms':>9s} {'GMAC/s':>8s} "
        f"{'% peak':>7s} {'% best':>7s} {'% adj':>6s} {'thr':>3s}",
    ]
    for mode in MODES:
        m = r[mode]
        lines.append(f"{mode:10s} {m['images_per_s']:10.2f} {m['images_per_s_best']:10.2f} {m['latency_ms_p50']:9.1f} "
                     f"{m['latency_ms_p95']:9.1f} {m['gmacs_per_s']:8.1f} {m['percent_of_peak']:7.1f} "
                     f"{m['percent_of_peak_best']:7.1f} {m['percent_of_adjacent_peak_p50']:6.1f} {m['threads']:3d}")
    lines.append(f"\nspeedup (p50): {r['speedup']:.2f}x   load average before {rec['loadavg_before']} "
                 f"after {rec['loadavg_after']}")
    settings = r["optimised"]["settings"]
    lines.append("optimised: " + ", ".join(f"{k}={v}" for k, v in settings.items()
                                          if k not in ("fold_bn",)) +
                 (f", fold_bn={settings['fold_bn']['folded']} pairs" if isinstance(settings.get("fold_bn"), dict)
                  else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Profiler table
# ---------------------------------------------------------------------------------------------------------------

_CONV_OPS = ("aten::mkldnn_convolution", "mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_",
             "aten::convolution_backward", "aten::_convolution", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
             "aten::_nnpack_spatial_convolution", "aten::cudnn_convolution", "aten::_mkldnn_convolution")
_ELEMENTWISE = ("aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::clamp", "aten::clamp_",
                "aten::clamp_min", "aten::clamp_min_", "aten::relu", "aten::relu_", "aten::hardtanh",
                "aten::hardtanh_", "aten::sigmoid", "aten::sigmoid_", "aten::copy_", "aten::native_batch_norm",
                "aten::hardtanh_backward", "aten::threshold_backward", "aten::sigmoid_backward")


def _classify(name: str, shapes: list[Any]) -> str:
    if name in _CONV_OPS or "convolution" in name:
        # forward: [input, weight, ...]; backward: [grad_out, input, weight, ...]
        if name == "aten::convolution_backward" and len(shapes) >= 3:
            x_shape, w_shape = shapes[1], shapes[2]
        elif len(shapes) >= 2 and name.endswith("_convolution_pointwise_") and len(shapes) >= 3:
            x_shape, w_shape = shapes[1], shapes[2]  # (other, input, weight, ...) for the in-place binary form
        elif len(shapes) >= 2:
            x_shape, w_shape = shapes[0], shapes[1]
        else:
            return "convolution"
        if isinstance(w_shape, list) and len(w_shape) == 4 and isinstance(x_shape, list) and len(x_shape) == 4:
            if w_shape[1] == 1 and x_shape[1] == w_shape[0] and w_shape[0] > 1:
                return f"conv depthwise {w_shape[2]}x{w_shape[3]}"
            if w_shape[2:] == [1, 1]:
                return "conv 1x1"
            return f"conv dense {w_shape[2]}x{w_shape[3]}"
        return "convolution (other)"
    if name in _ELEMENTWISE or name.endswith("_backward"):
        return "elementwise / norm"
    if "upsample" in name or "interpolate" in name:
        return "upsample"
    if name in ("aten::cat", "aten::stack"):
        return "concatenate"
    if "CompiledFxGraph" in name or "Compiled" in name:
        return "compiled kernels (fused elementwise)"
    return "other"


def profile_ops(
    model: str,
    size: tuple[int, int] = (200, 200),
    batch: int = 16,
    optimised: bool = True,
    options: OptimizeOptions | None = None,
    steps: int = 2,
    threads: int | None = None,
    top: int = 25,
    num_classes: int = 4,
    train: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``torch.profiler`` table of inference (or of a training step): top ops by self CPU time, and time per
    operator class.

    Args:
        optimised: profile the optimised model (default options without ``compile``, so ops stay visible) or
            the eager one.
        train: profile the training step that :func:`benchmark` times with ``train=True`` (forward,
            cross-entropy, backward, SGD); a convolution's backward kernel is counted as 2× its forward
            multiply-adds (input and weight gradients).
        model_kwargs: keyword arguments of the model's factory, as in :func:`benchmark`.

    Returns:
        {"model", "mode", "batch", "size", "total_self_cpu_ms", "ms_per_batch", "top_ops": [...],
        "by_shape": [...], "by_class": [...], "depthwise_share" (every depthwise convolution: the star blocks'
        7x7 and ELA's 1x7), "depthwise_7x7_share", "record": {...}}; times are totals over
        ``steps`` batches, shares are fractions of the total self CPU time. Convolution rows (by shape and by
        class) also carry their multiply-adds (``macs_per_call``, ``macs``: counted with forward hooks on the
        module that runs) and the rate they achieve (``gmacs_per_s`` = multiply-adds / self time).
    """
    from torch.profiler import ProfilerActivity, profile

    threads_used = set_threads(threads)
    load_before = _loadavg()
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    base = _build(model, num_classes, 0, model_kwargs).eval()
    options = options or OptimizeOptions(compile=False)
    if train:
        y = torch.randint(0, num_classes, (batch, *size), generator=torch.Generator().manual_seed(1))
        run: Callable[[], Any] = _train_runner(base, x, y, torch.device("cpu"), optimised, options, {})
        hooked: nn.Module = base
    elif optimised:
        fast = optimize_for_inference(base, options, example=x[:2])
        run = lambda: fast(x)  # noqa: E731
        hooked = fast
    else:
        def run() -> Any:
            with torch.no_grad():
                return base(x)
        hooked = base
    conv_macs = _conv_macs_by_shape(hooked, run)
    run()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            run()
    wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top_ops = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                "calls": e.count} for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    by_shape_events = prof.key_averages(group_by_input_shape=True)
    by_class: dict[str, float] = {}
    class_macs: dict[str, float] = {}
    by_shape = []
    for e in sorted(by_shape_events, key=lambda e: -e.self_cpu_time_total):
        shapes = list(e.input_shapes or [])
        cls = _classify(e.key, shapes)
        by_class[cls] = by_class.get(cls, 0.0) + e.self_cpu_time_total
        macs = _lookup_conv_macs(conv_macs, e.key, shapes)
        if macs is not None:
            class_macs[cls] = class_macs.get(cls, 0.0) + macs * e.count
        if len(by_shape) < top:
            by_shape.append({"op": e.key, "class": cls, "input_shapes": str(shapes)[:160],
                             "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                             "calls": e.count, "macs_per_call": macs,
                             "gmacs_per_s": _rate(macs * e.count if macs else None, e.self_cpu_time_total)})
    classes = [{"class": k, "self_cpu_ms": v / 1e3, "share": v / total, "macs": class_macs.get(k),
                "gmacs_per_s": _rate(class_macs.get(k), v)}
               for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])]
    depthwise = sum(v for k, v in by_class.items() if k.startswith("conv depthwise"))
    depthwise_7x7 = by_class.get("conv depthwise 7x7", 0.0)
    return {
        "model": model, "mode": "optimised" if optimised else "eager", "task": "train" if train else "inference",
        "batch": batch, "size": list(size),
        "steps": steps, "total_self_cpu_ms": total / 1e3, "ms_per_batch_wall": wall * 1e3,
        "depthwise_share": depthwise / total,
        "depthwise_7x7_share": depthwise_7x7 / total,
        "top_ops": top_ops, "by_shape": by_shape, "by_class": classes,
        "record": {"threads": threads_used, "loadavg_before": load_before, "loadavg_after": _loadavg(),
                   "model_kwargs": dict(model_kwargs or {}), "options": options.to_dict() if optimised else None,
                   "machine": machine_info("cpu"),
                   "note": "self CPU time summed over threads' op calls as torch.profiler reports it; shares are "
                           "fractions of the total; depthwise = convolutions with groups == channels",
                   "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def _conv_macs_by_shape(module: nn.Module, run: Callable[[], Any]) -> dict[tuple, int]:
    """Multiply-adds per call of every convolution ``module`` runs, keyed by (input shape, weight shape): one
    untimed call with forward hooks, so the profiler's per-shape times can be turned into achieved rates."""
    found: dict[tuple, int] = {}

    def hook(m: nn.Module, inputs: tuple, output: Tensor) -> None:
        x, w = tuple(inputs[0].shape), tuple(m.weight.shape)
        macs = int(output.numel() * w[1] * math.prod(w[2:]))
        found[(x, w)] = macs
        if isinstance(m, nn.Conv1d):  # CPU kernels run a 1-D convolution as a 2-D one of height 1
            found[((*x[:2], 1, x[2]), (*w[:2], 1, w[2]))] = macs

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return found


#: The ops that compute a convolution (the layers above them, aten::conv2d, aten::_convolution, aten::thnn_conv2d,
#: ..., only dispatch: their self time is overhead and their multiply-adds are the kernel's).
_CONV_KERNELS = frozenset({"aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::_conv_depthwise2d",
                           "aten::slow_conv_dilated2d", "aten::_nnpack_spatial_convolution",
                           "aten::cudnn_convolution", "aten::miopen_convolution"})


def _lookup_conv_macs(conv_macs: dict[tuple, int], op: str, shapes: list) -> int | None:
    """Multiply-adds of one call of a convolution *kernel* op (mkldnn, slow_conv2d, ...; a backward kernel counts
    twice its forward); None for other ops."""
    if op == "aten::convolution_backward" and len(shapes) >= 3 and shapes[1] and shapes[2]:
        forward = conv_macs.get((tuple(shapes[1]), tuple(shapes[2])))
        return None if forward is None else 2 * forward
    if op not in _CONV_KERNELS or len(shapes) < 2 or not shapes[0] or not shapes[1]:
        return None
    return conv_macs.get((tuple(shapes[0]), tuple(shapes[1])))


def _rate(macs: float | None, self_us: float) -> float | None:
    """GMAC/s from a MAC count and a self time in microseconds."""
    return None if not macs or self_us <= 0 else macs / (self_us / 1e6) / 1e9


def peak_gap(prof: dict[str, Any], peak_gmacs_per_s: float) -> list[dict[str, Any]]:
    """Where a profiled batch loses time against the machine's peak, per operator class.

    For each class of :func:`profile_ops`'s ``by_class``: its time per batch, the time its multiply-adds would
    take at ``peak_gmacs_per_s`` (zero for classes without multiply-adds: elementwise, upsampling, concatenation),
    the difference (``lost_ms``) and that difference's share of all lost time. The sum of ``ideal_ms`` over the
    sum of ``ms`` is the profile's percentage of peak; a class's ``lost_ms`` is what removing its inefficiency
    alone would save.

    A class whose own rate beats ``peak_gmacs_per_s`` raises the peak to that rate
    (:func:`smelib.tools.bench.peak_ceiling`), so that no percentage exceeds 100.

    Returns:
        Rows ``{"class", "ms", "ideal_ms", "lost_ms", "lost_share", "percent_of_peak"}``, most lost time first,
        then a ``"total"`` row that also holds the ``peak_gmacs_per_s`` used and ``peak_raised_by`` (a class, or
        None).
    """
    if peak_gmacs_per_s <= 0:
        raise ValueError(f"peak_gmacs_per_s must be > 0, got {peak_gmacs_per_s}")
    steps = prof["steps"]
    # an operator class faster than the peak raises it (percent of peak <= 100), as in peak_ceiling
    rates = {c["class"]: c["macs"] / steps / (c["self_cpu_ms"] / steps / 1e3) / 1e9 for c in prof["by_class"]
             if c.get("macs") and c["self_cpu_ms"] > 0}
    ceiling = peak_ceiling(peak_gmacs_per_s, rates)
    peak_gmacs_per_s = ceiling["gmacs_per_s"]
    rows = []
    for c in prof["by_class"]:
        ms = c["self_cpu_ms"] / steps
        ideal = (c.get("macs") or 0) / steps / (peak_gmacs_per_s * 1e9) * 1e3
        rows.append({"class": c["class"], "ms": ms, "ideal_ms": ideal, "lost_ms": ms - ideal,
                     "percent_of_peak": 100 * ideal / ms if c.get("macs") and ms > 0 else None})
    lost = sum(r["lost_ms"] for r in rows) or 1.0
    for r in rows:
        r["lost_share"] = r["lost_ms"] / lost
    rows.sort(key=lambda r: -r["lost_ms"])
    ms, ideal = sum(r["ms"] for r in rows), sum(r["ideal_ms"] for r in rows)
    rows.append({"class": "total", "ms": ms, "ideal_ms": ideal, "lost_ms": ms - ideal, "lost_share": 1.0,
                 "percent_of_peak": 100 * ideal / ms if ms > 0 else None, "peak_gmacs_per_s": peak_gmacs_per_s,
                 "peak_raised_by": ceiling["raised_by"]})
    return rows


def write_profile(prof: dict[str, Any], stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (everything) and ``<stem>.csv`` (the by-shape rows and the class totals)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    jpath, cpath = stem.with_suffix(".json"), stem.with_suffix(".csv")
    jpath.write_text(json.dumps(prof, indent=2) + "\n")
    with open(cpath, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["kind", "op_or_class", "input_shapes", "self_cpu_ms", "share", "calls"])
        for row in prof["by_class"]:
            wr.writerow(["class", row["class"], "", f"{row['self_cpu_ms']:.3f}", f"{row['share']:.4f}", ""])
        for row in prof["top_ops"]:
            wr.writerow(["op", row["op"], "", f"{row['self_cpu_ms']:.3f}", f"{row['share']:.4f}", row["calls"]])
        for row in prof["by_shape"]:
            wr.writerow(["op_shape", f"{row['op']} [{row['class']}]", row["input_shapes"],
                         f"{row['self_cpu_ms']:.3f}", f"{row['share']:.4f}", row["calls"]])
    return jpath, cpath
