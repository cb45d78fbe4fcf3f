"""The tuning loop's state: everything needed to continue exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MetaState"]


@dataclass
class MetaState:
    """The tuning loop's state (immutable by convention: steps return a new one).

    Attributes:
        iteration: meta-iterations done (also the position in the seed sequence).
        raw: the raw hyperparameters (float64 arrays).
        opt_state: the meta-optimizer's state.
        step_scale: multiplier of the meta step size (halved on each backtrack).
        backtracks: backtracks done so far.
        prev_raw, prev_opt_state: the state before the last update (for backtracking).
        history: one record per meta-iteration.
        stop_reason: set when the loop must stop (divergence it cannot recover from).
        tuning_s: seconds spent in meta-iterations so far (over every resume).
        started: the start has been chosen (the coarse search, if any, is done).
        start: how the start was chosen (JSON-able: the coarse grid's points and estimates).
        select_loss: the selection estimate of ``raw`` (None: not yet computed).
        best_raw, best_opt_state: the iterate with the lowest selection estimate so far, and
            the meta-optimizer state it was reached with (the loop returns it, and backtracks
            to it when an iterate is much worse).
        best_iteration: which iterate that is (0: the start).
        best_select_loss: its selection estimate.
        since_best: iterates since the estimate last improved (for the patience rule).
    """

    iteration: int
    raw: dict[str, np.ndarray]
    opt_state: Any
    step_scale: float = 1.0
    backtracks: int = 0
    prev_raw: dict[str, np.ndarray] | None = None
    prev_opt_state: Any = None
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    tuning_s: float = 0.0
    started: bool = False
    start: dict | None = None
    select_loss: float | None = None
    best_raw: dict[str, np.ndarray] | None = None
    best_opt_state: Any = None
    best_iteration: int = 0
    best_select_loss: float = float("inf")
    since_best: int = 0
