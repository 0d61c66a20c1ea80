"""The sweep's resume policy, as pure functions of a run's state: no files, no processes.

Before an attempt, `decide` maps the run's log state (`voxmix.formats.runlog.read_state`) and its plan
entry to what the launcher does; after an attempt, `settle` maps the exit status and the new state to
completed, retry or failed. The launchers do the I/O (reading the state, moving folders, starting
processes) around these answers.
"""

from __future__ import annotations

from enum import Enum

from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import RunState

from .options import SweepError


class Action(Enum):
    """What to do with a run before its next attempt."""

    SKIP = "skip"
    """Its log ends `completed`: nothing to do."""
    START = "start"
    """No log yet: start it."""
    RESUME = "resume"
    """Interrupted (no `end` event) with a checkpoint: continue with `--resume`."""
    RESTART = "restart"
    """Failed, or interrupted without a checkpoint: move the attempt aside and start from scratch."""


class Verdict(Enum):
    """What an attempt amounted to."""

    COMPLETED = "completed"
    RETRY = "retry"
    FAILED = "failed"


def check_budget(run: PlannedRun, state: RunState, log: str) -> None:
    """A folder that holds another budget's run is not this run: refuse it rather than mix the two."""
    if state.started and state.budget_samples != run.budget_samples:
        hint = ""
        if state.budget_samples is not None and 0 < state.budget_samples < run.budget_samples:
            # The trainer rounds a budget down to whole optimizer steps; run_sweep refuses such plans
            # before launching, but a plan run by another tool (or an older sweep) can still get here.
            hint = (
                " (if this run was started from this plan, the trainer rounded the budget down to whole "
                "global batches, data.batch_size x GPUs x optim.grad_accum: plan again with "
                "`lawfit plan --global-batch B`)"
            )
        raise SweepError(
            f"{log}: budget_samples {state.budget_samples} differs from the plan's "
            f"{run.budget_samples} for run {run.run_id!r}: remove the folder or use another --runs-dir" + hint
        )


def decide(run: PlannedRun, state: RunState, *, has_checkpoint: bool, log: str = "runlog.jsonl") -> Action:
    """The action for `run` whose log (at `log`, named in errors) reads `state`.

    `has_checkpoint`: whether the run folder holds a complete checkpoint (`checkpoints/latest.json`).
    Raises `SweepError` when the log belongs to a run with another budget.
    """
    check_budget(run, state, log)
    if state.status == "completed":
        return Action.SKIP
    if state.status == "running":
        return Action.RESUME if has_checkpoint else Action.RESTART
    if state.status == "failed":
        return Action.RESTART
    return Action.START


def settle(
    returncode: int, run: PlannedRun, state: RunState, *, attempts: int, retries: int, log: str
) -> Verdict:
    """The verdict on an attempt that exited with `returncode` and left the log at `state`.

    Completed needs both: exit 0 (the launcher and every rank finished) and a log that ends `completed`
    (the trainer reached its budget). Otherwise the run is retried while `attempts <= retries`.
    """
    check_budget(run, state, log)
    if returncode == 0 and state.status == "completed":
        return Verdict.COMPLETED
    return Verdict.RETRY if attempts <= retries else Verdict.FAILED
