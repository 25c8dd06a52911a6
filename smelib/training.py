"""Training: :func:`train` reads top to bottom as set-up (``_prepare``), the loop (:func:`fit`) and the final
evaluation (``_finish``); checkpoints, run records, resume and progress are named helpers below them.

The API the CLI and the book call::

    result = train(config, out=None, resume=False)   # -> RunResult(.record, .run_dir, .best_checkpoint, ...)
    metrics = evaluate(model_or_checkpoint, dataset, tta=False)   # -> smelib.metrics.SegMetrics
    masks = predict(model_or_checkpoint, images, tta=False)       # -> list of (H, W) uint8 arrays
    model, meta = load_checkpoint(path)                           # torch.load(weights_only=True)

``config`` is a dict (partial: laid over :data:`smelib.config.DEFAULTS`) or the result of
:func:`smelib.config.load_config`; see :mod:`smelib.config` for every key.

Determinism and resume. Everything random derives from ``train.seed``: the model's initialisation (torch seeded
just before the model is built), each epoch's data order (a permutation drawn from ``(seed, epoch)``), each
sample's augmentation (python/numpy/torch generators seeded from ``(seed, epoch, index)`` around the call and
restored afterwards, so it depends neither on the worker, the rank, nor what ran before), and dropout /
drop-path (the global torch generator, whose state every checkpoint stores). ``--resume`` reloads model,
optimiser, scaler, schedule and RNG states from ``last.pt`` (written every ``train.checkpoint_every_steps``
steps and at every epoch end), rebuilds the interrupted epoch's order and skips the batches already done: on
CPU the resumed run ends bit-identical to an uninterrupted one. On CUDA it does not, even with
``train.deterministic`` (some CUDA backward kernels are not deterministic); it continues in the precision the
checkpoint stores (``precision``), and under DDP each rank resumes its own RNG stream. The record's ``host`` and
``git`` are the last process's; its ``segments`` list every process's share (start, host, commit, steps, wall
seconds), so a run resumed on another machine says so and is left out of speed estimates
(:func:`smelib.study.results.timed_on_one_host`).

Distributed. Under ``torchrun`` the global batch ``data.batch_size`` is split evenly over the processes (each
takes a contiguous slice of every global batch, :func:`smelib.distributed.shard`), DDP averages gradients (the
mean of equal-sized per-rank means is the global mean for pixel-averaged losses), BatchNorm becomes
SyncBatchNorm on CUDA, evaluation shards images over ranks and sums the confusion matrices, and rank 0 alone
logs and writes.

The paper's unspecified mechanisms (:mod:`smelib.mechanisms`, all off by default): ``model_init`` sets the
classifier bias to the training split's log class frequencies and/or class-weights the loss; ``eval.decision``
chooses how the final metrics label pixels (argmax, or a static or dynamic threshold on the defect
probability). The training split's statistics are always counted and stored (``train_stats`` in the record and
the checkpoints); with the options off, training is bit-identical to a run without them.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smelib import __version__
from smelib import distributed as D
from smelib.distributed import DistContext
from smelib import mechanisms as M
from smelib import records as R
from smelib.checkpoint import (
    CHECKPOINT_VERSION,
    FORMAT,
    CheckpointError,
    atomic_save,
    capture_rng,
    check_state_dict,
    load_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    restore_rng,
    sha256_file,
)
from smelib.config import ConfigError, dump_yaml, load_config, resolve
from smelib.data.loading import (
    DataBundle,
    TrainView,
    derive_seed,
    epoch_batches,
    load_data,
    pad_collate,
    size_tuple,
    worker_init,
)
from smelib.inference import evaluate, predict_dataset, unwrap
from smelib.losses import DistillationLoss, build_loss
from smelib.models import DeepLabV3Plus, build
from smelib.models.complexity import fvcore_macs
from smelib.optim import WeightEMA, build_optimizer, build_schedule
from smelib.runtime import (
    PRECISIONS,
    bf16_native,
    choose_precision,
    precision_name,
    resolve_device,
    reuse_freed_memory,
    seed_everything,
    setup_runtime,
)
from smelib.settings import repo_root

__all__ = [
    "RESUME_MAY_DIFFER",
    "Run",
    "RunLog",
    "RunResult",
    "TrainingDiverged",
    "build_model",
    "fit",
    "train",
]

#: Keys that may differ between a run's config and the one given with ``--resume`` (where and how, not what).
RESUME_MAY_DIFFER = {("data", "root"), ("data", "workers"), ("train", "threads"), ("train", "device")}

#: Off the CPU, the step losses are checked for NaN/inf every this many steps (and before every checkpoint and at
#: every epoch end), not every step: reading a CUDA loss on the host waits for the GPU to finish the step.
LOSS_CHECK_STEPS = 25


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and ``last.pt`` still holds the last good state."""


@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        record: the run record (the content of ``record.json``).
        run_dir: the run's directory.
        best_checkpoint: ``checkpoints/best.pt`` (None when no validation ran).
        last_checkpoint: ``checkpoints/last.pt`` (the resumable state).
        history: the per-epoch rows of ``log.csv``.
    """

    record: dict[str, Any]
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        """The checkpoint the final metrics were measured with (best if any, else last)."""
        return self.best_checkpoint or self.last_checkpoint


@dataclass
class Run:
    """Everything one training run holds while it trains (built by ``_prepare``, used by :func:`fit`).

    ``model`` is the bare module (what checkpoints store); ``net`` is what the step calls (``model`` itself, or its
    DDP wrapper). ``state`` is the resumable progress (epoch, step, best, history, timing), saved in every checkpoint.
    """

    cfg: dict[str, Any]
    ctx: DistContext
    device: torch.device
    seed: int
    bundle: DataBundle
    num_classes: int
    class_names: list[str]
    batch: int
    rule: M.DecisionRule
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    amp: torch.dtype | None
    channels_last: bool
    state: dict[str, Any]
    log: RunLog
    verbose: bool
    bars: bool
    precision_reason: str = ""
    ema: WeightEMA | None = None
    teacher: nn.Module | None = None  # train.distill: a frozen model whose softened outputs the student also fits
    distill: DistillationLoss | None = None  # set together with ``teacher``
    teacher_info: dict[str, Any] | None = None  # the teacher's run id, model, best epoch and file hash (the record)

    def eval_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`smelib.inference.evaluate` for this run."""
        dc = self.cfg["data"]
        return dict(num_classes=self.num_classes, ignore_index=dc["ignore_index"], size=dc["size"],
                    batch_size=dc["eval_batch_size"], amp_dtype=self.amp, channels_last=self.channels_last,
                    ctx=self.ctx)


# ---------------------------------------------------------------------------------------------------------------
# Training, top to bottom
# ---------------------------------------------------------------------------------------------------------------


def train(
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    allow_thread_change: bool = False,
) -> RunResult:
    """Train a model as ``config`` says, write checkpoints, ``log.csv`` and ``record.json``; return the result.

    Args:
        config: a (partial) config dict, laid over :data:`smelib.config.DEFAULTS`, or a YAML path. With
            ``resume`` it may be None (the run's own config is used); otherwise it must equal the run's config
            except for :data:`~smelib.training.RESUME_MAY_DIFFER`.
        out: the run directory. New runs: must not exist or be empty (default: a fresh
            ``<runs_dir>/<run_id>``). With ``resume``: the run to continue.
        runs_dir: where new run directories go when ``out`` is None (default ``<repo>/results/runs``).
        resume: continue the run in ``out`` from ``out/checkpoints/last.pt``.
        quiet: no progress bars or log lines.
        allow_thread_change: resume with another intra-op thread count than the run's (on CPU the resumed run is
            then no longer bit-identical to an uninterrupted one, since float sums split differently).

    Returns:
        :class:`RunResult`.

    Raises:
        ConfigError: invalid config, or a resume config that differs from the run's.
        smelib.records.RunDirError: ``out`` holds another run (new run) or no checkpoint (resume).
        TrainingDiverged: non-finite loss; ``last.pt`` holds the last good state and the record says so.
    """
    started = time.time()
    lock = R.RunLock()  # one process trains a run folder at a time (rank 0 holds it)
    try:
        if out is not None and os.environ.get("RANK", "0") == "0":
            lock.acquire(out)
        cfg, ckpt = _run_config(config, out, resume)
        tc = cfg["train"]
        ctx = D.setup("cuda" if tc["device"].startswith("cuda") or (tc["device"] == "auto" and
                                                                     torch.cuda.is_available()) else "cpu")
        try:
            device = resolve_device(tc["device"], ctx.local_rank, ctx.world_size)
            run = _prepare(cfg, ctx, device, ckpt, out, runs_dir, quiet, started, lock, allow_thread_change)
            fit(run)
            return _finish(run)
        finally:
            D.teardown(ctx)
    finally:
        lock.release()


def _prepare(cfg: dict[str, Any], ctx: DistContext, device: torch.device, ckpt: dict[str, Any] | None,
             out: str | os.PathLike | None, runs_dir: str | os.PathLike | None, quiet: bool, started: float,
             lock: R.RunLock, allow_thread_change: bool) -> Run:
    """Data, model, optimiser, schedule, loss, the restored state of a resumed run, and the run's folder."""
    tc, dc = cfg["train"], cfg["data"]
    seed = int(tc["seed"])
    setup_runtime(cfg, device)
    if ckpt is not None and not allow_thread_change:
        _check_threads(ckpt)
    seed_everything(seed)
    bundle = load_data(cfg, seed=seed)
    num_classes = int(dc["num_classes"] or bundle.num_classes)
    class_names = list(bundle.class_names)[:num_classes]
    class_names += [f"class {i}" for i in range(len(class_names), num_classes)]
    batch = int(dc["batch_size"])
    if batch % ctx.world_size:
        raise ConfigError(f"data.batch_size={batch} (the global batch) must divide by the {ctx.world_size} processes")
    steps_per_epoch = len(bundle.train) // batch
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size={batch} is larger than the {len(bundle.train)} training images")
    # Label statistics of the training split only (smelib.mechanisms): pure counting, no random draw.
    train_stats = M.training_stats(bundle.train, num_classes, int(dc["ignore_index"]))
    try:  # the decision rule of the final metrics (eval.decision), checked before any training
        rule = M.rule_from_config(cfg["eval"], train_stats)
    except ValueError as err:
        raise ConfigError(f"eval.decision: {err}") from None

    seed_everything(seed)  # the initial weights depend on train.seed only
    model = build_model(cfg, num_classes).to(device)
    if cfg["model"]["init"]:
        _init_from(model, cfg["model"]["init"], cfg["model"]["name"], num_classes)
    try:  # model_init: a no-op when its options are off
        mechanisms = M.apply_model_init(cfg, model, train_stats)
    except ValueError as err:
        raise ConfigError(f"model_init: {err}") from None
    amp, precision_reason = choose_precision(tc["amp"], device)
    if ckpt is not None:
        amp, precision_reason = _resume_precision(ckpt, tc["amp"], device, amp, precision_reason)
    # auto = on for CPU too: oneDNN's native layout, faster for every table model (the Speed chapter times it);
    # results differ from NCHW by float rounding only.
    channels_last = True if tc["channels_last"] == "auto" else bool(tc["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Speed only (results are unchanged): without it every large activation is a fresh page-faulting mapping.
    reuse_memory = device.type == "cpu" and reuse_freed_memory()
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    criterion = build_loss(cfg["loss"], num_classes, ignore_index=dc["ignore_index"],
                           class_weights=mechanisms["class_weights"]).to(device)
    net = _distribute(model, cfg, ctx, device)
    model = unwrap(net)

    state = _fresh_state()
    if ckpt is not None:
        _restore(ckpt, cfg, num_classes, model, optimizer, scaler, schedule, state, ctx)
    run_dir = _run_dir(cfg, ctx, ckpt, out, runs_dir, seed)
    if ctx.is_main and not lock.held:
        lock.acquire(run_dir)  # a new run folder named by its run id
    log = RunLog(run_dir, ctx, started, state)
    verbose = not quiet and ctx.is_main
    run = Run(cfg, ctx, device, seed, bundle, num_classes, class_names, batch, rule, model, net, optimizer, schedule,
              scaler, criterion, amp, channels_last, state, log, verbose, verbose and sys.stderr.isatty(),
              precision_reason)
    if tc["ema"]:
        run.ema = WeightEMA(model, float(tc["ema"]))
        if ckpt is not None and "train_model" in ckpt:
            run.ema.load_state_dict(ckpt["model"])
            run.ema.updates = int(ckpt.get("ema_updates", state["global_step"]))
    if tc["distill"]:
        run.teacher, run.teacher_info = _load_teacher(tc["distill"]["teacher"], run, device)
        run.distill = DistillationLoss(float(tc["distill"]["temperature"]), int(dc["ignore_index"]))
    log.start(run, train_stats, mechanisms, reuse_memory, steps_per_epoch)
    return run


def _load_teacher(spec: str, run: Run, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """``train.distill.teacher``: a verified checkpoint (path or release name) for the same classes, trained on
    inputs normalised like this run's (else its soft targets would answer a different question), frozen."""
    try:
        path = resolve_checkpoint(spec)
        # building the teacher initialises weights it then overwrites: outside the run's random stream, so that
        # the student sees the dropout masks of the same run without a teacher (a paired comparison)
        with torch.random.fork_rng(devices=[]):
            teacher, meta = load_checkpoint(path, num_classes=run.num_classes, device=device)
    except (CheckpointError, OSError) as err:
        raise ConfigError(f"train.distill.teacher: {err}") from None
    norm = meta.get("normalization") or {}
    ours = {"mean": run.bundle.mean, "std": run.bundle.std}
    if norm and any(not np.allclose(np.asarray(norm[k], dtype=float), np.asarray(ours[k], dtype=float), atol=1e-4)
                    for k in ("mean", "std")):
        raise ConfigError(f"train.distill.teacher: {spec} normalises inputs with {norm}, this run with {ours}")
    if run.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    teacher.requires_grad_(False)
    info = {"run_id": meta.get("run_id"), "model": meta.get("model_name"), "best": meta.get("best"),
            "sha256": sha256_file(path)}
    return teacher.eval(), info


def fit(run: Run) -> None:
    """The epoch and step loop: train each epoch's batches, validate, keep the best and the resumable state.

    A resumed run starts inside the epoch it stopped in, skipping the batches already done. ``train.max_steps``
    ends the loop early (the last epoch is then cut short and still validated).
    """
    cfg, state, device = run.cfg, run.state, run.device
    tc, dc = cfg["train"], cfg["data"]
    view = TrainView(run.bundle.train, run.bundle.augment, run.seed, size_tuple(dc["size"]))
    collate = partial(pad_collate, ignore_index=dc["ignore_index"])
    max_steps = tc["max_steps"] or math.inf
    every, epochs = int(tc["checkpoint_every_steps"]), int(tc["epochs"])
    progress = _Progress(run, epochs)
    watch = _LossWatch(run, _loss_check_every(device))
    stop = state["global_step"] >= max_steps
    epoch = state["epoch"]
    try:  # the bars close however the loop ends (a diverged loss included)
        while epoch < epochs and not stop:
            batches = epoch_batches(len(run.bundle.train), run.batch, run.seed, epoch)
            todo = batches[state["batches_done"]:]
            if max_steps < math.inf:
                todo = todo[: int(max_steps - state["global_step"])]
            view.size = epoch_size(cfg, epoch)  # before the loader hands the view to any worker
            loader = torch.utils.data.DataLoader(
                view, batch_sampler=[[(epoch, i) for i in D.shard(b, run.ctx)] for b in todo], collate_fn=collate,
                num_workers=int(dc["workers"]), pin_memory=device.type == "cuda", worker_init_fn=worker_init,
                generator=torch.Generator().manual_seed(derive_seed(run.seed, epoch, 1)))
            run.net.train()
            if tc["freeze_bn"]:
                _freeze_bn(run.net)
            progress.start_epoch(epoch, len(batches))
            tick = time.perf_counter()
            for images, masks in loader:
                lr = _train_step(run, images, masks, watch, epoch)
                _count_step(state, time.perf_counter() - tick, run.batch)
                progress.step(watch.last, lr)
                stop = state["global_step"] >= max_steps
                if every and state["global_step"] % every == 0 and state["batches_done"] < len(batches) and not stop:
                    watch.flush(epoch)  # a checkpoint never holds weights stepped from a non-finite loss
                    run.log.save("last")
                tick = time.perf_counter()
            watch.flush(epoch)  # every loss of the epoch is in its row, and none was NaN
            progress.end_epoch()
            if not _end_epoch(run, epoch, len(batches), last=epoch + 1 == epochs or stop):
                break  # cut short by max_steps: the state stays inside this epoch
            epoch += 1
            state["epoch"], state["batches_done"], state["epoch_complete"] = epoch, 0, False
    finally:
        progress.close()


def epoch_size(cfg: Mapping[str, Any], epoch: int) -> tuple[int, int] | None:
    """The (H, W) the training images of ``epoch`` (0-based) are resized to, None for their own size.

    ``train.progressive`` trains its first ``epochs`` epochs at its ``size``: smaller images make cheaper epochs
    (though less cheap than their pixel count, since the data pipeline and each layer's fixed costs stay), so
    more of them fit the same time; the last epochs at ``data.size`` adapt the weights (BatchNorm statistics
    included) to the size they are validated and tested at.
    """
    spec = cfg["train"].get("progressive")
    if spec is not None and epoch < int(spec["epochs"]):
        return size_tuple(spec["size"])
    return size_tuple(cfg["data"]["size"])


def _train_step(run: Run, images: torch.Tensor, masks: torch.Tensor, watch: _LossWatch, epoch: int) -> float:
    """One optimiser step on a batch (``images`` (N, C, H, W) float, ``masks`` (N, H, W) int64, on the host);
    returns the step's learning rate.

    The loss is handed to ``watch`` before backward: when a check is due and it finds a NaN/inf loss,
    :class:`smelib.training.TrainingDiverged` is raised and the step is not taken.
    """
    device, tc = run.device, run.cfg["train"]
    images = images.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True)
    if run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    lr = run.schedule.apply()
    with torch.autocast(device_type=device.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
        logits = run.net(images)
        if run.distill is not None:
            with torch.no_grad():
                teacher_logits = run.teacher(images)
    loss = run.criterion(logits, masks)  # in fp32, outside autocast
    if run.distill is not None:
        loss = loss + float(tc["distill"]["weight"]) * run.distill(logits, teacher_logits, masks)
    watch.add(loss, run.state["global_step"] + 1)
    if watch.due():
        watch.flush(epoch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if tc["grad_clip"]:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), float(tc["grad_clip"]))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.schedule.advance()
    if run.ema is not None:
        run.ema.update(run.model)
    return lr


def _loss_check_every(device: torch.device) -> int:
    """Steps between loss checks: every step on the CPU (reading the loss costs nothing there), else
    :data:`smelib.training.LOSS_CHECK_STEPS`."""
    return 1 if device.type == "cpu" else LOSS_CHECK_STEPS


class _LossWatch:
    """The step losses, kept on the device and checked for NaN/inf every ``every`` steps instead of every step.

    Reading a CUDA loss on the host (and all-reducing it under DDP) every step makes the host wait for each step
    before it can queue the next. Here the losses wait on the device; ``flush`` reduces them over ranks in one
    collective, raises :class:`smelib.training.TrainingDiverged` naming the first non-finite one and its step,
    and adds them to the epoch's loss sum in step order (the same float64 sum as reading them one by one). A
    flush runs when ``every`` losses are pending (before that step's backward), before every checkpoint and at
    every epoch end, so a checkpoint never holds weights updated from a non-finite loss; with ``every > 1`` up to
    ``every - 1`` steps may run after it before it is found.
    """

    def __init__(self, run: Run, every: int) -> None:
        self.run, self.every = run, max(int(every), 1)
        self.pending: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.last = math.nan  # the latest checked loss (what the progress line shows)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """Keep a step's scalar loss (a 0-dim tensor on the device) and its 1-based global step."""
        self.pending.append(loss.detach())
        self.steps.append(step)

    def due(self) -> bool:
        return len(self.pending) >= self.every

    def flush(self, epoch: int) -> None:
        """Check and account the pending losses (a no-op when none are pending)."""
        if not self.pending:
            return
        values = D.all_reduce_mean(self.run.ctx, torch.stack(self.pending)).tolist()
        steps, self.pending, self.steps = self.steps, [], []
        st = self.run.state["stats"]
        for value, step in zip(values, steps):
            if not math.isfinite(value):
                raise self.run.log.diverged(value, epoch, step)
            st["epoch_loss_sum"] += value
        self.last = values[-1]


def _end_epoch(run: Run, epoch: int, n_batches: int, last: bool) -> bool:
    """Validate, log the epoch's row, keep the best and the resumable state; whether the epoch was complete."""
    state, bundle = run.state, run.bundle
    st = state["stats"]
    t_val = time.perf_counter()
    val_every = int(run.cfg["train"]["val_every"])
    val_metrics = raw_metrics = None
    if bundle.val is not None and len(bundle.val) and val_every and ((epoch + 1) % val_every == 0 or last):
        # The bare model, not the DDP wrapper: ranks evaluate different numbers of batches, and a DDP forward
        # may run collectives (buffer broadcasts) that would then never be matched.
        _broadcast_buffers(run.model, run.ctx)
        val_metrics = evaluate(run.ema.averaged(run.model) if run.ema is not None else run.model, bundle.val,
                               **run.eval_kwargs())
        if run.ema is not None:
            # the raw weights too, on the same trajectory: the average's effect is then a paired difference
            raw_metrics = evaluate(run.model, bundle.val, **run.eval_kwargs())
    st["epoch_seconds"] += time.perf_counter() - t_val
    row = {"epoch": epoch + 1, "step": state["global_step"],
           "lr": run.schedule.lr(max(run.schedule.step_count - 1, 0)),
           "train_loss": st["epoch_loss_sum"] / max(st["epoch_loss_steps"], 1),
           **_metrics_row("val", val_metrics), **_metrics_row("val_raw", raw_metrics),
           "seconds": st["epoch_seconds"],
           "images_per_s": st["train_images"] / st["train_seconds"] if st["train_seconds"] else None}
    state["history"].append(row)
    st["epoch_loss_sum"], st["epoch_loss_steps"], st["epoch_seconds"] = 0.0, 0, 0.0
    state["epoch_complete"] = state["batches_done"] >= n_batches
    if val_metrics is not None and not math.isnan(val_metrics.miou):
        if state["best"]["miou"] is None or val_metrics.miou > state["best"]["miou"]:
            state["best"] = {"miou": val_metrics.miou, "epoch": epoch + 1, "step": state["global_step"]}
            run.log.save("best")
    if raw_metrics is not None and not math.isnan(raw_metrics.miou):
        best_raw = state.setdefault("best_raw", {"miou": None, "epoch": None})
        if best_raw["miou"] is None or raw_metrics.miou > best_raw["miou"]:
            state["best_raw"] = {"miou": raw_metrics.miou, "epoch": epoch + 1, "step": state["global_step"]}
            run.log.save("best_raw")
    run.log.save("last")
    if run.ctx.is_main:
        R.write_log_csv(run.log.run_dir / "log.csv", state["history"])
    _say(run.verbose and not run.bars, f"epoch {epoch + 1}/{run.cfg['train']['epochs']}  step {state['global_step']}  "
         f"loss {row['train_loss']:.4f}  lr {row['lr']:.2e}"
         + (f"  val mIoU {100 * val_metrics.miou:.2f}" if val_metrics is not None else "")
         + f"  {row['seconds']:.1f} s")
    return state["epoch_complete"]


def _finish(run: Run) -> RunResult:
    """Evaluate the best (else the last) weights on validation and test, save test predictions, write the record."""
    cfg, state, log = run.cfg, run.state, run.log
    tc, dc = cfg["train"], cfg["data"]
    D.barrier(run.ctx)
    final_path = log.best_path if state["best"]["miou"] is not None else log.last_path
    final_ckpt = read_checkpoint(final_path)
    tta = bool(cfg["eval"]["tta"])
    final: dict[str, Any] = {"checkpoint": final_path.stem, "epoch": len(final_ckpt["history"]), "tta": tta,
                             "decision": run.rule.to_dict(), **_score(run, final_ckpt["model"], tta)}
    bundle = run.bundle
    record: dict[str, Any] = {}
    if run.ctx.is_main:
        stored = _save_predictions(run, final_path) if tc["save_predictions"] else {}
        if run.ema is not None and log.best_raw_path.is_file():
            # the raw weights of the epoch whose raw weights validated best, scored like the average: the record
            # then holds both sides of the average's paired effect (run.model keeps them from here on)
            raw_ckpt = read_checkpoint(log.best_raw_path)
            final["raw"] = {"checkpoint": log.best_raw_path.stem, "epoch": len(raw_ckpt["history"]),
                            **_score(run, raw_ckpt["train_model"], tta)}
        input_size = size_tuple(dc["size"]) or tuple(int(s) for s in bundle.input_size)
        params = sum(p.numel() for p in run.model.parameters())
        record = log.write_record(
            "completed", final=final, params=params, params_m=params / 1e6, **stored,
            gmacs=_fvcore_gmacs(run.model, int(cfg["model"]["in_channels"]), input_size), input_size=list(input_size),
            checkpoint={"path": str(final_path), "relpath": f"checkpoints/{final_path.name}",
                        "kind": final_path.stem, "sha256": sha256_file(final_path)},
            last_checkpoint={"path": str(log.last_path), "relpath": "checkpoints/last.pt",
                             "sha256": sha256_file(log.last_path)},
        )
        _say(run.verbose, f"run {log.run_dir.name} done: {log.run_dir}")
    record = D.broadcast_object(run.ctx, record)
    best = log.best_path if log.best_path.is_file() else None
    return RunResult(record, log.run_dir, best, log.last_path, state["history"])


def _score(run: Run, weights: Mapping[str, torch.Tensor], tta: bool) -> dict[str, Any]:
    """Load ``weights`` into ``run.model`` and evaluate them: ``{"val": ..., "test": ...}`` (metrics dicts), each
    where its subset exists (test only under ``train.test_at_end``)."""
    run.model.load_state_dict(weights)
    bundle, out = run.bundle, {}
    if bundle.val is not None and len(bundle.val):
        out["val"] = evaluate(run.model, bundle.val, tta=tta, decision=run.rule, **run.eval_kwargs()).to_dict()
    if run.cfg["train"]["test_at_end"] and bundle.test is not None and len(bundle.test):
        out["test"] = evaluate(run.model, bundle.test, tta=tta, decision=run.rule, **run.eval_kwargs()).to_dict()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Set-up helpers: the config of a new or resumed run, the model, DDP, restoring state, the run folder
# ---------------------------------------------------------------------------------------------------------------


def _run_config(config: Mapping[str, Any] | str | os.PathLike | None, out: str | os.PathLike | None,
                resume: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The resolved config, and the checkpoint to resume from (None for a new run)."""
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    if not resume:
        return resolve(config), None
    if out is None:
        raise R.RunDirError("resume needs the run directory (--out DIR)")
    last_path = Path(out) / "checkpoints" / "last.pt"
    if not last_path.is_file():
        raise R.RunDirError(f"cannot resume: {str(last_path)!r} does not exist (no checkpoint was written yet?)")
    ckpt = read_checkpoint(last_path)
    saved = resolve(ckpt["config"])
    if config is not None:
        new = resolve(config)
        new["name"] = new["name"] if new["name"] != "custom" else saved["name"]
        diff = _config_diff(new, saved)
        if diff:
            raise ConfigError("resume with the run's own config; these keys differ: " + "; ".join(diff))
        for section, key in RESUME_MAY_DIFFER:
            saved[section][key] = new[section][key]
    return saved, ckpt


def build_model(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The config's model: ``smelib.models.build(model.name, num_classes, model.in_channels, **model.overrides)``.

    ``model.deeplab_overrides`` (the CPU budget's width rule ``{decoder_width: 64, context_width: 64}``) is laid
    under ``model.overrides`` when the model is a :class:`smelib.models.deeplabv3plus.DeepLabV3Plus`, and ignored
    otherwise.
    """
    m = cfg["model"]
    overrides = dict(m["overrides"])
    try:
        if m.get("deeplab_overrides"):
            with torch.random.fork_rng(devices=[]):
                probe = build(m["name"], num_classes=num_classes, in_channels=m["in_channels"], **overrides)
            if isinstance(probe, DeepLabV3Plus):
                overrides = {**m["deeplab_overrides"], **overrides}
        return build(m["name"], num_classes=num_classes, in_channels=m["in_channels"], **overrides)
    except TypeError as err:
        raise ConfigError(f"model.overrides: {m['name']!r} does not accept {overrides}: {err}") from None


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so all ranks evaluate the same model."""
    if ctx.distributed:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        here = (*path, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and here not in {("model", "overrides")}:
            out += _config_diff(va, vb, here)
        elif _norm(va) != _norm(vb) and here not in RESUME_MAY_DIFFER:
            out.append(f"{'.'.join(here)}: {vb!r} in the run, {va!r} now")
    return out


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _metrics_row(prefix: str, metrics: Any) -> dict[str, Any]:
    if metrics is None:
        return {}
    d = metrics.to_dict()
    return {f"{prefix}_miou": d["miou"], f"{prefix}_miou_defects": d["defects_only"]["miou"],
            f"{prefix}_mpa": d["mpa"], f"{prefix}_precision": d["precision"], f"{prefix}_recall": d["recall"],
            f"{prefix}_pixel_acc": d["pixel_acc"]}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def _fvcore_gmacs(model: nn.Module, in_channels: int, size: tuple[int, int]) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = fvcore_macs(copy.deepcopy(model).cpu().float(), torch.zeros(1, in_channels, *size))
        return macs / 1e9
    except Exception as err:  # a counting failure must not lose a finished run
        warnings.warn(f"fvcore could not count the model: {err}", stacklevel=2)
        return None


def _init_from(model: nn.Module, spec: str, model_name: str, num_classes: int) -> None:
    """``model.init``: start from a trained checkpoint's weights (verified like every load) instead of random ones."""
    ckpt = read_checkpoint(spec)
    if ckpt["model_name"] != model_name or int(ckpt["num_classes"]) != num_classes:
        raise ConfigError(f"model.init: {spec} holds {ckpt['model_name']} for {ckpt['num_classes']} classes, the run "
                          f"trains {model_name} for {num_classes}")
    try:
        check_state_dict(model, ckpt["model"], str(spec))
    except CheckpointError as err:
        raise ConfigError(f"model.init: {err}") from None
    model.load_state_dict(ckpt["model"])  # a release's fp16 weights are copied into the float32 parameters


def _weights(run: Run) -> dict[str, Any]:
    """A checkpoint's weights: ``model`` is the model that is evaluated (the average under ``train.ema``), and
    ``train_model`` the weights that go on training when they differ."""
    raw = {k: v.detach().to("cpu").clone() for k, v in run.model.state_dict().items()}
    if run.ema is None:
        return {"model": raw}
    return {"model": run.ema.state_dict(), "train_model": raw, "ema_decay": run.ema.decay,
            "ema_updates": run.ema.updates}


def _check_threads(ckpt: Mapping[str, Any]) -> None:
    """Refuse to resume with another intra-op thread count than the run trained with: on CPU, float sums then split
    differently and the resumed run is no longer bit-identical to an uninterrupted one."""
    saved = ckpt.get("threads")
    if saved is not None and int(saved) != torch.get_num_threads():
        raise ConfigError(f"the run trained with {saved} intra-op threads and this process has "
                          f"{torch.get_num_threads()}: resume with train.threads={saved} (or the same OMP_NUM_THREADS) "
                          "to continue bit-identically, or pass --allow-thread-change to accept that it will not be")


def _distribute(model: nn.Module, cfg: Mapping[str, Any], ctx: DistContext, device: torch.device) -> nn.Module:
    """The module the step calls: ``model`` itself, or under ``torchrun`` its DDP wrapper (with SyncBatchNorm on
    CUDA unless ``train.sync_bn`` says otherwise)."""
    if not ctx.distributed:
        return model
    tc = cfg["train"]
    net = model
    sync_bn = device.type == "cuda" if tc["sync_bn"] == "auto" else bool(tc["sync_bn"])
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: torch has no SyncBatchNorm on CPU; use sync_bn: auto or false")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    elif _has_bn(net) and not tc["freeze_bn"] and ctx.is_main:
        warnings.warn("DDP without SyncBatchNorm: BatchNorm statistics are per process", stacklevel=2)
    # SyncBatchNorm keeps the running statistics equal on every rank: broadcasting rank 0's buffers before every
    # forward would be a wasted collective per step. Without it, the broadcast keeps per-process statistics equal.
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=not sync_bn)


def _fresh_state() -> dict[str, Any]:
    return {
        "epoch": 0, "batches_done": 0, "global_step": 0, "epoch_complete": False,
        "best": {"miou": None, "epoch": None}, "history": [], "segments": [],
        "stats": {"train_images": 0, "train_seconds": 0.0, "epoch_loss_sum": 0.0, "epoch_loss_steps": 0,
                  "epoch_seconds": 0.0, "wall_seconds_before": 0.0},
    }


def _restore(ckpt: dict[str, Any], cfg: Mapping[str, Any], num_classes: int, model: nn.Module,
             optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, schedule: Any,
             state: dict[str, Any], ctx: DistContext | None = None) -> None:
    """Load a resumed run's weights, optimiser, scaler, schedule, progress and RNG states (the RNG last; each
    rank its own)."""
    if ckpt["model_name"] != cfg["model"]["name"] or int(ckpt["num_classes"]) != num_classes:
        raise CheckpointError("the checkpoint's model or class count does not match the run's config")
    # with train.ema, "model" holds the average and "train_model" the weights that go on training
    model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:  # a disabled scaler saves {}; loading {} into an enabled one (fp16 now) raises
        scaler.load_state_dict(ckpt["scaler"])
    schedule.load_state_dict(ckpt["schedule"])
    for key in ("epoch", "batches_done", "global_step", "epoch_complete", "best", "history", "stats"):
        state[key] = copy.deepcopy(ckpt[key])
    if "best_raw" in ckpt:
        state["best_raw"] = copy.deepcopy(ckpt["best_raw"])
    state["segments"] = copy.deepcopy(ckpt.get("segments", []))  # checkpoints before segments: none
    if state["epoch_complete"]:
        state["epoch"], state["batches_done"], state["epoch_complete"] = state["epoch"] + 1, 0, False
    restore_rng(_rank_rng(ckpt, ctx or DistContext()))  # last: nothing random may run before the first step


def _rank_rng(ckpt: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """This rank's RNG state in a checkpoint: its own when the checkpoint holds one per rank of a run of the same
    size (``rng_ranks``), else rank 0's (``rng``, with a warning when the process count changed)."""
    ranks = ckpt.get("rng_ranks") or []
    if len(ranks) == ctx.world_size:
        return ranks[ctx.rank]
    if ctx.distributed or len(ranks) > 1:
        warnings.warn(f"the checkpoint holds the RNG states of {len(ranks) or 'an unknown number of'} processes and "
                      f"this run has {ctx.world_size}: every process continues from rank 0's state", stacklevel=2)
    return ckpt["rng"]


def _resume_precision(ckpt: dict[str, Any], amp_setting: str, device: torch.device, amp: torch.dtype | None,
                      reason: str) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of a resumed run, and why.

    ``amp: auto`` re-resolved on another device would change the precision mid-run (a CPU fp32 run resumed on a
    GPU would continue in bf16): the checkpoint's ``precision`` is kept when this device runs it natively. When
    the precision must change anyway (e.g. bf16 on a GPU without native bf16), a warning says so and the record
    keeps the reason. Checkpoints without ``precision`` (older ones) resume as resolved here.
    """
    saved = ckpt.get("precision")
    here = precision_name(amp)
    if saved is None or saved == here:
        return amp, reason
    runs_here = saved == "fp32" or (saved == "bf16" and bf16_native(device)) or (saved == "fp16"
                                                                                   and device.type == "cuda")
    if amp_setting == "auto" and runs_here:
        return PRECISIONS[saved], f"resumed in the checkpoint's precision {saved} (amp: auto chooses {here} here)"
    warnings.warn(f"resume changes the precision from the checkpoint's {saved} to {here} ({reason}): the continued "
                  "run differs from an uninterrupted one", stacklevel=2)
    return amp, f"{reason}; changed from the checkpoint's {saved} on resume"


def _run_dir(cfg: Mapping[str, Any], ctx: DistContext, ckpt: dict[str, Any] | None,
             out: str | os.PathLike | None, runs_dir: str | os.PathLike | None, seed: int) -> Path:
    """The run's folder (rank 0 decides and writes ``config.yaml``; every rank learns it)."""
    run_dir: Path | None = None
    if ctx.is_main:
        if ckpt is not None:
            run_dir = Path(out)  # type: ignore[arg-type]
        elif out is not None:
            run_dir = R.claim_out_dir(out)
        else:
            run_id = R.make_run_id(cfg["name"], cfg["model"]["name"], cfg["data"]["split"], seed)
            run_dir = R.create_run_dir(runs_dir or repo_root() / "results" / "runs", run_id)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    return Path(D.broadcast_object(ctx, str(run_dir) if run_dir else None))


# ---------------------------------------------------------------------------------------------------------------
# Loop helpers: accounting, progress, prediction saving
# ---------------------------------------------------------------------------------------------------------------


def _count_step(state: dict[str, Any], seconds: float, images: int) -> None:
    """Add one optimiser step to the run's counters (the record's images/s excludes validation and saving; the
    step's loss is added by ``_LossWatch`` when it is checked)."""
    st = state["stats"]
    st["train_seconds"] += seconds
    st["epoch_seconds"] += seconds
    st["train_images"] += images
    st["epoch_loss_steps"] += 1
    state["global_step"] += 1
    state["batches_done"] += 1


class _Progress:
    """Progress bars on a terminal; otherwise a heartbeat line every minute (logs of background runs)."""

    def __init__(self, run: Run, epochs: int) -> None:
        # tqdm.auto picks notebook widgets inside Jupyter and warns when they are missing, even for disabled bars
        if run.bars:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        self.run, self.epochs, self.tqdm = run, epochs, tqdm
        self.epoch_bar = tqdm(total=epochs, initial=min(run.state["epoch"], epochs), desc="epochs",
                              disable=not run.bars, position=0, dynamic_ncols=True)
        self.bar: Any = None
        self.last_line = time.time()
        self.epoch, self.n_batches = 0, 0

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        self.epoch, self.n_batches = epoch, n_batches
        self.bar = self.tqdm(total=n_batches, initial=self.run.state["batches_done"],
                             desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, disable=not self.run.bars,
                             position=1, dynamic_ncols=True)

    def step(self, loss_value: float, lr: float) -> None:
        state, st = self.run.state, self.run.state["stats"]
        rate = st["train_images"] / max(st["train_seconds"], 1e-9)
        self.bar.update(1)
        if self.run.bars:
            self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        elif self.run.verbose and time.time() - self.last_line >= 60:
            self.last_line = time.time()
            _say(True, f"epoch {self.epoch + 1}/{self.epochs}  batch {state['batches_done']}/{self.n_batches}  "
                 f"step {state['global_step']}  loss {loss_value:.4f}  lr {lr:.2e}  {rate:.1f} img/s")

    def end_epoch(self) -> None:
        self.bar.close()
        self.epoch_bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.epoch_bar.close()


def _save_predictions(run: Run, final_path: Path) -> dict[str, Any]:
    """The test label maps (argmax, no TTA: what a qualitative figure shows, whatever ``eval.decision`` scored),
    written beside the record; returns the record's ``predictions`` entry."""
    test = run.bundle.test
    if test is None or not len(test):
        return {}
    dc = run.cfg["data"]
    # the evaluation's precision and layout, so the saved maps reproduce the evaluated confusion matrix
    maps = predict_dataset(run.model, test, size=dc["size"], batch_size=dc["eval_batch_size"], device=run.device,
                           amp_dtype=run.amp, channels_last=run.channels_last)
    pred_path = R.write_predictions(run.log.run_dir / R.PREDICTIONS_FILE, [str(i) for i in test.ids], maps)
    return {"predictions": {"relpath": R.PREDICTIONS_FILE, "subset": "test", "n": len(maps),
                            "checkpoint": final_path.stem, "decision": "argmax", "tta": False,
                            "sha256": sha256_file(pred_path)}}


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping: checkpoints and the run record
# ---------------------------------------------------------------------------------------------------------------


class RunLog:
    """A run's folder while it trains: its checkpoints (``last.pt``, ``best.pt``) and its ``record.json``.

    A resumed run may continue on another machine or commit: each process's share of the run is kept as a
    segment (where it ran and how much of the run it did), since the record's host and git are the last one's.
    Only rank 0 writes.
    """

    def __init__(self, run_dir: Path, ctx: DistContext, started: float, state: dict[str, Any]) -> None:
        self.run_dir, self.ctx, self.started, self.state = run_dir, ctx, started, state
        self.last_path = run_dir / "checkpoints" / "last.pt"
        self.best_path = run_dir / "checkpoints" / "best.pt"
        self.best_raw_path = run_dir / "checkpoints" / "best_raw.pt"  # train.ema only: the best raw weights
        self.run: Run | None = None
        self.base_record: dict[str, Any] = {}
        self.segment: dict[str, Any] = {}
        self.cpu_at_start: dict[str, int] | None = None

    def start(self, run: Run, train_stats: M.TrainStats, mechanisms: dict[str, Any], reuse_memory: bool,
              steps_per_epoch: int) -> None:
        """Fix the record's constant part and write the first ``running`` record."""
        self.run = run
        cfg, ctx, bundle, dc = run.cfg, self.ctx, run.bundle, run.cfg["data"]
        self.segment = {"started_utc": R.utc_iso(), "steps_start": self.state["global_step"], "pid": os.getpid(),
                        "host": {k: v for k, v in R.host_info(run.device).items()
                                 if k in ("hostname", "cpu", "cpu_flags", "cpu_cores", "gpu")},
                        "git": R.git_info() if ctx.is_main else {}}
        self.train_stats = train_stats
        self.base_record = {
            "run_id": self.run_dir.name, "config_name": cfg["name"], "config": cfg, "model": cfg["model"]["name"],
            "model_config": dict(getattr(run.model, "config", {})), "seed": run.seed,
            "split": {**bundle.split, "kind": dc["split"], "train": len(bundle.train),
                      "val": len(bundle.val) if bundle.val is not None else 0,
                      "test": len(bundle.test) if bundle.test is not None else 0},
            "class_names": run.class_names, "num_classes": run.num_classes,
            "git": R.git_info() if ctx.is_main else {},
            "host": {**R.host_info(run.device), "reuse_freed_memory": reuse_memory,
                     "channels_last": run.channels_last},
            "world_size": ctx.world_size, "torch_version": str(torch.__version__),
            "precision": {"autocast": precision_name(run.amp), "reason": run.precision_reason},
            "smelib_version": __version__, "started_utc": R.utc_iso(), "epochs": cfg["train"]["epochs"],
            "batch_size": run.batch, "steps_per_epoch": steps_per_epoch,
            "train_stats": train_stats.to_dict(), "model_init": mechanisms,
            **({"teacher": run.teacher_info} if run.teacher_info else {}),
        }
        self.cpu_at_start = R.cpu_times()
        if ctx.is_main:
            self.write_record("running")

    def segments(self) -> list[dict[str, Any]]:
        """Every process's share of the run so far, this one's last."""
        return [*self.state["segments"], {**self.segment, "steps_end": self.state["global_step"],
                                          "wall_seconds": time.time() - self.started,
                                          "cpu_others_fraction": R.others_fraction(self.cpu_at_start,
                                                                                   R.cpu_times())}]

    def checkpoint(self, kind: str, rng_ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint dict (the keys :mod:`smelib.checkpoint` documents).

        ``rng_ranks``: every rank's RNG state, in rank order (default: this process's only).
        """
        run, state = self.run, self.state
        assert run is not None
        cfg = run.cfg
        rng_ranks = rng_ranks or [capture_rng()]
        return {
            "format": FORMAT, "version": CHECKPOINT_VERSION, "kind": kind, "run_id": self.run_dir.name,
            "smelib_version": __version__, "torch_version": str(torch.__version__),
            "model_name": cfg["model"]["name"], "model_config": dict(getattr(run.model, "config", {})),
            "num_classes": run.num_classes, "in_channels": int(cfg["model"]["in_channels"]),
            "class_names": run.class_names, "normalization": {"mean": run.bundle.mean, "std": run.bundle.std},
            "config": cfg, "train_stats": self.train_stats.to_dict(),
            **_weights(run),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "schedule": run.schedule.state_dict(), "rng": rng_ranks[0], "rng_ranks": rng_ranks,
            "precision": precision_name(run.amp), "threads": torch.get_num_threads(),
            **copy.deepcopy({k: state[k] for k in ("epoch", "batches_done", "global_step", "epoch_complete", "best",
                                                   "best_raw", "history") if k in state}),
            "segments": self.segments(),
            "stats": {**state["stats"],
                      "wall_seconds_before": state["stats"]["wall_seconds_before"] + time.time() - self.started},
        }

    def save(self, kind: str) -> None:
        """Write ``best.pt``, ``best_raw.pt`` or ``last.pt`` atomically; after ``last``, the record says how far the
        run has come."""
        # every rank's RNG stream (dropout, drop-path), so that each rank resumes its own: a collective, and every
        # rank calls save at the same points
        rng_ranks = D.all_gather_object(self.ctx, capture_rng())
        if self.ctx.is_main:
            path = {"best": self.best_path, "best_raw": self.best_raw_path, "last": self.last_path}[kind]
            atomic_save(self.checkpoint(kind, rng_ranks), path)
            if kind == "last":
                self.write_record("running")

    def write_record(self, status: str, **extra: Any) -> dict[str, Any]:
        """``record.json`` with ``status`` (running, diverged, completed) and the run's timing so far."""
        state = self.state
        wall = state["stats"]["wall_seconds_before"] + time.time() - self.started
        train_s = state["stats"]["train_seconds"]
        now = R.cpu_times()
        rec = {**self.base_record, "status": status, "finished_utc": R.utc_iso(), "wall_seconds": wall,
               "train_seconds": train_s,
               "images_per_s": state["stats"]["train_images"] / train_s if train_s > 0 else None,
               # A shared VM's stolen CPU time explains wall-time differences between runs on different days
               # (resumed runs: this process's part only).
               "cpu_steal_fraction": R.steal_fraction(self.cpu_at_start, now),
               # other processes on this machine (a test suite, a second run) slow a run as much: such a record
               # times the machine badly (smelib.study.plan.time_estimate passes over it)
               "cpu_others_fraction": R.others_fraction(self.cpu_at_start, now),
               "epochs_done": len(state["history"]), "steps_done": state["global_step"], "best": state["best"],
               "history": state["history"], "segments": self.segments(), "run_dir": str(self.run_dir), **extra}
        if self.ctx.is_main:
            R.write_json(self.run_dir / "record.json", rec)
        return rec

    def diverged(self, loss_value: float, epoch: int, step: int | None = None) -> TrainingDiverged:
        """Record a non-finite loss of global ``step`` (1-based; default the step after the last counted one)
        (status ``diverged``) and return the error to raise."""
        step = self.state["global_step"] + 1 if step is None else step
        message = (f"non-finite loss ({loss_value}) at step {step} (epoch {epoch + 1}); "
                   f"training stopped. The last good state is {self.last_path}"
                   + ("" if self.last_path.is_file() else " (none was written yet)")
                   + "; lower optim.lr, set train.grad_clip, or use train.amp=none")
        if self.ctx.is_main:
            self.write_record("diverged", error=message)
        return TrainingDiverged(message)
