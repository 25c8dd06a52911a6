"""Two training-step measurements beside ``smelib bench --train`` (the Headroom chapter's speed levers).

* :func:`bf16_step_seconds`: one training step of a model in fp32 and under CPU bf16 autocast, interleaved. On a
  CPU without ``avx512_bf16``/AMX, oneDNN emulates bf16 and the step is many times slower; with them the bench's
  inference numbers promise a gain. ``smelib bench --train --cpu-bf16`` times the same against a bf16 matmul
  peak, which emulated bf16 makes take many minutes on such a host; this times the steps alone.
* :func:`dropout_mask_seconds`: the decoder's two dropouts (rates 0.5 and 0.1 on a ``(N, 64, 50, 50)`` feature,
  forward and backward) with torch's float Bernoulli mask, with a mask drawn as one random byte per element
  (``p`` quantised to 1/256), and without dropout: the most a cheaper mask can save.

Run ``python -m smelib.study.train_levers OUT.json``; the record holds the machine, the git commit and the raw
repetition times.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smelib.models import build
from smelib.tools.bench import machine_info

__all__ = ["bf16_step_seconds", "byte_mask_dropout", "dropout_mask_seconds", "measure"]


def _interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each callable, alternating between them so that a change in the machine's load hits all."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bf16_step_seconds(model: str = "sme_deeplabv3plus_lite", batch: int = 8, size: int = 200, reps: int = 3,
                      **model_kwargs: Any) -> dict[str, list[float]]:
    """Seconds per training step (forward, cross-entropy, backward, SGD) in ``fp32`` and ``bf16`` autocast.

    The input is ``(batch, 3, size, size)`` channels-last, as the training loop feeds it.
    """
    torch.manual_seed(0)
    net = build(model, num_classes=4, **model_kwargs).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch, size, size))

    def step(bf16: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()

    return _interleaved({"fp32": lambda: step(False), "bf16": lambda: step(True)}, reps)


def byte_mask_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of ``x`` (any shape) with a mask of random bytes: an element survives when its byte is
    at least ``round(256 p)``, so the rate is ``p`` quantised to 1/256 (exact for 0.5, 0.1016 for 0.1)."""
    threshold = round(256 * p)
    keep = torch.empty(x.shape, dtype=torch.uint8).random_() >= threshold
    return x * keep * (256 / (256 - threshold))


def dropout_mask_seconds(shape: tuple[int, ...] = (8, 64, 50, 50), reps: int = 30) -> dict[str, list[float]]:
    """Seconds of the decoder's dropout pair (0.5 then 0.1), forward and backward, on a channels-last ``shape``
    feature: torch's ``nn.Dropout`` (``bernoulli``), the byte mask, and no dropout (the multiply-free floor)."""
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    first, second = nn.Dropout(0.5).train(), nn.Dropout(0.1).train()

    def bernoulli() -> None:
        second(first(x)).sum().backward()

    def byte_mask() -> None:
        byte_mask_dropout(byte_mask_dropout(x, 0.5), 0.1).sum().backward()

    def none() -> None:
        (x * 1.0).sum().backward()

    return _interleaved({"bernoulli": bernoulli, "byte_mask": byte_mask, "none": none}, reps, warmup=3)


def measure(threads: int = 2) -> dict[str, Any]:
    """Both measurements on the lite model at the CPU-budget widths, with the machine they ran on."""
    torch.set_num_threads(threads)
    bf16 = bf16_step_seconds(decoder_width=64, context_width=64)
    dropout = dropout_mask_seconds()
    return {
        "machine": machine_info(),
        "bf16_step": {"model": "sme_deeplabv3plus_lite", "batch": 8, "size": 200, "seconds": bf16,
                      "median_seconds": {k: statistics.median(v) for k, v in bf16.items()}},
        "dropout_pair": {"shape": [8, 64, 50, 50], "rates": [0.5, 0.1], "seconds": dropout,
                         "median_seconds": {k: statistics.median(v) for k, v in dropout.items()}},
    }


if __name__ == "__main__":  # pragma: no cover - a measurement, run by hand
    record = measure()
    text = json.dumps(record, indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(json.dumps({k: v.get("median_seconds") for k, v in record.items() if isinstance(v, dict)}))
