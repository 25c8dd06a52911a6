"""Process-wide settings read from the environment, decided in one place.

Chapters and commands ask these functions; none of them reads ``os.environ`` itself, so the rules for quick
mode and for finding the dataset are stated once.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def quick_mode() -> bool:
    """Whether chapters and the main job should use the bundled sample and tiny schedules.

    Controlled by ``SMELIB_QUICK``: ``1``/``true``/``yes``/``on`` switch it on, unset/``0``/``false``/``no``/``off``
    leave it off. The test command and CI set it; a reader running chapters by hand gets the full dataset and
    the real configurations.

    Raises:
        ValueError: ``SMELIB_QUICK`` holds anything else, so a typo never silently selects the slow path.
    """
    value = os.environ.get("SMELIB_QUICK", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"SMELIB_QUICK={value!r} is not understood; use 1 or 0")


def repo_root() -> Path:
    """The repository checkout this package lives in (where ``data/``, ``configs/`` and ``results/`` are)."""
    return Path(__file__).resolve().parent.parent


def sample_root() -> Path:
    """The small real sample of NEU-Seg bundled in ``data/NEU_Seg_sample`` (native layout)."""
    return repo_root() / "data" / "NEU_Seg_sample"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where the dataset to use lives.

    Order: an explicit path (``--data-root``), then in quick mode the bundled sample, then ``SMELIB_DATA``, then
    ``../shared/data/NEU_Seg`` beside the checkout (the project's own machines), then the bundled sample.

    Args:
        explicit: a path given by the caller; wins over everything else.

    Returns:
        The dataset root (not checked for content here; the readers in :mod:`smelib.data` do that).
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    if quick_mode():
        return sample_root()
    env = os.environ.get("SMELIB_DATA")
    if env:
        return Path(env).expanduser()
    shared = repo_root().parent / "shared" / "data" / "NEU_Seg"
    if shared.is_dir():
        return shared
    return sample_root()
