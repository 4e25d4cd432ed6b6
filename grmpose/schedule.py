"""Learning-rate schedules and the weights' moving average, as plain functions of the run's progress.

The training loop sets the learning rate before every optimiser step from two numbers:

* ``progress`` in [0, 1]: how far the run is. With a time budget it is the fraction of the budget
  used (training time accumulated over every start of the run, so a resumed run continues its
  schedule); with a step budget the fraction of optimiser steps; otherwise the fraction of epochs
  (epoch + batches done / batches per epoch). See :func:`run_progress`.
* ``step``: the number of good optimiser steps taken so far (for the warmup).

:func:`lr_at` turns them into a learning rate:

* ``"step"`` (DEKR's multistep): ``lr * 0.1 ** n`` with n the number of drop points (fractions of
  the run) that ``progress`` has reached. DEKR drops at epochs 90 and 120 of 140 (COCO) and 200 and
  260 of 300 (CrowdPose): :data:`SCHEDULES`.
* ``"cosine"``: ``lr * (r + (1 - r) * (1 + cos(pi * progress)) / 2)``, from ``lr`` down to
  ``lr * r`` (r = ``min_lr_ratio``) at the end of the run.
* a linear warmup multiplies either by ``min(1, (step + 1) / warmup_steps)``: the first step runs
  at ``lr / warmup_steps``, step ``warmup_steps - 1`` and later at the full rate.

:class:`WeightEMA` keeps an exponential moving average of a model's parameters and buffers,
``e <- d * e + (1 - d) * w`` after each good optimiser step (integer buffers, such as BatchNorm's
batch counter, are copied).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from grmpose.checkpoint import unwrap

# DEKR's schedules: (epochs, epochs at which the lr drops x0.1).
SCHEDULES: dict[str, tuple[int, tuple[int, ...]]] = {"coco": (140, (90, 120)), "crowdpose": (300, (200, 260))}

LR_SCHEDULES = ("step", "cosine")


def lr_at(
    lr: float,
    progress: float,
    step: int,
    *,
    schedule: str = "step",
    drops: tuple[float, ...] = (),
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.01,
) -> float:
    """The learning rate for the optimiser step that follows ``step`` good steps, at ``progress``.

    Args:
        lr: the base (peak) learning rate.
        progress: fraction of the run done, 0 at the start (values past 1 count as 1 for cosine).
        step: good optimiser steps taken so far (0 for the first step).
        schedule: ``"step"`` (x0.1 at each fraction in ``drops`` reached) or ``"cosine"``.
        drops: the step schedule's drop points, as fractions of the run.
        warmup_steps: linear warmup length in optimiser steps (0: none).
        min_lr_ratio: where the cosine ends, relative to ``lr``.
    """
    if schedule == "step":
        rate = lr * 0.1 ** sum(progress >= d for d in drops)
    elif schedule == "cosine":
        p = min(max(progress, 0.0), 1.0)
        rate = lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


def run_progress(
    *,
    elapsed_s: float,
    max_minutes: float | None,
    global_step: int,
    max_steps: int | None,
    epoch: int,
    batch: int,
    batches_per_epoch: int,
    epochs: int,
) -> float:
    """Fraction of the run done: of the time budget if there is one, else of the step budget, else of
    the epochs (``epoch`` plus ``batch`` of ``batches_per_epoch`` batches done)."""
    if max_minutes is not None:
        return elapsed_s / (60.0 * max_minutes)
    if max_steps is not None:
        return global_step / max_steps
    return (epoch + batch / batches_per_epoch) / epochs


def drop_fractions(
    schedule: str, epochs: int, lr_steps: tuple[int, ...] | None, epoch_driven: bool
) -> tuple[float, ...]:
    """The step schedule's drop points as fractions of the run.

    Explicit ``lr_steps`` (epochs) are fractions of ``epochs``. Otherwise DEKR's schedule: scaled
    to ``epochs`` and rounded to whole epochs when epochs drive the run (so a 140-epoch COCO run
    drops at epochs 90 and 120 exactly), its exact fractions under a time or step budget.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    full_epochs, steps = SCHEDULES[schedule]
    if lr_steps is not None:
        return tuple(s / epochs for s in lr_steps)
    if epoch_driven:
        return tuple(max(1, round(s * epochs / full_epochs)) / epochs for s in steps)
    return tuple(s / full_epochs for s in steps)


class WeightEMA:
    """Exponential moving average of a model's weights (parameters and buffers).

    ``model`` is a copy of the network holding the average, in eval mode and without gradients;
    validate and save it like any model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``e <- decay * e + (1 - decay) * w`` for every floating-point tensor; copy the others."""
        current = unwrap(model).state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(self.decay).add_(value, alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
