"""Optimisers and learning-rate schedules from the config.

The schedule is a pure function of the step number, so resuming at a step gives the
same learning rate as an uninterrupted run without any scheduler state to restore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from volseg.config import OptimizerConfig, ScheduleConfig
from volseg.errors import choice_error


def build_optimizer(config: OptimizerConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, Adam, AdamW or RMSprop, with the configured weight decay."""
    parameters = list(parameters)
    if config.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    if config.name == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise choice_error("optimizer", config.name, ("sgd", "adam", "adamw", "rmsprop"))


class LearningRateSchedule:
    """Learning rate at each training step: linear warm-up, then poly, cosine or constant.

    poly: ``lr * (1 - t) ** power``; cosine: ``lr * (1 + cos(pi t)) / 2``, where ``t`` runs
    from 0 to 1 over the steps after the warm-up.
    """

    def __init__(self, config: ScheduleConfig, base_lr: float, total_steps: int, warmup_steps: int = 0) -> None:
        if config.name not in ("poly", "cosine", "constant"):
            raise choice_error("schedule", config.name, ("poly", "cosine", "constant"))
        self.config = config
        self.base_lr = base_lr
        self.total_steps = max(total_steps, 1)
        self.warmup_steps = min(max(warmup_steps, 0), self.total_steps - 1)

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / (self.warmup_steps + 1)
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        if self.config.name == "poly":
            return self.base_lr * (1.0 - progress) ** self.config.power
        if self.config.name == "cosine":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's learning rate for ``step``; returns it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
