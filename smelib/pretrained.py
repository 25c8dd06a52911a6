"""Released checkpoints that ship inside the package, verified by SHA256 before they are loaded.

A release is a training checkpoint stripped to what inference needs (weights in fp16, the model's registry name
and constructor config, class names, normalisation, the run id and its test metrics), written to
``smelib/checkpoints/<name>.pt`` and listed in ``smelib/checkpoints/manifest.json`` with its SHA256. Anywhere a
checkpoint path is accepted (``smelib eval/predict --checkpoint``, :func:`smelib.engine.load_checkpoint`), a
release name works too: the file is hashed and refused if it does not match the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from smelib.checkpoint import FORMAT, CheckpointError, atomic_save, read_checkpoint, sha256_file

RELEASE_DIR = Path(__file__).resolve().parent / "checkpoints"
MANIFEST = RELEASE_DIR / "manifest.json"

#: The release the chapters and ``smelib predict`` use by default.
DEFAULT_RELEASE = "sme_deeplabv3plus_lite_neuseg"

# train_stats: the training subset's class and defect-area statistics, which the dynamic decision rule needs
_KEEP = ("format", "version", "smelib_version", "torch_version", "run_id", "model_name", "model_config", "num_classes",
         "in_channels", "class_names", "normalization", "config", "epoch", "global_step", "best", "train_stats")


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


def resolve(spec: str | os.PathLike) -> Path:
    """A checkpoint path from a path or a release name (a release is verified against its SHA256)."""
    path = Path(spec)
    if path.exists() or os.sep in str(spec) or str(spec).endswith(".pt"):
        return path
    return release_path(str(spec))


def make_release(checkpoint: str | os.PathLike, name: str, metrics: dict[str, Any] | None = None,
                 out_dir: Path | None = None, max_mb: float = 20.0) -> dict[str, Any]:
    """Strip a training checkpoint to an fp16 inference release and add it to the manifest.

    Args:
        checkpoint: a ``best.pt``/``last.pt`` written by ``smelib train``.
        name: the release name (file ``<name>.pt``).
        metrics: numbers to record beside it (e.g. the run's test mIoU), copied into the manifest.
        out_dir: where the release and ``manifest.json`` live.
        max_mb: refuse to write a release larger than this.

    Returns:
        The manifest entry.

    Raises:
        CheckpointError: the release would exceed ``max_mb``, or ``<name>.pt`` exists already (never overwritten).
    """
    out_dir = RELEASE_DIR if out_dir is None else out_dir
    ckpt = read_checkpoint(checkpoint)
    release = {k: ckpt[k] for k in _KEEP if k in ckpt}
    release["kind"] = "release"
    release["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pt"
    if path.exists():
        raise CheckpointError(f"release {str(path)!r} exists already; choose another name or delete it first")
    atomic_save(release, path)
    size = path.stat().st_size
    if size > max_mb * 2**20:
        path.unlink()
        raise CheckpointError(f"release {name!r} would be {size / 2**20:.1f} MB, over the {max_mb} MB limit")
    entry = {"file": path.name, "sha256": sha256_file(path), "bytes": size, "model_name": release["model_name"],
             "num_classes": int(release["num_classes"]), "run_id": release.get("run_id"),
             "source_checkpoint_sha256": sha256_file(checkpoint), "metrics": metrics or {}}
    entries = manifest(out_dir / "manifest.json")
    entries[name] = entry
    (out_dir / "manifest.json").write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return entry


def is_release(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint dict is an inference release (fp16 weights, no optimiser state)."""
    return ckpt.get("format") == FORMAT and ckpt.get("kind") == "release"


def load_release(name: str = DEFAULT_RELEASE, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the model of release ``name`` in float32 eval mode: ``(model, meta)`` as ``load_checkpoint``."""
    from smelib.checkpoint import load_checkpoint

    return load_checkpoint(release_path(name), device=device)
