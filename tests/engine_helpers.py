"""Shared helpers of the engine tests: tiny synthetic datasets (NEU-Seg and VOC layouts) and a tiny config.

The synthetic pictures are learnable on purpose: each defect class has its own look (bright blob, dark blob,
thin line) on a noisy gray background, so a few optimiser steps already move the loss.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

#: A StarNet-s050-based lite model with 16-wide heads: ~0.4 M parameters, fast on one core.
TINY_MODEL = {
    "name": "sme_deeplabv3plus_lite",
    "overrides": {"backbone": "starnet_s050", "context_width": 16, "decoder_width": 16, "low_level_width": 8,
                  "ela_gn_groups": None},
}


def _picture(rng: np.random.Generator, h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    img = rng.normal(128, 12, size=(h, w)).clip(0, 255)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(1, k))
        top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        bh, bw = int(rng.integers(h // 6, h // 2)), int(rng.integers(w // 6, w // 2))
        if cls == 3:  # a thin line: a scratch
            bh = max(2, h // 16)
        img[top : top + bh, left : left + bw] = (220, 40, 180)[(cls - 1) % 3] + rng.normal(0, 8, (bh, bw))[
            : h - top, : w - left]
        mask[top : top + bh, left : left + bw] = cls
    return img.clip(0, 255).astype(np.uint8), mask


def make_neu(root: Path, n_train: int = 16, n_test: int = 4, size: int = 48, seed: int = 0) -> Path:
    """A NEU-Seg-layout dataset (``images/{training,test}``, ``annotations/...``), 4 classes, gray-as-RGB JPEGs."""
    rng = np.random.default_rng(seed)
    for split, n, start in (("training", n_train, 201), ("test", n_test, 1)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = _picture(rng, size, size, 4)
            stem = f"{start + i:06d}"
            Image.fromarray(np.repeat(img[..., None], 3, axis=2)).save(root / "images" / split / f"{stem}.jpg",
                                                                        quality=95)
            Image.fromarray(mask).save(root / "annotations" / split / f"{stem}.png")
    return root


def make_voc(root: Path, sizes: list[tuple[int, int]], num_classes: int = 3, seed: int = 1) -> Path:
    """A VOC-layout dataset with ``num_classes`` classes and images of the given sizes (H, W); the first half
    train, then val, then test lists."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (h, w) in enumerate(sizes):
        img, mask = _picture(rng, h, w, num_classes)
        sid = f"img{i:03d}"
        Image.fromarray(img).save(voc / "JPEGImages" / f"{sid}.jpg", quality=95)
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{sid}.png")
        ids.append(sid)
    n = len(ids)
    parts = {"train": ids[: n // 2], "val": ids[n // 2 : 3 * n // 4], "test": ids[3 * n // 4 :]}
    for name, part in parts.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(part) + "\n")
    (voc / "class_names.txt").write_text("\n".join(["background", "blob", "stripe"][:num_classes]) + "\n")
    return root


def tiny_config(data_root: Path | str, **sections: Any) -> dict[str, Any]:
    """A complete-enough config for a run of a few steps on a synthetic dataset; ``sections`` update it."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "model": copy.deepcopy(TINY_MODEL),
        "data": {"root": str(data_root), "batch_size": 4, "eval_batch_size": 8, "val_fraction": 0.25,
                 "augment": {"hflip": 0.5, "rot90": True}},
        "optim": {"name": "adamw", "lr": 5e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 1, "max_steps": 3, "checkpoint_every_steps": 1, "seed": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return cfg


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_tiny_runs(root: Path, seeds: tuple[int, ...] = (0, 1)) -> list[Path]:
    """Run folders of :func:`tiny_config` trained once per seed on a :func:`make_neu` dataset under ``root``."""
    from smelib import training as engine

    neu = make_neu(root / "neu")
    out = []
    for seed in seeds:
        cfg = tiny_config(neu)
        cfg["train"]["seed"] = seed
        out.append(engine.train(cfg, runs_dir=root / "runs", quiet=True).run_dir)
    return out


class NaNAtCall(torch.nn.Module):
    """A loss that turns NaN at its ``at``-th call: the fault is injected from outside the training loop
    (``monkeypatch.setattr(training, "build_loss", ...)``)."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.inner(logits, target)
        return loss * float("nan") if self.calls == self.at else loss
