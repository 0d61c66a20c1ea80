"""The training loop's mutable state, in one place: what a checkpoint restores and what the triggers read.

Everything the loop changes between optimizer steps lives here, so the step, the evaluator, the checkpoint
manager and the metrics sink receive it explicitly instead of sharing variables through closures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TrainState:
    """Progress of one rank; identical on every rank at every optimizer-step boundary."""

    step: int = 0
    """Optimizer steps done (the engine's `global_steps` after the last `train_step`)."""
    micro_done: int = 0
    """Micro-batches done; `step * grad_accum` at every boundary (checkpoints are only taken there)."""
    evals_done: list[int] = field(default_factory=list)
    """Evaluation points (global sample counts) already evaluated; saved in the checkpoint."""
    pending: list[int] = field(default_factory=list)
    """Evaluation points still to evaluate, ascending."""
    loss_acc: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    """(sum of micro-batch losses, micro-batches) since the last boundary; float64 on the training device
    so that adding a loss does not synchronize with the device (one sync per boundary instead)."""

    @classmethod
    def begin(
        cls,
        *,
        step: int,
        grad_accum: int,
        eval_at: list[int],
        evals_done: list[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> TrainState:
        """The state at optimizer step `step` (0 for a new run, the checkpoint's step on resume)."""
        done = list(evals_done or [])
        return cls(
            step=step,
            micro_done=step * grad_accum,
            evals_done=done,
            # Evaluation points are sample counts >= 1: the first lands after the first optimizer step.
            pending=[p for p in eval_at if p not in done],
            loss_acc=torch.zeros(2, dtype=torch.float64, device=device),
        )

    def add_loss(self, loss: torch.Tensor) -> None:
        """Accumulate one micro-batch's loss (no device sync)."""
        self.loss_acc[0] += loss.detach().double()
        self.loss_acc[1] += 1

    def due_evals(self, position: int) -> list[int]:
        """Pending evaluation points reached once `position` global samples are trained."""
        return [p for p in self.pending if p <= position]

    def mark_evaluated(self, points: list[int]) -> None:
        self.evals_done += points
        self.pending = [p for p in self.pending if p not in points]


@dataclass(frozen=True)
class Boundary:
    """What is due after an optimizer step; the loop pays for the loss reduction only when any is."""

    step: int
    position: int
    evals: list[int]
    log: bool
    checkpoint: bool

    def __bool__(self) -> bool:
        return bool(self.evals) or self.log or self.checkpoint


def every(step: int, period: int, *, final: bool) -> bool:
    """The periodic trigger of logs and checkpoints: every `period` optimizer steps and at the end."""
    return step % period == 0 or final
