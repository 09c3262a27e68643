"""Optimisers and learning-rate schedules against hand calculations."""

from __future__ import annotations

import math

import pytest
import torch

from volseg.config import OptimizerConfig, ScheduleConfig
from volseg.training.optim import LearningRateSchedule, build_optimizer


def test_poly_cosine_and_warmup_by_hand():
    poly = LearningRateSchedule(ScheduleConfig(name="poly", power=0.9), 0.01, total_steps=100)
    assert poly.lr_at(0) == 0.01 and poly.lr_at(50) == pytest.approx(0.01 * 0.5**0.9)
    cosine = LearningRateSchedule(ScheduleConfig(name="cosine"), 1.0, total_steps=10)
    assert cosine.lr_at(5) == pytest.approx(0.5) and cosine.lr_at(10) == pytest.approx(0.0)
    warm = LearningRateSchedule(ScheduleConfig(name="constant"), 1.0, total_steps=10, warmup_steps=4)
    assert [warm.lr_at(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_schedule_sets_every_group():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [parameter]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1)
    LearningRateSchedule(ScheduleConfig(name="poly", power=1.0), 2.0, total_steps=4).apply(optimizer, 2)
    assert [group["lr"] for group in optimizer.param_groups] == [1.0, 1.0]


@pytest.mark.parametrize(
    "name,kind",
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizers(name, kind):
    optimizer = build_optimizer(
        OptimizerConfig(name=name, lr=0.1, weight_decay=1e-4), [torch.nn.Parameter(torch.ones(2))]
    )
    assert isinstance(optimizer, kind) and optimizer.param_groups[0]["weight_decay"] == 1e-4
    if name == "sgd":
        assert optimizer.param_groups[0]["nesterov"] and not math.isnan(optimizer.param_groups[0]["momentum"])
