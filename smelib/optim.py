"""Optimisers and the per-step learning-rate schedule (warm-up + cosine / poly / constant)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["LRSchedule", "WeightEMA", "build_optimizer", "build_schedule"]


class LRSchedule:
    """Per-step learning rate: linear warm-up, then cosine / poly decay to ``min_lr_ratio`` or constant.

    ``factor(step)`` for ``step`` in ``[0, total_steps)`` (the lr of the step about to run):

    * warm-up (``step < warmup``): ``start + (1 - start) * step / warmup``;
    * then with ``t = (step - warmup) / max(1, total - warmup - 1)`` in [0, 1]:
      cosine ``m + (1 - m) * (1 + cos(pi t)) / 2``; poly ``m + (1 - m) * (1 - t) ** power``; constant 1.

    So the first post-warm-up step runs at the peak lr and the last one at ``min_lr_ratio`` × lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int, warmup_steps: int,
                 name: str = "cosine", warmup_start_ratio: float = 0.1, min_lr_ratio: float = 0.01,
                 power: float = 0.9) -> None:
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.name = name
        self.start = float(warmup_start_ratio)
        self.min_ratio = float(min_lr_ratio)
        self.power = float(power)
        self.step_count = 0

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1 - self.start) * step / self.warmup_steps
        if self.name == "constant":
            return 1.0
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps - 1))
        m = self.min_ratio
        if self.name == "cosine":
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))
        return m + (1 - m) * (1 - t) ** self.power

    def lr(self, step: int | None = None) -> float:
        return self.base_lr * self.factor(self.step_count if step is None else step)

    def apply(self) -> float:
        """Set the lr of the step about to run on every param group; returns it."""
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count = int(state["step"])


def build_optimizer(cfg: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over all trainable parameters, weight decay on all of them (as the
    template does)."""
    o = cfg["optim"]
    params = [p for p in model.parameters() if p.requires_grad]
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=bool(o["nesterov"]),
                               weight_decay=o["weight_decay"])
    return torch.optim.AdamW(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                             weight_decay=o["weight_decay"])




def build_schedule(cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LRSchedule:
    """The config's schedule over ``epochs * steps_per_epoch`` steps, warm-up in epochs.

    ``train.max_steps`` below that length compresses the whole schedule (warm-up included) proportionally into
    ``max_steps`` steps, so a shortened run still warms up, decays and ends at ``min_lr_ratio``.
    """
    full = cfg["train"]["epochs"] * steps_per_epoch
    warmup = cfg["schedule"]["warmup_epochs"] * steps_per_epoch
    total = full
    if cfg["train"]["max_steps"] and cfg["train"]["max_steps"] < full:
        total = int(cfg["train"]["max_steps"])
        warmup = warmup * total / full
    s = cfg["schedule"]
    return LRSchedule(optimizer, cfg["optim"]["lr"], total, round(warmup), s["name"], s["warmup_start_ratio"],
                      s["min_lr_ratio"], s["power"])


class WeightEMA:
    """An exponential moving average of a model's weights (``train.ema``): after the ``n``-th optimiser step,
    ``ema = d_n * ema + (1 - d_n) * weights`` for every floating-point parameter and buffer (BatchNorm running
    statistics included), with ``d_n = min(decay, (1 + n) / (10 + n))``; integer buffers are copied.

    The average is the model that is validated, kept as ``best.pt`` and evaluated at the end; the raw weights go on
    training. A decay ``d`` averages over about ``1 / (1 - d)`` recent steps. The warm-up ``d_n`` lets the first
    steps' weights replace the random initialisation quickly: without it, ``d^n`` of the initial weights and
    BatchNorm statistics stay in the average (a fifth after 800 steps at 0.998), and a running variance averaged
    with its initial 1.0 normalises a trained layer wrongly long after the weights have moved on.

    Args:
        model: the module whose weights are averaged (its current weights start the average).
        decay: in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0  # optimiser steps folded in so far (the warm-up's n; checkpointed as ``ema_updates``)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: ``min(decay, (1 + n) / (10 + n))``."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        d = self.current_decay()
        self.updates += 1
        for key, value in model.state_dict().items():
            avg = self.state[key]
            if avg.is_floating_point():
                avg.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                avg.copy_(value)

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights (``model`` itself is left as it is)."""
        import copy

        out = copy.deepcopy(model)
        out.load_state_dict(self.state)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (CPU copies), as a model ``state_dict``."""
        return {k: v.detach().to("cpu").clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from a saved average."""
        for key, value in state.items():
            self.state[key].copy_(value)
