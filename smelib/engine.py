"""Training (the loop, checkpoints, resume, DDP, run records) and the public engine API.

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
CPU the resumed run ends bit-identical to an uninterrupted one. The record's ``host`` and ``git`` are the last
process's; its ``segments`` list every process's share (start, host, commit, steps, wall seconds), so a run resumed
on another machine says so and is left out of speed estimates (:func:`smelib.results.timed_on_one_host`).

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
import random
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smelib import distributed as D
from smelib import mechanisms as M
from smelib import records as R
from smelib.checkpoint import (
    CHECKPOINT_VERSION,
    FORMAT,
    CheckpointError,
    atomic_save,
    capture_rng,
    load_checkpoint,
    read_checkpoint,
    restore_rng,
    sha256_file,
)
from smelib.config import ConfigError, dump_yaml, resolve
from smelib.inference import evaluate, predict, predict_dataset, predict_proba, unwrap
from smelib.loading import (
    DataBundle,
    TrainView,
    derive_seed,
    epoch_batches,
    load_data,
    pad_collate,
    size_tuple,
    worker_init,
)
from smelib.optim import LRSchedule, build_optimizer, build_schedule
from smelib.optimize import reuse_freed_memory

__all__ = [
    "LRSchedule",
    "RunResult",
    "TrainingDiverged",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "predict",
    "predict_proba",
    "seed_everything",
    "train",
]

#: Keys that may differ between a run's config and the one given with ``--resume`` (where and how, not what).
RESUME_MAY_DIFFER = {("data", "root"), ("data", "workers"), ("train", "threads"), ("train", "device")}


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


# ---------------------------------------------------------------------------------------------------------------
# Seeding, runtime, model
# ---------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available (torch {torch.__version__})")
    return torch.device(f"cuda:{local_rank}" if spec == "cuda" else spec)


def _amp_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    amp = cfg["train"]["amp"]
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _setup_runtime(cfg: Mapping[str, Any], device: torch.device) -> None:
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


def build_model(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The config's model: ``smelib.models.build(model.name, num_classes, model.in_channels, **model.overrides)``.

    ``model.deeplab_overrides`` (the CPU budget's width rule ``{decoder_width: 64, context_width: 64}``) is laid
    under ``model.overrides`` when the model is a :class:`smelib.models.DeepLabV3Plus`, and ignored otherwise.
    """
    from smelib.models import DeepLabV3Plus, build

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


def _broadcast_buffers(model: nn.Module, ctx: D.DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so all ranks evaluate the same model."""
    if ctx.distributed:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------
# Small helpers of the loop
# ---------------------------------------------------------------------------------------------------------------


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
        from smelib.flops import fvcore_macs

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = fvcore_macs(copy.deepcopy(model).cpu().float(), torch.zeros(1, in_channels, *size))
        return macs / 1e9
    except Exception as err:  # a counting failure must not lose a finished run
        warnings.warn(f"fvcore could not count the model: {err}", stacklevel=2)
        return None


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def train(
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Train a model as ``config`` says, write checkpoints, ``log.csv`` and ``record.json``; return the result.

    Args:
        config: a (partial) config dict, laid over :data:`smelib.config.DEFAULTS`, or a YAML path. With
            ``resume`` it may be None (the run's own config is used); otherwise it must equal the run's config
            except for :data:`RESUME_MAY_DIFFER`.
        out: the run directory. New runs: must not exist or be empty (default: a fresh
            ``<runs_dir>/<run_id>``). With ``resume``: the run to continue.
        runs_dir: where new run directories go when ``out`` is None (default ``<repo>/results/runs``).
        resume: continue the run in ``out`` from ``out/checkpoints/last.pt``.
        quiet: no progress bars or log lines.

    Returns:
        :class:`RunResult`.

    Raises:
        ConfigError: invalid config, or a resume config that differs from the run's.
        smelib.records.RunDirError: ``out`` holds another run (new run) or no checkpoint (resume).
        TrainingDiverged: non-finite loss; ``last.pt`` holds the last good state and the record says so.
    """
    started = time.time()
    if isinstance(config, (str, os.PathLike)):
        from smelib.config import load_config

        config = load_config(config)
    ckpt: dict[str, Any] | None = None
    if resume:
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
        cfg = saved
    else:
        cfg = resolve(config)

    tc = cfg["train"]
    seed = int(tc["seed"])
    ctx = D.setup("cuda" if tc["device"].startswith("cuda") or (tc["device"] == "auto" and torch.cuda.is_available())
                  else "cpu")
    try:
        device = _resolve_device(tc["device"], ctx.local_rank)
        return _train(cfg, ctx, device, ckpt, out, runs_dir, quiet, started, seed)
    finally:
        D.teardown(ctx)


def _train(cfg: dict[str, Any], ctx: D.DistContext, device: torch.device, ckpt: dict[str, Any] | None,
           out: str | os.PathLike | None, runs_dir: str | os.PathLike | None, quiet: bool, started: float,
           seed: int) -> RunResult:
    from tqdm.auto import tqdm

    from smelib import __version__
    from smelib.losses import build_loss

    tc, dc = cfg["train"], cfg["data"]
    verbose = not quiet and ctx.is_main
    bars = verbose and sys.stderr.isatty()
    _setup_runtime(cfg, device)
    seed_everything(seed)

    # ---- data
    bundle: DataBundle = load_data(cfg, seed=seed)
    num_classes = int(dc["num_classes"] or bundle.num_classes)
    class_names = list(bundle.class_names)[:num_classes]
    class_names += [f"class {i}" for i in range(len(class_names), num_classes)]
    batch = int(dc["batch_size"])
    if batch % ctx.world_size:
        raise ConfigError(f"data.batch_size={batch} (the global batch) must divide by the {ctx.world_size} processes")
    n_train = len(bundle.train)
    steps_per_epoch = n_train // batch
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size={batch} is larger than the {n_train} training images")
    # Label statistics of the training split only (smelib.mechanisms): pure counting, no random draw.
    train_stats = M.training_stats(bundle.train, num_classes, int(dc["ignore_index"]))
    try:  # the decision rule of the final metrics (eval.decision), checked before any training
        rule = M.rule_from_config(cfg["eval"], train_stats)
    except ValueError as err:
        raise ConfigError(f"eval.decision: {err}") from None

    # ---- model, optimiser, schedule, loss (seeded: the initial weights depend on train.seed only)
    seed_everything(seed)
    model = build_model(cfg, num_classes).to(device)
    try:  # model_init: a no-op when its options are off
        mechanisms = M.apply_model_init(cfg, model, train_stats)
    except ValueError as err:
        raise ConfigError(f"model_init: {err}") from None
    amp_dtype = _amp_dtype(cfg, device)
    # auto = on for CPU too: oneDNN's native layout; a training step of every table model was 1.04-1.42x faster
    # in NHWC on the 2-core machine (book: Training). Results differ from NCHW by float rounding only.
    channels_last = True if tc["channels_last"] == "auto" else bool(tc["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Speed only (results are unchanged): without it every large activation is a fresh page-faulting mapping.
    reuse_memory = device.type == "cpu" and reuse_freed_memory()
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = build_loss(cfg["loss"], num_classes, ignore_index=dc["ignore_index"],
                           class_weights=mechanisms["class_weights"]).to(device)

    net: nn.Module = model
    if ctx.distributed:
        sync_bn = device.type == "cuda" if tc["sync_bn"] == "auto" else bool(tc["sync_bn"])
        if sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn: torch has no SyncBatchNorm on CPU; use sync_bn: auto or false")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif _has_bn(net) and not tc["freeze_bn"] and ctx.is_main:
            warnings.warn("DDP without SyncBatchNorm: BatchNorm statistics are per process", stacklevel=2)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        model = unwrap(net)

    # ---- state
    state: dict[str, Any] = {
        "epoch": 0, "batches_done": 0, "global_step": 0, "epoch_complete": False,
        "best": {"miou": None, "epoch": None}, "history": [], "segments": [],
        "stats": {"train_images": 0, "train_seconds": 0.0, "epoch_loss_sum": 0.0, "epoch_loss_steps": 0,
                  "epoch_seconds": 0.0, "wall_seconds_before": 0.0},
    }
    if ckpt is not None:
        if ckpt["model_name"] != cfg["model"]["name"] or int(ckpt["num_classes"]) != num_classes:
            raise CheckpointError("the checkpoint's model or class count does not match the run's config")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        schedule.load_state_dict(ckpt["schedule"])
        for key in ("epoch", "batches_done", "global_step", "epoch_complete", "best", "history", "stats"):
            state[key] = copy.deepcopy(ckpt[key])
        state["segments"] = copy.deepcopy(ckpt.get("segments", []))  # checkpoints before segments: none
        if state["epoch_complete"]:
            state["epoch"], state["batches_done"], state["epoch_complete"] = state["epoch"] + 1, 0, False
        restore_rng(ckpt["rng"])  # last: nothing random may run between here and the first step

    # ---- run directory (rank 0 decides, everyone learns it)
    run_dir: Path | None = None
    if ctx.is_main:
        if ckpt is not None:
            run_dir = Path(out)  # type: ignore[arg-type]
        elif out is not None:
            run_dir = R.claim_out_dir(out)
        else:
            from smelib.settings import repo_root

            run_id = R.make_run_id(cfg["name"], cfg["model"]["name"], dc["split"], seed)
            run_dir = R.create_run_dir(runs_dir or repo_root() / "results" / "runs", run_id)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    run_dir = Path(D.broadcast_object(ctx, str(run_dir) if run_dir else None))
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    run_id = run_dir.name

    # A resumed run may continue on another machine or commit: each process's share of the run is kept as a
    # segment (where it ran and how much of the run it did), since the record's host and git are the last one's.
    segment = {"started_utc": R.utc_iso(), "steps_start": state["global_step"], "pid": os.getpid(),
               "host": {k: v for k, v in R.host_info(device).items()
                        if k in ("hostname", "cpu", "cpu_flags", "cpu_cores", "gpu")},
               "git": R.git_info() if ctx.is_main else {}}

    def segments() -> list[dict[str, Any]]:
        return [*state["segments"], {**segment, "steps_end": state["global_step"],
                                     "wall_seconds": time.time() - started,
                                     "cpu_others_fraction": R.others_fraction(cpu_at_start, R.cpu_times())}]

    def checkpoint(kind: str) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": CHECKPOINT_VERSION, "kind": kind, "run_id": run_id,
            "smelib_version": __version__, "torch_version": str(torch.__version__),
            "model_name": cfg["model"]["name"], "model_config": dict(getattr(model, "config", {})),
            "num_classes": num_classes, "in_channels": int(cfg["model"]["in_channels"]), "class_names": class_names,
            "normalization": {"mean": bundle.mean, "std": bundle.std},
            "config": cfg, "train_stats": train_stats.to_dict(),
            "model": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "schedule": schedule.state_dict(),
            "rng": capture_rng(), **copy.deepcopy({k: state[k] for k in ("epoch", "batches_done", "global_step",
                                                                       "epoch_complete", "best", "history")}),
            "segments": segments(),
            "stats": {**state["stats"],
                      "wall_seconds_before": state["stats"]["wall_seconds_before"] + time.time() - started},
        }

    def save(kind: str) -> None:
        if ctx.is_main:
            atomic_save(checkpoint(kind), best_path if kind == "best" else last_path)
            if kind == "last":
                write_record("running")  # the record says how far the resumable state has come

    base_record = {
        "run_id": run_id, "config_name": cfg["name"], "config": cfg, "model": cfg["model"]["name"],
        "model_config": dict(getattr(model, "config", {})), "seed": seed,
        "split": {**bundle.split, "kind": dc["split"], "train": n_train,
                  "val": len(bundle.val) if bundle.val is not None else 0,
                  "test": len(bundle.test) if bundle.test is not None else 0},
        "class_names": class_names, "num_classes": num_classes, "git": R.git_info() if ctx.is_main else {},
        "host": {**R.host_info(device), "reuse_freed_memory": reuse_memory, "channels_last": channels_last},
        "world_size": ctx.world_size, "torch_version": str(torch.__version__),
        "smelib_version": __version__, "started_utc": R.utc_iso(), "epochs": tc["epochs"],
        "batch_size": batch, "steps_per_epoch": steps_per_epoch,
        "train_stats": train_stats.to_dict(), "model_init": mechanisms,
    }
    cpu_at_start = R.cpu_times()

    def write_record(status: str, **extra: Any) -> dict[str, Any]:
        wall = state["stats"]["wall_seconds_before"] + time.time() - started
        train_s = state["stats"]["train_seconds"]
        now = R.cpu_times()
        rec = {**base_record, "status": status, "finished_utc": R.utc_iso(), "wall_seconds": wall,
               "train_seconds": train_s,
               "images_per_s": state["stats"]["train_images"] / train_s if train_s > 0 else None,
               # A shared VM's stolen CPU time explains wall-time differences between runs on different days
               # (resumed runs: this process's part only).
               "cpu_steal_fraction": R.steal_fraction(cpu_at_start, now),
               # other processes on this machine (a test suite, a second run) slow a run as much: such a record
               # times the machine badly (smelib.experiments.time_estimate passes over it)
               "cpu_others_fraction": R.others_fraction(cpu_at_start, now),
               "epochs_done": len(state["history"]), "steps_done": state["global_step"], "best": state["best"],
               "history": state["history"], "segments": segments(), "run_dir": str(run_dir), **extra}
        if ctx.is_main:
            R.write_json(run_dir / "record.json", rec)
        return rec

    if ctx.is_main:
        write_record("running")

    # ---- the loop
    view = TrainView(bundle.train, bundle.augment, seed, size_tuple(dc["size"]))
    collate = pad_collate(dc["ignore_index"])
    max_steps = tc["max_steps"] or math.inf
    every = int(tc["checkpoint_every_steps"])
    epochs = int(tc["epochs"])
    val_every = int(tc["val_every"])
    eval_kw = dict(num_classes=num_classes, ignore_index=dc["ignore_index"], size=dc["size"],
                   batch_size=dc["eval_batch_size"], amp_dtype=amp_dtype, channels_last=channels_last, ctx=ctx)
    epoch_bar = tqdm(total=epochs, initial=min(state["epoch"], epochs), desc="epochs", disable=not bars,
                     position=0, dynamic_ncols=True)
    stop = state["global_step"] >= max_steps
    epoch = state["epoch"]
    last_line = time.time()
    while epoch < epochs and not stop:
        batches = epoch_batches(n_train, batch, seed, epoch)
        todo = batches[state["batches_done"]:]
        if max_steps < math.inf:
            todo = todo[: int(max_steps - state["global_step"])]
        local = [[(epoch, i) for i in D.shard(b, ctx)] for b in todo]
        loader = torch.utils.data.DataLoader(
            view, batch_sampler=local, num_workers=int(dc["workers"]), collate_fn=collate,
            pin_memory=device.type == "cuda", worker_init_fn=worker_init,
            generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 1)),
        )
        net.train()
        if tc["freeze_bn"]:
            _freeze_bn(net)
        bar = tqdm(total=len(batches), initial=state["batches_done"], desc=f"epoch {epoch + 1}/{epochs}",
                   leave=False, disable=not bars, position=1, dynamic_ncols=True)
        tick = time.perf_counter()
        for images, masks in loader:
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            lr = schedule.apply()
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                logits = net(images)
            loss = criterion(logits, masks)
            if tc["nan_at_step"] is not None and state["global_step"] + 1 == tc["nan_at_step"]:
                loss = loss * float("nan")  # testing aid (train.nan_at_step)
            loss_value = float(D.all_reduce_mean(ctx, loss.detach()))
            if not math.isfinite(loss_value):
                message = (f"non-finite loss ({loss_value}) at step {state['global_step'] + 1} (epoch {epoch + 1}); "
                           f"training stopped. The last good state is {last_path}"
                           + ("" if last_path.is_file() else " (none was written yet)")
                           + "; lower optim.lr, set train.grad_clip, or use train.amp=none")
                if ctx.is_main:
                    write_record("diverged", error=message)
                bar.close()
                epoch_bar.close()
                raise TrainingDiverged(message)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), float(tc["grad_clip"]))
            scaler.step(optimizer)
            scaler.update()
            schedule.advance()

            now = time.perf_counter()
            st = state["stats"]
            st["train_seconds"] += now - tick
            st["epoch_seconds"] += now - tick
            st["train_images"] += batch
            st["epoch_loss_sum"] += loss_value
            st["epoch_loss_steps"] += 1
            state["global_step"] += 1
            state["batches_done"] += 1
            bar.update(1)
            if bars:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{st['train_images'] / max(st['train_seconds'], 1e-9):.1f}")
            if verbose and not bars and time.time() - last_line >= 60:  # a heartbeat in logs (no TTY)
                last_line = time.time()
                _say(True, f"epoch {epoch + 1}/{epochs}  batch {state['batches_done']}/{len(batches)}  "
                     f"step {state['global_step']}  loss {loss_value:.4f}  lr {lr:.2e}  "
                     f"{st['train_images'] / max(st['train_seconds'], 1e-9):.1f} img/s")
            if state["global_step"] >= max_steps:
                stop = True
            if every and state["global_step"] % every == 0 and state["batches_done"] < len(batches) and not stop:
                save("last")
            tick = time.perf_counter()
        bar.close()

        # ---- end of the epoch (or of the run, when max_steps stops it early)
        t_val = time.perf_counter()
        last_epoch = epoch + 1 == epochs or stop
        val_metrics = None
        if bundle.val is not None and len(bundle.val) and val_every and ((epoch + 1) % val_every == 0 or last_epoch):
            # The bare model, not the DDP wrapper: ranks evaluate different numbers of batches, and a DDP forward
            # may run collectives (buffer broadcasts) that would then never be matched.
            _broadcast_buffers(model, ctx)
            val_metrics = evaluate(model, bundle.val, **eval_kw)
        st = state["stats"]
        st["epoch_seconds"] += time.perf_counter() - t_val
        row = {"epoch": epoch + 1, "step": state["global_step"], "lr": schedule.lr(max(schedule.step_count - 1, 0)),
               "train_loss": st["epoch_loss_sum"] / max(st["epoch_loss_steps"], 1),
               **_metrics_row("val", val_metrics), "seconds": st["epoch_seconds"],
               "images_per_s": st["train_images"] / st["train_seconds"] if st["train_seconds"] else None}
        state["history"].append(row)
        st["epoch_loss_sum"], st["epoch_loss_steps"], st["epoch_seconds"] = 0.0, 0, 0.0
        state["epoch_complete"] = state["batches_done"] >= len(batches)
        if val_metrics is not None and not math.isnan(val_metrics.miou):
            if state["best"]["miou"] is None or val_metrics.miou > state["best"]["miou"]:
                state["best"] = {"miou": val_metrics.miou, "epoch": epoch + 1, "step": state["global_step"]}
                save("best")
        save("last")
        if ctx.is_main:
            R.write_log_csv(run_dir / "log.csv", state["history"])
        _say(verbose and not bars, f"epoch {epoch + 1}/{epochs}  step {state['global_step']}  "
             f"loss {row['train_loss']:.4f}  lr {row['lr']:.2e}"
             + (f"  val mIoU {100 * val_metrics.miou:.2f}" if val_metrics is not None else "")
             + f"  {row['seconds']:.1f} s")
        epoch_bar.update(1)
        if not state["epoch_complete"]:
            break
        epoch += 1
        state["epoch"], state["batches_done"], state["epoch_complete"] = epoch, 0, False
    epoch_bar.close()

    # ---- final evaluation with the best (else the last) weights
    D.barrier(ctx)
    final_path = best_path if state["best"]["miou"] is not None else last_path
    final_ckpt = read_checkpoint(final_path)
    model.load_state_dict(final_ckpt["model"])
    eval_kw["size"] = dc["size"]
    tta = bool(cfg["eval"]["tta"])
    final: dict[str, Any] = {"checkpoint": final_path.stem, "epoch": len(final_ckpt["history"]), "tta": tta,
                             "decision": rule.to_dict()}
    if bundle.val is not None and len(bundle.val):
        final["val"] = evaluate(model, bundle.val, tta=tta, decision=rule, **eval_kw).to_dict()
    if tc["test_at_end"] and bundle.test is not None and len(bundle.test):
        final["test"] = evaluate(model, bundle.test, tta=tta, decision=rule, **eval_kw).to_dict()
    input_size = size_tuple(dc["size"]) or tuple(int(s) for s in bundle.input_size)
    record = {}
    if ctx.is_main:
        stored: dict[str, Any] = {}
        if tc["save_predictions"] and bundle.test is not None and len(bundle.test):
            # argmax without TTA: the label maps a qualitative figure shows, whatever eval.decision scored above
            maps = predict_dataset(model, bundle.test, size=dc["size"], batch_size=dc["eval_batch_size"],
                                   device=device)
            pred_path = R.write_predictions(run_dir / R.PREDICTIONS_FILE, [str(i) for i in bundle.test.ids], maps)
            stored = {"predictions": {"relpath": R.PREDICTIONS_FILE, "subset": "test", "n": len(maps),
                                      "checkpoint": final_path.stem, "decision": "argmax", "tta": False,
                                      "sha256": sha256_file(pred_path)}}
        params = sum(p.numel() for p in model.parameters())
        record = write_record(
            "completed", final=final, params=params, params_m=params / 1e6, **stored,
            gmacs=_fvcore_gmacs(model, int(cfg["model"]["in_channels"]), input_size), input_size=list(input_size),
            checkpoint={"path": str(final_path), "relpath": f"checkpoints/{final_path.name}",
                        "kind": final_path.stem, "sha256": sha256_file(final_path)},
            last_checkpoint={"path": str(last_path), "relpath": "checkpoints/last.pt",
                             "sha256": sha256_file(last_path)},
        )
        _say(verbose, f"run {run_id} done: {run_dir}")
    record = D.broadcast_object(ctx, record)
    return RunResult(record, run_dir, best_path if best_path.is_file() else None, last_path, state["history"])
