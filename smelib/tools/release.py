"""Making a release: a training checkpoint stripped to what inference needs, added to the package's manifest.

A release holds the weights in fp16, the model's registry name and constructor config, class names,
normalisation, the run id and its test metrics; it is written to ``smelib/checkpoints/<name>.pt`` and listed in
``smelib/checkpoints/manifest.json`` with its SHA256. Loading a release by name is the core's job
(:func:`smelib.checkpoint.release_path`); this module only writes them (``smelib release``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smelib.checkpoint import RELEASE_DIR, CheckpointError, atomic_save, manifest, read_checkpoint, sha256_file

# train_stats: the training subset's class and defect-area statistics, which the dynamic decision rule needs
_KEEP = ("format", "version", "smelib_version", "torch_version", "run_id", "model_name", "model_config", "num_classes",
         "in_channels", "class_names", "normalization", "config", "epoch", "global_step", "best", "train_stats")


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
