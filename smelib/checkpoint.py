"""Checkpoints: atomic writes, safe loading (``weights_only=True``), RNG state capture, model reconstruction.

A checkpoint is a ``dict`` holding only tensors, plain containers, strings, numbers, booleans and ``None``, so it
loads with ``torch.load(path, weights_only=True)`` (no pickled code runs). Keys::

    format            "smelib-checkpoint"      version   CHECKPOINT_VERSION
    kind              "last" | "best" | "best_raw"   smelib_version, torch_version, run_id
    model_name        registry name            model_config   the model's constructor config (``model.config``)
    num_classes, in_channels, class_names      config         the full resolved training config
    model             state dict (CPU tensors, no DDP prefix)
    optimizer, scaler, schedule                their state dicts (schedule: {"step": int})
    rng               {"python", "numpy", "torch", "cuda"} (see :func:`capture_rng`): rank 0's
    rng_ranks         every rank's ``rng`` in rank order (one entry in a single process); a resumed run of the
                      same size restores each rank its own
    precision         "fp32" | "bf16" | "fp16": the autocast the run trained in (a resume keeps it, or says so)
    epoch             epoch in progress (0-based)   batches_done   optimiser steps done in that epoch
    global_step       optimiser steps done in all   epoch_complete whether ``epoch`` finished (incl. validation)
    best              {"miou": float | None, "epoch": int | None}
    best_raw          under ``train.ema`` only: the same for the raw weights (``best_raw.pt`` keeps them)
    train_model       under ``train.ema`` only: the raw weights that go on training (``model`` is the average);
                      ``ema_decay`` and ``ema_updates`` (the average's decay and its warm-up step count) beside them
    history           list of per-epoch log rows    stats  {"train_images", "train_seconds"}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHECKPOINT_VERSION",
    "DEFAULT_RELEASE",
    "DIGEST_KEY",
    "CheckpointError",
    "atomic_save",
    "build_model_from_checkpoint",
    "capture_rng",
    "check_state_dict",
    "is_release",
    "load_checkpoint",
    "load_release",
    "manifest",
    "read_checkpoint",
    "release_path",
    "resolve_checkpoint",
    "restore_rng",
    "sha256_file",
    "tensor_digest",
]

CHECKPOINT_VERSION = 1
FORMAT = "smelib-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: missing, corrupt, not ours, or for another model/class count."""


#: The key under which a checkpoint stores :func:`tensor_digest` of its own tensors.
DIGEST_KEY = "tensor_sha256"


def tensor_digest(obj: Any) -> str:
    """SHA-256 over every tensor in a nested checkpoint dict: each tensor's key path, dtype, shape and bytes, in
    sorted key order (the :data:`DIGEST_KEY` entry itself left out).

    It changes when any bit of any tensor changes, and does not depend on how ``torch.save`` laid the file out.
    """
    digest = hashlib.sha256()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{where}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if not (where == "" and key == DIGEST_KEY):
                    walk(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(obj, "")
    return digest.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``.

    A reader (or a run killed mid-write) never sees a half-written file: ``path`` holds either the old or the new
    checkpoint. An smelib checkpoint (a dict with ``format``) is saved with :func:`tensor_digest` of its tensors
    under :data:`DIGEST_KEY`, which :func:`read_checkpoint` verifies.
    """
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = {**obj, DIGEST_KEY: tensor_digest(obj)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# RNG states as weights_only-safe containers
# ---------------------------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, when initialised) generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng` (CUDA states are restored only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``, onto the CPU) and check it is an smelib checkpoint.

    Args:
        path: a checkpoint file, or the name of a released checkpoint (its file is checked against the manifest).
        verify: check the tensors' integrity: against the digest the checkpoint stores (:data:`DIGEST_KEY`), or,
            for a checkpoint written before digests, against the SHA-256 that the package manifest or the run's
            ``record.json`` holds for it. ``False`` skips the check and warns that it did.

    Raises:
        CheckpointError: missing file, unreadable or unsafe content, not an smelib checkpoint, or (``verify``) a
            file whose tensors do not match its digest or recorded SHA-256.
    """
    path = resolve_checkpoint(path)  # a release name (e.g. "sme_deeplabv3plus_lite_neuseg") is verified and located
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or objects weights_only refuses to unpickle
        reason = str(err).split("\n")[0].split(" Please file an issue")[0]
        # torch's message goes on to suggest weights_only=False: advice never to follow for an untrusted file.
        raise CheckpointError(f"cannot load checkpoint {str(path)!r} safely (weights_only=True): {reason}. "
                              "It is corrupt, not a checkpoint, or holds objects other than tensors and plain data; "
                              "do not load it with pickle.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an smelib checkpoint (no format={FORMAT!r} key)")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint version {ckpt['version']}, newer than this smelib ({CHECKPOINT_VERSION})"
        )
    if verify:
        _verify(path, ckpt)
    else:
        warnings.warn(f"checkpoint {str(path)!r} loaded without an integrity check (verify=False)", stacklevel=2)
    return ckpt


def _verify(path: Path, ckpt: dict[str, Any]) -> None:
    stored = ckpt.get(DIGEST_KEY)
    if stored is not None:
        if tensor_digest(ckpt) != stored:
            raise CheckpointError(f"checkpoint {str(path)!r}: its tensors do not match the digest stored in it: the "
                                  "file is corrupt or was altered; use another copy or retrain")
        return
    # Written before digests: the package manifest (releases) or the run's record.json may hold its SHA-256.
    expected = _recorded_sha(path, ckpt)
    if expected is None:
        warnings.warn(f"checkpoint {str(path)!r} has no tensor digest (written before smelib stored one) and no "
                      "recorded SHA-256: its integrity cannot be checked", stacklevel=3)
    elif sha256_file(path) != expected[0]:
        raise CheckpointError(f"checkpoint {str(path)!r} differs from the file {expected[1]} records (SHA-256 "
                              "mismatch): it is corrupt or was altered; use another copy or retrain")


def _recorded_sha(path: Path, ckpt: dict[str, Any]) -> tuple[str, str] | None:
    """The SHA-256 some record holds for this checkpoint, and which record: ``(sha, where)``, or None."""
    if ckpt.get("kind") == "release":
        for name, entry in manifest().items():
            if entry.get("run_id") == ckpt.get("run_id") and entry.get("model_name") == ckpt.get("model_name"):
                return entry["sha256"], f"the package manifest (release {name!r})"
    record = path.parent.parent / "record.json"
    if path.parent.name == "checkpoints" and record.is_file():
        try:
            rec = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for key in ("checkpoint", "last_checkpoint"):
            entry = rec.get(key) or {}
            if entry.get("relpath") == f"checkpoints/{path.name}" and entry.get("sha256"):
                return entry["sha256"], f"{record} ({key})"
    return None


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """A fresh model of the checkpoint's registry name and constructor config, with its weights loaded."""
    from smelib.models import build

    config = dict(ckpt["model_config"])
    num_classes = int(config.pop("num_classes", ckpt["num_classes"]))
    in_channels = int(config.pop("in_channels", ckpt["in_channels"]))
    try:
        model = build(ckpt["model_name"], num_classes=num_classes, in_channels=in_channels, **config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"cannot rebuild model {ckpt['model_name']!r} from the checkpoint's config: "
                              f"{err}") from None
    check_state_dict(model, ckpt["model"], ckpt["model_name"])
    # releases store fp16 weights; load_state_dict copies them into the float32 parameters
    model.load_state_dict(ckpt["model"])
    return model


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first mismatching keys/shapes, instead of torch's long message."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch " + ", ".join(f"{k}: {a} in {source} vs {b} in the model"
                                                        for k, a, b in wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError("weights do not fit the model: " + "; ".join(parts))


def load_checkpoint(
    path: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a checkpoint.

    Args:
        path: a ``.pt`` written by training (``best.pt`` or ``last.pt``).
        model_name: when given, the checkpoint must hold this registry model.
        num_classes: when given, the checkpoint must have this many classes.
        device: where to put the model.
        verify: check the tensors' integrity (see :func:`read_checkpoint`).

    Returns:
        ``(model, meta)``: the model in eval mode, and the checkpoint dict without the weight and optimiser
        tensors (``model_name``, ``model_config``, ``num_classes``, ``class_names``, ``config``, ``epoch``, ...).

    Raises:
        CheckpointError: unreadable, unsafe, or for another model or class count (the message says which).
    """
    ckpt = read_checkpoint(path, verify=verify)
    if model_name is not None and ckpt["model_name"] != model_name:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds model {ckpt['model_name']!r}, not {model_name!r}"
        )
    if num_classes is not None and int(ckpt["num_classes"]) != int(num_classes):
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained for {ckpt['num_classes']} classes, not {num_classes}"
        )
    model = build_model_from_checkpoint(ckpt).to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler", "rng")}
    meta["path"] = str(path)
    return model, meta


# ---------------------------------------------------------------------------------------------------------------
# Released checkpoints: shipped inside the package, found by name, verified by SHA256 before they are loaded
# ---------------------------------------------------------------------------------------------------------------

RELEASE_DIR = Path(__file__).resolve().parent / "checkpoints"
MANIFEST = RELEASE_DIR / "manifest.json"

#: The release the chapters and ``smelib predict`` use by default.
DEFAULT_RELEASE = "sme_deeplabv3plus_lite_neuseg"


def manifest(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The releases listed in the manifest: ``{name: {"file", "sha256", "bytes", "model_name", ...}}``."""
    path = MANIFEST if path is None else path
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def release_path(name: str, manifest_path: Path | None = None) -> Path:
    """The verified file of release ``name``.

    Raises:
        CheckpointError: unknown name, missing file, or a file whose SHA256 differs from the manifest's.
    """
    manifest_path = MANIFEST if manifest_path is None else manifest_path
    entries = manifest(manifest_path)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise CheckpointError(f"no released checkpoint named {name!r} (released: {known})")
    entry = entries[name]
    path = manifest_path.parent / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"released checkpoint {name!r}: file {str(path)!r} is missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"released checkpoint {str(path)!r} has SHA256 {digest}, but the manifest says {entry['sha256']}: "
            "the file is corrupt or was replaced; reinstall smelib or retrain"
        )
    return path


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A checkpoint path from a path or a release name (a release is verified against its SHA256)."""
    path = Path(spec)
    if path.exists() or os.sep in str(spec) or str(spec).endswith(".pt"):
        return path
    return release_path(str(spec))


def is_release(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint dict is an inference release (fp16 weights, no optimiser state)."""
    return ckpt.get("format") == FORMAT and ckpt.get("kind") == "release"


def load_release(name: str = DEFAULT_RELEASE, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the model of release ``name`` in float32 eval mode: ``(model, meta)`` as ``load_checkpoint``."""
    return load_checkpoint(release_path(name), device=device)
