"""The training-step measurements of smelib.study.train_levers."""

from __future__ import annotations

import pytest
import torch

from smelib.study import train_levers


@pytest.mark.parametrize("p, rate", [(0.5, 0.5), (0.1, 26 / 256)])
def test_the_byte_mask_drops_at_its_quantised_rate_and_keeps_the_mean(p: float, rate: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = train_levers.byte_mask_dropout(x, p)
    assert (y == 0).float().mean().item() == pytest.approx(rate, abs=0.003)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout: the expectation is unchanged


def test_both_measurements_return_one_time_per_repetition_and_variant() -> None:
    steps = train_levers.bf16_step_seconds(batch=2, size=32, reps=2, decoder_width=16, context_width=16)
    assert set(steps) == {"fp32", "bf16"} and all(len(v) == 2 and min(v) > 0 for v in steps.values())
    masks = train_levers.dropout_mask_seconds(shape=(1, 4, 8, 8), reps=3)
    assert set(masks) == {"bernoulli", "byte_mask", "none"} and all(len(v) == 3 for v in masks.values())
