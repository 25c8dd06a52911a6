"""Inference optimisations, each one switchable, and a wrapper that runs an optimised model.

:func:`optimize_for_inference` returns an :class:`OptimizedModel`: a deep copy of the model with the rewrites
below applied, that moves/lays out its input and runs under the right context. The original model is never
modified. Every optimisation is a flag of :class:`OptimizeOptions`, so the benchmark (:mod:`smelib.tools.bench`) can
measure each one on and off.

Graph rewrites (eval mode only; each is exact in real arithmetic, so outputs agree to float rounding):

* ``fold_bn`` — fold every BatchNorm that directly follows a convolution into that convolution's weight and
  bias (:func:`fold_batchnorm`): pairs adjacent in an ``nn.Sequential``, and pairs written as attributes
  (``self.bn(self.conv(x))``) found by tracing one forward pass, folded only when the convolution's output
  feeds nothing but that BatchNorm.
* ``fuse_msaa`` — MSAA's fusion block runs ``conv3x3(f) + conv5x5(f) + conv7x7(f)``: three parallel convolutions
  of one input, summed. That is one 7x7 convolution whose kernel is the sum of the three zero-padded kernels
  (bias: the sum of the biases). And MSAA's 1x1 ``down`` convolution reads ``cat([x, x, x])``: the same as a
  1x1 convolution of ``x`` with the three weight slices summed, which also saves the concatenation
  (:func:`fuse_msaa`).
* ``fuse_star`` — a star block's two 1x1 projections ``f1`` and ``f2`` read the same input: one 1x1 convolution
  with both weight sets stacked (:func:`fuse_star`).

Runtime settings:

* ``channels_last`` — NHWC activations and weights (oneDNN's native layout on CPU; tensor cores' on CUDA).
* ``inference_mode`` — ``torch.inference_mode()`` around the forward (no autograd bookkeeping).
* ``threads`` — intra-op threads for the optimised forward (set around each call and restored; ``None``
  leaves them). :func:`pick_threads` finds the fastest count by timing; on a loaded shared machine it is
  often fewer threads than cores.
* ``compile`` — ``torch.compile`` (Inductor; with ``freezing`` on CPU, which lets it constant-fold weights and
  fuse convolution + elementwise epilogues). It needs a C++ compiler on CPU and Triton on CUDA; when either is
  missing, or compilation fails at the first call, the wrapper falls back to the eager module and records why
  (``OptimizedModel.compile_status``).
* ``reuse_memory`` (CPU, glibc) — keep freed large blocks in the process's heap for reuse instead of returning
  them to the OS (:func:`~smelib.runtime.reuse_freed_memory`). Without it every activation larger than glibc's mmap
  threshold
  (at most 32 MB) is a fresh mapping whose pages fault in on first write: a star block's 1x1 expansion
  (16 x 256 x 50 x 50 floats, 41 MB) then spends most of its time in page faults. Process-wide and
  one-way: once set it also holds for anything else the process runs (the eager model timed beside it).
* CUDA only: ``amp`` (``"bf16"`` or ``"fp16"`` autocast), ``cudnn_benchmark`` (switched on around the optimised
  forward only), and host inputs copied from pinned memory with ``non_blocking=True``. On CPU these are ignored
  (and reported as off).

Example::

    from smelib.models import build
    from smelib.tools.optimize_inference import OptimizeOptions, optimize_for_inference
    model = build("sme_deeplabv3plus_lite").eval()
    fast = optimize_for_inference(model, OptimizeOptions(compile=False), example=torch.randn(1, 3, 200, 200))
    y = fast(torch.randn(16, 3, 200, 200))
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smelib.runtime import bf16_native, reuse_freed_memory

__all__ = [
    "FastMSAA",
    "FastStarBlock",
    "OPTIMISATIONS",
    "FoldReport",
    "OptimizeOptions",
    "OptimizedModel",
    "compile_available",
    "conv_bn_pairs",
    "fold_batchnorm",
    "fuse_msaa",
    "fuse_star",
    "max_abs_diff",
    "optimize_for_inference",
    "pick_threads",
]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: The switchable optimisations, in the order they are applied (names used by ``smelib bench --only/--disable``).
OPTIMISATIONS = ("fold_bn", "fuse_msaa", "fuse_star", "channels_last", "inference_mode", "compile", "reuse_memory",
                 "amp", "cudnn_benchmark", "pinned_memory", "fused_optimizer")

@dataclass
class OptimizeOptions:
    """Which optimisations :func:`optimize_for_inference` applies (all on except where noted).

    Attributes:
        fold_bn, fuse_msaa, fuse_star: graph rewrites (module docstring).
        channels_last: NHWC memory format for weights and inputs.
        inference_mode: run the forward under ``torch.inference_mode()`` (else ``torch.no_grad()``).
        compile: ``torch.compile`` with a fallback to eager (off by default: compiling takes tens of seconds).
        reuse_memory: on CPU, :func:`~smelib.runtime.reuse_freed_memory` (process-wide).
        threads: intra-op threads around each optimised forward (``None``: leave as is).
        amp: CUDA autocast dtype, ``"bf16"``, ``"fp16"`` or ``None`` (fp32). Ignored on CPU unless ``cpu_amp``.
            ``"bf16"`` becomes fp16 on a GPU without native bf16 (:func:`smelib.runtime.bf16_native`).
        cpu_amp: also autocast on CPU, in bf16 (``amp`` must then be ``"bf16"``). On CPUs with AMX or AVX-512-BF16
            units convolutions run at a multiple of their fp32 rate; off by default because it changes the
            numbers (bf16 keeps 8 bits of mantissa): measure the accuracy before deploying it
            (``smelib eval --bf16``).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark = True`` on CUDA.
        pinned_memory: copy host inputs to CUDA from pinned memory, ``non_blocking``. Inputs that are already
            pinned are copied ``non_blocking``; others are not pinned per call (pinning allocates page-locked memory
            and copies, which costs more than it saves): pin a reused input once (:mod:`smelib.tools.bench` does).
        cuda_graphs: with ``compile`` on CUDA, compile in ``mode="reduce-overhead"`` (CUDA graphs), which removes
            the per-kernel launch cost that dominates small batches. Off by default: a graph's outputs are
            overwritten by its next call (clone what you keep).
        fused_optimizer: training step only (:mod:`smelib.tools.bench`): the optimiser's fused kernel, where the
            device has one.
    """

    fold_bn: bool = True
    fuse_msaa: bool = True
    fuse_star: bool = True
    channels_last: bool = True
    inference_mode: bool = True
    compile: bool = False
    reuse_memory: bool = True
    threads: int | None = None
    amp: str | None = None
    cudnn_benchmark: bool = True
    pinned_memory: bool = True
    cpu_amp: bool = False
    fused_optimizer: bool = True
    cuda_graphs: bool = False

    def autocast_dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The autocast dtype on ``device`` (None: fp32).

        Raises:
            ValueError: ``cpu_amp`` with an ``amp`` other than ``"bf16"`` (CPU autocast here is bf16 only).
        """
        dev = torch.device(device)
        if dev.type == "cuda" and self.amp:
            if self.amp == "bf16" and not bf16_native(dev):
                return torch.float16  # emulated bf16 (capability < 8.0): no bf16 cuDNN convolutions
            return {"bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]
        if dev.type == "cpu" and self.cpu_amp:
            if self.amp != "bf16":
                raise ValueError(f"cpu_amp needs amp='bf16' (CPU autocast runs in bf16), got amp={self.amp!r}")
            return torch.bfloat16
        return None

    @classmethod
    def from_names(cls, only: list[str] | None = None, disable: list[str] | None = None, **kw: Any) -> OptimizeOptions:
        """Options with every flag of :data:`OPTIMISATIONS` on (``compile`` included), then ``only``/``disable``.

        ``only``: exactly these flags on, the others off. ``disable``: these flags off. ``amp`` counts as on when
        ``kw["amp"]`` names a dtype. Unknown names raise ``ValueError``.
        """
        for name in (only or []) + (disable or []):
            if name not in OPTIMISATIONS:
                raise ValueError(f"unknown optimisation {name!r}; choose from {', '.join(OPTIMISATIONS)}")
        flags = {n: True for n in OPTIMISATIONS if n != "amp"}
        if only is not None:
            flags = {n: n in only for n in flags}
        for name in disable or []:
            flags[name] = False
        amp = kw.pop("amp", "bf16")
        if (only is not None and "amp" not in only) or "amp" in (disable or []):
            amp = None
        return cls(**flags, amp=amp, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------------------------


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float32 on the CPU."""
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: pairs folded (by how they were found) and BatchNorms left."""

    sequential: list[str] = field(default_factory=list)
    traced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    batchnorms_left: int = 0

    @property
    def folded(self) -> int:
        return len(self.sequential) + len(self.traced)

    def to_dict(self) -> dict[str, Any]:
        return {"folded": self.folded, "sequential": len(self.sequential), "traced": len(self.traced),
                "skipped": self.skipped, "batchnorms_left": self.batchnorms_left}


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(conv, _CONVS) or not isinstance(bn, _BNS):
        return False
    if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
        return False
    return conv.weight.dim() - 2 == {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}[type(bn)]


def _fold_into(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new convolution equal to ``bn(conv(x))`` in eval mode (computed in float64, cast back)."""
    fused = copy.deepcopy(conv)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                              device=w.device)
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    fused.weight = nn.Parameter((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype),
                                requires_grad=conv.weight.requires_grad)
    fused.bias = nn.Parameter(((b - mean) * scale + beta).to(conv.weight.dtype),
                              requires_grad=conv.weight.requires_grad)
    return fused


def _named_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


class _UseCounter(torch.overrides.TorchFunctionMode):
    """Counts, per tensor id, how many torch functions take the tensor as an argument (metadata reads excluded)."""

    _IGNORED = {"size", "dim", "shape", "__get__", "numel", "is_contiguous", "stride", "ndimension", "__len__",
                "data_ptr", "element_size", "is_floating_point", "get_device", "__format__", "__repr__"}

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in self._IGNORED:
            for t in _tensors_in((args, kwargs)):
                self.uses[id(t)] = self.uses.get(id(t), 0) + 1
        return func(*args, **kwargs)


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors_in(o)


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, bool]]:
    """Every BatchNorm whose input is a convolution's output, found by tracing one forward pass on ``example``.

    Returns:
        ``(conv_name, bn_name, exclusive)`` triples; ``exclusive`` is true when the convolution ran once, the
        BatchNorm ran once, and the convolution's output went into nothing but that BatchNorm (so folding the
        pair leaves every other computation unchanged).
    """
    names = {m: n for n, m in model.named_modules()}
    conv_out: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    bn_in: list[tuple[nn.Module, torch.Tensor]] = []
    calls: dict[nn.Module, int] = {}
    keep: list[torch.Tensor] = []  # keep traced tensors alive so their ids stay unique

    def conv_hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        calls[m] = calls.get(m, 0) + 1
        if isinstance(out, torch.Tensor):
            conv_out[id(out)] = (m, out)
            keep.append(out)

    def bn_hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        calls[m] = calls.get(m, 0) + 1
        if args and isinstance(args[0], torch.Tensor):
            bn_in.append((m, args[0]))
            keep.append(args[0])

    handles = []
    for m in model.modules():
        if isinstance(m, _CONVS):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, _BNS):
            handles.append(m.register_forward_pre_hook(bn_hook))
    counter = _UseCounter()
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn, x in bn_in:
        hit = conv_out.get(id(x))
        if hit is None or hit[1] is not x:
            continue
        conv = hit[0]
        # One use is the BatchNorm's own F.batch_norm call.
        exclusive = calls.get(conv) == 1 and calls.get(bn) == 1 and counter.uses.get(id(x), 0) == 1
        pairs.append((names[conv], names[bn], exclusive))
    return pairs


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> FoldReport:
    """Fold every BatchNorm that directly follows a convolution into it, in place; BatchNorms become Identity.

    Args:
        model: in eval mode (folding uses the running statistics; a model in training mode is refused).
        example: an input for one traced forward pass, to also find pairs written as attributes
            (``self.bn(self.conv(x))``); without it only ``nn.Sequential`` neighbours are folded.

    Returns:
        :class:`FoldReport`.

    Raises:
        ValueError: the model is in training mode.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it folds the running statistics)")
    report = FoldReport()
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        items = list(seq._modules.items())
        for (n1, conv), (n2, bn) in zip(items, items[1:]):
            if conv is not None and bn is not None and _foldable(conv, bn):
                seq._modules[n1] = _fold_into(conv, bn)
                seq._modules[n2] = nn.Identity()
                report.sequential.append(f"{seq_name}.{n2}" if seq_name else n2)
    if example is not None:
        for conv_name, bn_name, exclusive in conv_bn_pairs(model, example):
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            if not exclusive or not _foldable(conv, bn):
                report.skipped.append(bn_name)
                continue
            parent, attr = _named_parent(model, conv_name)
            setattr(parent, attr, _fold_into(conv, bn))
            parent, attr = _named_parent(model, bn_name)
            setattr(parent, attr, nn.Identity())
            report.traced.append(bn_name)
    report.batchnorms_left = sum(isinstance(m, _BNS) for m in model.modules())
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exact rewrites of MSAA and the star block
# ---------------------------------------------------------------------------------------------------------------


class FastMSAA(nn.Module):
    """MSAA (repeat form) with its ``down`` 1x1 conv summed over the repeats and its three convs as one 7x7.

    Same function as :class:`smelib.models.msaa_ela.MSAA` with ``num_inputs=1`` (any ``repeat``), eval mode.
    """

    def __init__(self, msaa: nn.Module) -> None:
        super().__init__()
        fusion = msaa.fusion
        dim = fusion.dim
        self.down = copy.deepcopy(fusion.down)
        w = fusion.down.weight.detach()
        in_ch = w.shape[1] // msaa.repeat
        self.down.weight = nn.Parameter(w.reshape(w.shape[0], msaa.repeat, in_ch, *w.shape[2:]).sum(1))
        self.down.in_channels = in_ch
        k = max(c.kernel_size[0] for c in (fusion.conv3x3, fusion.conv5x5, fusion.conv7x7))
        self.conv = nn.Conv2d(dim, dim, k, padding=k // 2).to(w.device, w.dtype)
        weight = torch.zeros_like(self.conv.weight)
        bias = torch.zeros_like(self.conv.bias)
        for c in (fusion.conv3x3, fusion.conv5x5, fusion.conv7x7):
            p = (k - c.kernel_size[0]) // 2
            weight += F.pad(c.weight.detach(), (p, p, p, p))
            if c.bias is not None:
                bias += c.bias.detach()
        self.conv.weight = nn.Parameter(weight)
        self.conv.bias = nn.Parameter(bias)
        self.channel_attention = fusion.channel_attention
        self.spatial_attention = fusion.spatial_attention
        self.up = fusion.up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.down(x)
        fc = f * self.channel_attention(f)
        fs = self.conv(f)
        fs = fs * self.spatial_attention(fs)
        return self.up(fs + fc)


def _msaa_fusable(m: nn.Module) -> bool:
    from smelib.models.msaa_ela import MSAA

    if not isinstance(m, MSAA) or m.num_inputs != 1:
        return False
    f = m.fusion
    convs = (f.conv3x3, f.conv5x5, f.conv7x7)
    return all(c.stride == (1, 1) and c.dilation == (1, 1) and c.groups == 1 and c.kernel_size[0] == c.kernel_size[1]
               and c.padding == (c.kernel_size[0] // 2,) * 2 for c in convs) and f.down.kernel_size == (1, 1)


def fuse_msaa(model: nn.Module) -> int:
    """Replace every single-input MSAA by :class:`FastMSAA`, in place; returns how many were replaced."""
    count = 0
    for name, m in list(model.named_modules()):
        if name and _msaa_fusable(m):
            parent, attr = _named_parent(model, name)
            setattr(parent, attr, FastMSAA(m))
            count += 1
    return count


class FastStarBlock(nn.Module):
    """A star block with ``f1`` and ``f2`` as one 1x1 convolution of twice the width (eval mode)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.dwconv = block.dwconv
        f1, f2 = block.f1.conv, block.f2.conv
        self.hidden = f1.out_channels
        self.f12 = nn.Conv2d(f1.in_channels, 2 * self.hidden, 1).to(f1.weight.device, f1.weight.dtype)
        self.f12.weight = nn.Parameter(torch.cat([f1.weight.detach(), f2.weight.detach()]))
        self.f12.bias = nn.Parameter(torch.cat([f1.bias.detach(), f2.bias.detach()]))
        self.g = block.g
        self.dwconv2 = block.dwconv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.f12(self.dwconv(x)).split(self.hidden, dim=1)
        return x + self.dwconv2(self.g(F.relu6(a) * b))


def fuse_star(model: nn.Module) -> int:
    """Replace every StarBlock (whose f1/f2 have no BatchNorm) by :class:`FastStarBlock`, in place."""
    from smelib.models.backbones.starnet import StarBlock

    count = 0
    for name, m in list(model.named_modules()):
        if name and isinstance(m, StarBlock) and len(m.f1) == 1 and len(m.f2) == 1 and isinstance(m.act, nn.ReLU6):
            parent, attr = _named_parent(model, name)
            setattr(parent, attr, FastStarBlock(m))
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------------------
# Runtime: threads, compile, the wrapper
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def threads_for(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: unchanged), then restore the previous count."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def pick_threads(fn: Callable[[], Any], candidates: list[int] | None = None,
                 trials: int = 2) -> tuple[int, dict[int, float]]:
    """The intra-op thread count at which ``fn`` runs fastest (best of ``trials`` calls per candidate).

    On a machine shared with other processes, fewer threads than cores can be much faster: an OpenMP parallel
    region waits for its slowest thread, and a thread whose core is taken by another process stalls every
    region. Returns ``(best, {threads: seconds})``; the previous thread count is restored.
    """
    import time

    candidates = candidates or list(range(1, (os.cpu_count() or 1) + 1))
    timings: dict[int, float] = {}
    for n in candidates:
        with threads_for(n):
            fn()
            best = float("inf")
            for _ in range(trials):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
        timings[n] = best
    return min(timings, key=timings.__getitem__), timings


def compile_available(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``torch.compile`` (Inductor) can work here: ``(ok, reason)`` without compiling anything."""
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            if not has_triton():
                return False, "Triton is not installed or does not support this GPU"
        except Exception as err:  # pragma: no cover - depends on the install
            return False, f"cannot check for Triton: {err}"
        return True, "triton available"
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++")
    if path is None:
        return False, f"no C++ compiler found (looked for {cxx!r}, g++, clang++)"
    return True, f"C++ compiler {path}"


def _compile(module: nn.Module, device: torch.device, cuda_graphs: bool = False) -> Callable[..., Any]:
    """``torch.compile`` of ``module``: frozen weights on the CPU; CUDA graphs on CUDA when ``cuda_graphs``."""
    if device.type == "cuda" and cuda_graphs:
        return torch.compile(module, dynamic=False, mode="reduce-overhead")
    options = {"freezing": True} if device.type == "cpu" else {}
    return torch.compile(module, dynamic=False, options=options)


class OptimizedModel(nn.Module):
    """An eval-mode model with optimisations applied, plus how to call it (see :func:`optimize_for_inference`).

    Attributes:
        module: the rewritten eager module.
        options: the :class:`OptimizeOptions` asked for.
        applied: what actually ran (rewrites with counts, runtime settings, compile status).
        compile_status: ``"off"``, ``"pending"`` (not called yet), ``"compiled"`` or ``"fallback: <why>"``.
    """

    def __init__(self, module: nn.Module, options: OptimizeOptions, device: torch.device,
                 applied: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.options = options
        self.device = device
        self.applied = applied
        self._compiled: Callable[..., Any] | None = None
        self.compile_status = "off"
        if options.compile:
            ok, why = compile_available(device)
            if ok:
                self._compiled = _compile(module, device, options.cuda_graphs)
                self.compile_status = "pending"
            else:
                self.compile_status = f"fallback: {why}"
        self.applied["compile"] = self.compile_status

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the forward, or None for fp32."""
        return self.options.autocast_dtype(self.device)

    def context(self) -> contextlib.ExitStack:
        """The grad mode and autocast the forward runs under."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode() if self.options.inference_mode else torch.no_grad())
        if self.amp_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.amp_dtype))
        if self.device.type == "cuda" and self.options.cudnn_benchmark:
            # scoped to the optimised forward, so an eager model timed beside it keeps its own setting
            previous = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
            stack.callback(setattr, torch.backends.cudnn, "benchmark", previous)
        return stack

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Move ``x`` to the model's device (pinned, non-blocking from the host on CUDA) in the chosen layout."""
        # A host input is copied non_blocking only when already pinned (non_blocking from pageable memory is a
        # synchronous copy anyway); it is never pinned here, per call (see OptimizeOptions.pinned_memory).
        non_blocking = (self.device.type == "cuda" and x.device.type == "cpu" and self.options.pinned_memory
                        and x.is_pinned())
        fmt = torch.channels_last if self.options.channels_last and x.dim() == 4 else torch.contiguous_format
        return x.to(self.device, non_blocking=non_blocking).contiguous(memory_format=fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.context(), threads_for(self.options.threads if self.device.type == "cpu" else None):
            x = self.prepare(x)
            if self._compiled is not None:
                try:
                    y = self._compiled(x)
                    if self.compile_status == "pending":
                        self.compile_status = self.applied["compile"] = "compiled"
                    return y
                except Exception as err:  # any compiler/toolchain failure: fall back to eager, remember why
                    self._compiled = None
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    self.compile_status = self.applied["compile"] = f"fallback: {type(err).__name__}: {first[:300]}"
            return self.module(x)


def optimize_for_inference(
    model: nn.Module,
    options: OptimizeOptions | None = None,
    example: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    verify_atol: float | None = 1e-4,
) -> OptimizedModel:
    """A copy of ``model`` with the optimisations of ``options`` applied (``model`` itself is not changed).

    Args:
        model: any module; the copy is put in eval mode.
        options: which optimisations (default: :class:`OptimizeOptions` defaults).
        example: an input used to find attribute-style Conv→BN pairs and to check the rewrites numerically.
        device: where the optimised model runs (default: where ``model``'s parameters are).
        verify_atol: with ``example``, raise ``RuntimeError`` if the rewritten eager module differs from the
            original by more than this (max abs diff, fp32 on the CPU side); ``None`` skips the check.

    Returns:
        :class:`OptimizedModel`; ``.applied`` records what was done (and ``verify_max_abs_diff``).
    """
    options = options or OptimizeOptions()
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if options.threads is not None and options.threads < 1:
        raise ValueError(f"threads must be >= 1, got {options.threads}")
    applied: dict[str, Any] = {"threads": options.threads or torch.get_num_threads()}
    reference = model
    module = copy.deepcopy(model).eval().to(device)
    ex = example.to(device) if example is not None else None
    if options.fold_bn:
        applied["fold_bn"] = fold_batchnorm(module, ex).to_dict()
    else:
        applied["fold_bn"] = False
    applied["fuse_msaa"] = fuse_msaa(module) if options.fuse_msaa else False
    applied["fuse_star"] = fuse_star(module) if options.fuse_star else False
    if ex is not None and verify_atol is not None:
        was = reference.training
        ref_param = next(reference.parameters(), None)
        ref_device = ref_param.device if ref_param is not None else torch.device("cpu")
        reference.eval()
        # On CUDA, cuDNN convolutions may run in TF32 by default; compare in true fp32.
        tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            with torch.no_grad():
                diff = max_abs_diff(module(ex), reference(example.to(ref_device)))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
            reference.train(was)
        applied["verify_max_abs_diff"] = diff
        if not diff <= verify_atol:
            raise RuntimeError(f"optimised model differs from the original by {diff:.3g} > {verify_atol}")
    if options.channels_last:
        module = module.to(memory_format=torch.channels_last)
    applied["channels_last"] = options.channels_last
    applied["inference_mode"] = options.inference_mode
    is_cuda = device.type == "cuda"
    amp_dtype = options.autocast_dtype(device)
    applied["amp"] = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype] if amp_dtype else False
    applied["reuse_memory"] = bool(device.type == "cpu" and options.reuse_memory and reuse_freed_memory())
    applied["cudnn_benchmark"] = bool(is_cuda and options.cudnn_benchmark)
    applied["pinned_memory"] = bool(is_cuda and options.pinned_memory)
    return OptimizedModel(module, options, device, applied)


def options_summary(options: OptimizeOptions) -> dict[str, Any]:
    """The options as a plain dict (for records)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}
