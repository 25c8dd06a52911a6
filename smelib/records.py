"""Run directories and run records: ids, provenance (git, host, versions), ``log.csv`` and ``record.json``.

Layout of one run (``results/runs/<run_id>/``)::

    record.json         everything needed to cite the run (see :data:`RECORD_KEYS`)
    log.csv             one row per epoch (:data:`LOG_COLUMNS`)
    config.yaml         the resolved config, for ``smelib train --config`` to repeat it
    curves.png          loss / mIoU curves (written by ``smelib reproduce``)
    checkpoints/        best.pt, last.pt (git-ignored)
    predictions_test.npz  the final checkpoint's test label maps (only with ``train.save_predictions``)

A run directory is created with ``mkdir(exist_ok=False)``, so two runs can never share one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LOG_COLUMNS",
    "PREDICTIONS_FILE",
    "PredictionsError",
    "RECORD_KEYS",
    "LOCK_FILE",
    "RunDirError",
    "RunLock",
    "cpu_flags",
    "cpu_model",
    "cpu_times",
    "create_run_dir",
    "git_info",
    "host_info",
    "make_run_id",
    "read_predictions",
    "resolve_run",
    "steal_fraction",
    "write_eval_record",
    "write_json",
    "write_log_csv",
    "write_predictions",
    "others_fraction",
]

#: File name of a run's stored test predictions (:func:`write_predictions`), inside its run folder.
PREDICTIONS_FILE = "predictions_test.npz"

#: Columns of ``log.csv``; metrics are fractions in [0, 1], empty where an epoch had no validation.
LOG_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "val_miou", "val_miou_defects", "val_mpa", "val_precision", "val_recall",
    "val_pixel_acc", "seconds", "images_per_s",
)

#: Keys every completed ``record.json`` has.
RECORD_KEYS = (
    "run_id", "status", "config_name", "config", "model", "model_config", "seed", "split", "class_names",
    "num_classes", "git", "host", "torch_version", "smelib_version", "started_utc", "finished_utc", "wall_seconds",
    "train_seconds", "images_per_s", "epochs_done", "steps_done", "epochs", "best", "final", "params", "params_m",
    "gmacs", "input_size", "checkpoint", "run_dir",
)


class RunDirError(RuntimeError):
    """A run directory that would overwrite another run, or a missing one on resume."""


class PredictionsError(ValueError):
    """A stored-predictions file that cannot be read or does not match; the message names the file."""


def utc_stamp(now: _dt.datetime | None = None) -> str:
    """``20250101T120000Z`` (sortable, filename-safe)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def utc_iso(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def make_run_id(config_name: str, model: str, split: str, seed: int, stamp: str | None = None) -> str:
    """``<config>_<model>_<split>_s<seed>_<UTC timestamp>``."""
    return f"{config_name}_{model}_{split}_s{seed}_{stamp or utc_stamp()}"


def create_run_dir(runs_dir: str | os.PathLike, run_id: str) -> Path:
    """Create ``runs_dir/run_id`` (or ``run_id-2``, ``-3``… if a run started in the same second); never reuses one."""
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        path = runs / (run_id if attempt == 1 else f"{run_id}-{attempt}")
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"could not create a new run directory for {run_id!r} under {runs}")


#: The lock file a training process holds in its run folder (:class:`RunLock`).
LOCK_FILE = ".lock"

# What a run killed before its first checkpoint leaves behind: a folder that may be restarted.
_ABANDONED_FILES = {"record.json", "config.yaml", "log.csv", "checkpoints", LOCK_FILE}


def _abandoned_start(path: Path) -> bool:
    """Whether ``path`` holds only the beginnings of a run that never wrote a checkpoint."""
    names = {p.name for p in path.iterdir()}
    ckpts = path / "checkpoints"
    if not names <= _ABANDONED_FILES or (ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir())):
        return False
    try:
        status = json.loads((path / "record.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return "record.json" not in names
    return status == "running"


def claim_out_dir(out: str | os.PathLike) -> Path:
    """Use ``out`` as a new run's directory: it must not exist, be empty, or hold only a run that stopped before
    its first checkpoint (whose files are then replaced).

    Raises:
        RunDirError: ``out`` already holds files (another run's, most likely); use ``--resume`` to continue it.
    """
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise RunDirError(f"output directory {str(path)!r} is a file")
        if any(p.name != LOCK_FILE for p in path.iterdir()) and not _abandoned_start(path):
            raise RunDirError(
                f"output directory {str(path)!r} already exists and is not empty; a run never overwrites another "
                "run's files (choose a new --out, or add --resume to continue the run that is there)"
            )
        for name in ("record.json", "config.yaml", "log.csv"):
            (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunLock:
    """An exclusive lock on a run folder while one process trains it (``flock`` on ``<run>/.lock``, released when
    the process ends, even by SIGKILL). Acquiring it also removes the temporary files of checkpoint writes that a
    killed process left behind (``checkpoints/.*.tmp``): with the lock held, no other process is writing them.
    Where ``fcntl`` does not exist (Windows) it locks nothing.
    """

    def __init__(self, run_dir: str | os.PathLike | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._fh: Any = None

    @property
    def held(self) -> bool:
        """Whether this object holds a lock now."""
        return self._fh is not None

    def acquire(self, run_dir: str | os.PathLike | None = None) -> RunLock:
        """Take the lock on ``run_dir`` (default: the folder given at construction), or raise :class:`RunDirError`
        naming the process that holds it."""
        if run_dir is not None:
            self.run_dir = Path(run_dir)
        if self.run_dir is None:
            raise ValueError("RunLock.acquire needs a run folder")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.run_dir / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunDirError(f"run folder {str(self.run_dir)!r} is being trained by another process (pid {holder}); "
                              "wait for it to finish or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        for tmp in (self.run_dir / "checkpoints").glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def git_info(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout ``root`` (default: the repository)."""
    from smelib.settings import repo_root

    cwd = Path(root) if root is not None else repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=30, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor name elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def cpu_flags() -> list[str]:
    """Which of the instruction-set flags that decide PyTorch's CPU speed (AVX2, AVX-512, AMX) the CPU has."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _SPEED_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_times() -> dict[str, int] | None:
    """The machine's cumulative CPU time in clock ticks from ``/proc/stat``, with this process's own:
    ``{"total", "steal", "busy", "own"}``, or None where there is no ``/proc/stat``. ``busy`` is the ticks any
    process ran (user, nice, system, irq, softirq), ``own`` this process's user and system ticks, its waited-for
    children's included. Two readings give :func:`steal_fraction` and :func:`others_fraction`."""
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already inside user/nice.
    busy = sum(ticks[:3]) + sum(ticks[5:7])
    t = os.times()
    own = round((t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))
    return {"total": sum(ticks[:8]), "steal": ticks[7] if len(ticks) > 7 else 0, "busy": busy, "own": own}


def steal_fraction(before: Mapping[str, int] | None, after: Mapping[str, int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two :func:`cpu_times` readings.

    On a shared virtual machine this is why the same run takes different wall times on different days: 0.5 means
    half of the machine's CPU time went elsewhere. None when either reading is missing or no time passed."""
    if before is None or after is None:
        return None
    total = after["total"] - before["total"]
    return (after["steal"] - before["steal"]) / total if total > 0 else None


def others_fraction(before: Mapping[str, int] | None, after: Mapping[str, int] | None) -> float | None:
    """The share of the machine's CPU time that processes other than this one ran between two :func:`cpu_times`
    readings (0: this process had the machine to itself).

    A training run's wall time says how fast a model trains on a kind of machine only when nothing else ran
    beside it: a test suite or a second run on the same two cores makes it slower by a factor no record of the
    machine explains. None when either reading is missing (or predates ``busy``) or no time passed."""
    if before is None or after is None or "busy" not in before or "busy" not in after:
        return None
    total = after["total"] - before["total"]
    if total <= 0:
        return None
    other = (after["busy"] - before["busy"]) - (after["own"] - before["own"])
    return min(max(other / total, 0.0), 1.0)  # the two counters tick apart: clip the rounding


_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND",
               "OMP_PLACES", "KMP_AFFINITY", "KMP_BLOCKTIME")


def host_info(device: Any = None) -> dict[str, Any]:
    """Host name, OS, CPU model, cores, torch threads, the OpenMP threading variables that are set (they change
    CPU speed: ``OMP_WAIT_POLICY=PASSIVE`` trains about 1.6x slower on an otherwise idle 2-core machine), and the
    GPU's name when ``device`` is CUDA."""
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "device": str(device) if device is not None else "cpu",
        "gpu": None,
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _json_default(value: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; NaN/inf become None (not valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return to_jsonable(_json_default(value))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (tmp file + ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_eval_record(
    path: str | os.PathLike, metrics: Any, meta: Mapping[str, Any], *, checkpoint: str | os.PathLike, subset: str,
    images: int, tta: bool, decision: Mapping[str, Any], autocast: str | None = None, limit: int | None = None,
    device: str = "cpu", wall_seconds: float | None = None, git: Mapping[str, Any] | None = None,
    weights_label: str | None = None,
) -> Path:
    """Write the record of one evaluation of a checkpoint (``smelib eval --record``) to a new JSON file.

    An evaluation changes no weights, so it is not a run record, but it is a result the book may quote (test-time
    augmentation, a decision rule, bf16): it names the checkpoint by SHA256 and by the run that trained it, and states
    the subset, the split kind, the options, the git commit, the host and the wall time beside the metrics.

    Args:
        path: the new file; an existing one is never overwritten.
        metrics: a :class:`smelib.metrics.SegMetrics` (anything with ``to_dict()``).
        meta: the checkpoint's metadata from :func:`smelib.checkpoint.load_checkpoint`.
        git: :func:`git_info` taken when the evaluation started (the code that ran); default: read now.
        weights_label: what the weights are, in words (default: the run that trained them and its epoch); stored
            with their SHA256 under ``weights``, because a checkpoint path can later hold other weights.

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"evaluation record {str(path)!r} exists; records are never overwritten")
    from smelib.checkpoint import sha256_file

    config = meta.get("config") or {}
    split = config.get("data", {}).get("split") if isinstance(config.get("data"), Mapping) else None
    sha = sha256_file(checkpoint)
    label = weights_label or f"run {meta.get('run_id')}, epoch index {meta.get('epoch')}"
    record = {
        "kind": "evaluation", "weights": {"sha256": sha, "label": label}, "checkpoint": os.fspath(checkpoint),
        "checkpoint_sha256": sha,
        "run_id": meta.get("run_id"), "model": meta.get("model_name"), "config_name": config.get("name"),
        "epoch": meta.get("epoch"), "class_names": meta.get("class_names"), "split": split, "subset": subset,
        "images": images, "limit": limit,
        "tta": tta, "decision": dict(decision), "autocast": autocast, "device": device,
        "git": dict(git) if git is not None else git_info(), "host": host_info(device), "finished_utc": utc_iso(),
        "wall_seconds": wall_seconds, "metrics": metrics.to_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, record)


def write_predictions(path: str | os.PathLike, ids: Sequence[str], masks: Sequence[Any]) -> Path:
    """Store label maps with their sample ids in a new compressed ``.npz`` (a few hundred kB for NEU-Seg's test set).

    Label maps compress well, so a run can keep its predictions where its checkpoint (tens of MB, not committed)
    cannot be kept: figures such as :mod:`smelib.study.qualitative`'s are then drawn from the run folder alone. Maps may
    differ in size; they are stored flat with their shapes.

    Args:
        ids: N sample ids; masks: N ``(H, W)`` arrays of class ids in [0, 255].

    Raises:
        FileExistsError: ``path`` exists (stored predictions are never overwritten).
        ValueError: ``ids`` and ``masks`` differ in length, or a map is not 2-D.
    """
    import numpy as np

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: stored predictions exist; they are never overwritten")
    if len(ids) != len(masks):
        raise ValueError(f"{len(ids)} ids but {len(masks)} label maps")
    arrays = [np.asarray(m) for m in masks]
    if any(a.ndim != 2 for a in arrays):
        raise ValueError("every label map must be 2-D (H, W)")
    flat = np.concatenate([a.astype(np.uint8).ravel() for a in arrays]) if arrays else np.zeros(0, np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, ids=np.asarray([str(i) for i in ids], dtype=np.str_),
                            shapes=np.asarray([a.shape for a in arrays], dtype=np.int64).reshape(-1, 2), masks=flat)
    os.replace(tmp, path)
    return path


def read_predictions(path: str | os.PathLike) -> tuple[list[str], list[Any]]:
    """Sample ids and ``(H, W)`` uint8 label maps from a file of :func:`write_predictions`, in stored order.

    Raises:
        PredictionsError: the file is missing, unreadable, or its sizes do not add up.
    """
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: no stored predictions")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, shapes, flat = data["ids"], data["shapes"], data["masks"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise PredictionsError(f"{path}: not a stored-predictions file ({err})") from None
    sizes = shapes.prod(axis=1) if len(shapes) else np.zeros(0, np.int64)
    if len(ids) != len(shapes) or int(sizes.sum()) != flat.size:
        raise PredictionsError(f"{path}: {len(ids)} ids, {len(shapes)} shapes and {flat.size} pixels do not match")
    ends = np.cumsum(sizes)
    masks = [flat[e - n:e].reshape(int(h), int(w)) for e, n, (h, w) in zip(ends, sizes, shapes)]
    return [str(i) for i in ids], masks


def write_log_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rewrite ``log.csv`` from all epoch rows so far (atomic; a resumed run rewrites it from its checkpoint).

    The columns are :data:`LOG_COLUMNS`, then any other key of the rows in the order it first appears (e.g. the
    raw weights' ``val_raw_*`` of a ``train.ema`` run)."""
    columns = list(LOG_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_log_csv(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """Rows of a ``log.csv`` with numbers parsed (empty cells become None)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return rows


def resolve_run(spec: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """A checkpoint path and its run record from a run folder (its record's best checkpoint) or a ``.pt``.

    Raises:
        RunDirError: the folder has no ``record.json`` or the checkpoint file is missing.
    """
    path = Path(spec)
    if path.is_dir():
        record_path = path / "record.json"
        if not record_path.is_file():
            raise RunDirError(f"{path}: not a run folder (no record.json)")
        record = json.loads(record_path.read_text())
        ckpt = path / (record.get("checkpoint") or {}).get("relpath", "checkpoints/best.pt")
        if not ckpt.is_file():
            raise RunDirError(f"{ckpt}: checkpoint missing (checkpoints are not committed; re-run the training "
                              f"of {record.get('run_id', path.name)})")
        return ckpt, record
    if not path.is_file():
        raise RunDirError(f"{path}: no such run folder or checkpoint")
    record_path = path.parent.parent / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    return path, record
