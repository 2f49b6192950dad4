"""The learning-rate schedule and the time budget of a training run."""
from __future__ import annotations

import math
import time


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    # cyclic: one triangle up and down per quarter of training, decaying peaks
    cycle = (progress * 4) % 1.0
    return (1 - abs(2 * cycle - 1)) * (1 - 0.75 * progress) + 0.05


# A time budget fixes the step count once this many steps have been timed (after the first
# step, which pays for allocator and CUDA warm-up); with the usual warmup it is decided
# before the cosine part of the schedule starts.
BUDGET_TIMING_STEPS = 20


def steps_within_budget(total: int, done: int, seconds_per_step: float, seconds_left: float) -> int:
    """Step count that fits a time budget: the ``done`` steps plus as many as ``seconds_left``
    holds at ``seconds_per_step``, never more than ``total`` nor fewer than ``done``."""
    more = int(seconds_left / seconds_per_step) if seconds_per_step > 0 else total
    return max(done, min(total, done + more))


class TimeBudget:
    """Fits a run into ``seconds`` counted from ``start`` (a ``time.monotonic()`` reading).

    Steps ``first_step + 1 .. first_step + 1 + timing_steps`` are timed; at the end of that
    window the run's step count is set to what fits (:attr:`plan_step`), and once the
    budget is spent the run stops at the current step whatever the plan said.
    """

    def __init__(self, seconds: float, start: float, first_step: int, timing_steps: int) -> None:
        self.seconds, self.start, self.timing_steps = seconds, start, timing_steps
        self.timing_from = first_step + 1
        self.plan_step = self.timing_from + timing_steps
        self._t_timing: float | None = None

    def total_after(self, step: int, total: int) -> int:
        """The run's step count after ``step`` steps were done (``total``: the count so far)."""
        now = time.monotonic()
        if step == self.timing_from:
            self._t_timing = now
        elif step == self.plan_step and self._t_timing is not None:
            total = steps_within_budget(total, step, (now - self._t_timing) / self.timing_steps,
                                        self.seconds - (now - self.start))
        return step if now - self.start >= self.seconds else total
