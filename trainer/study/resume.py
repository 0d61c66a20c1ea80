"""The sweep's resume policy, as pure functions of a run's state: no files, no processes.

Before an attempt, `decide` maps the run's log state (`voxmix.formats.runlog.read_state`), its plan
entry and the differences between the two (`differences`) to what the launcher does; after an attempt,
`settle` maps the exit status and the new state to completed, retry or failed. The launchers do the I/O
(reading the state, moving folders, starting processes) around these answers.

A run is defined by its plan entry (mixture, budget, seed, evaluation points) and the trainer config the
sweep gives it (preset and `--set` overrides). A run folder whose log's `start` event recorded another
definition is *stale*: it is reported with each differing field (old -> new), never silently skipped or
resumed with new settings; `--rerun-stale` moves it aside and runs it again, `--keep-stale` accepts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import RunLog, RunState
from voxmix.trainer.pretrain.resume_check import ALLOWED_CHANGES

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
    STALE = "stale"
    """Finished (or interrupted with a checkpoint) with another definition than the plan's: report it."""


class Verdict(Enum):
    """What an attempt amounted to."""

    COMPLETED = "completed"
    RETRY = "retry"
    FAILED = "failed"


def check_budget(run: PlannedRun, state: RunState, log: str) -> None:
    """After an attempt: a log of another budget than the plan's is refused rather than counted (the
    trainer rounds a budget down to whole optimizer steps)."""
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


# Config fields that do not change what a run computes (paths, logging, checkpoint cadence, loader
# threads, evaluation batching): a change of these is no reason to call a finished run stale. The run's
# budget, seed and evaluation points are compared as plan fields (below), not as config fields.
NOT_DEFINING = frozenset(
    {
        "train.out", "train.run_id", "data.manifest", "train.log_every", "train.tensorboard",
        "train.peak_tflops", "checkpoint.every_steps", "checkpoint.keep", "data.num_threads",
        "eval.batch_size", "train.budget_samples", "train.seed", "eval.at",
    }
    | set(ALLOWED_CHANGES)  # what the trainer lets change on --resume (W&B settings, ...) defines no run
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class RunDefinition:
    """What defines a run's results: as planned (`planned_definition`) or as logged (`recorded_definition`)."""

    mixture: dict[str, float]
    budget_samples: int
    seed: int
    eval_at: list[int]
    config: dict[str, Any]
    """The trainer config, flattened to `section.field` (see `flat_config`)."""


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """`{"optim": {"lr": 1e-3}}` -> `{"optim.lr": 1e-3}` (one level: the config's sections)."""
    flat: dict[str, Any] = {}
    for section, fields in config.items():
        if isinstance(fields, dict):
            flat.update({f"{section}.{k}": v for k, v in fields.items()})
        else:
            flat[section] = fields
    return flat


def _eval_at(config: dict[str, Any]) -> list[int]:
    ev = config.get("eval")
    return list(ev.get("at") or []) if isinstance(ev, dict) else []


def planned_definition(run: PlannedRun, config: dict[str, Any]) -> RunDefinition:
    """`run` as the sweep launches it; `config` is the trainer config of this run (`Config.to_dict()`,
    built as trainer/run.py builds it, the run's budget, seed and evaluation points included)."""
    return RunDefinition(
        mixture=dict(run.mixture),
        budget_samples=run.budget_samples,
        seed=run.seed,
        eval_at=_eval_at(config),
        config=flat_config(config),
    )


def recorded_definition(log: RunLog) -> RunDefinition:
    """The definition a run log's first `start` event recorded."""
    return RunDefinition(
        mixture=dict(log.mixture),
        budget_samples=log.budget_samples,
        seed=log.seed,
        eval_at=_eval_at(log.config),
        config=flat_config(log.config),
    )


def differences(recorded: RunDefinition, planned: RunDefinition) -> list[str]:
    """Each field that differs, as `field old -> new`; empty when the folder holds the planned run.

    Mixture weights match within a relative 1e-9 (the trainer normalises them); a domain absent on one
    side has weight 0. Config fields in `NOT_DEFINING`, or absent on either side (a field added or
    removed by another version of voxmix), are not compared; nor are `eval.points` / `eval.first` when
    the plan gives the evaluation points (the trainer then ignores them).
    """
    out = []
    for d in sorted(set(recorded.mixture) | set(planned.mixture)):
        old, new = recorded.mixture.get(d, 0.0), planned.mixture.get(d, 0.0)
        if not math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"mixture.{d} {old!r} -> {new!r}")
    for name in ("budget_samples", "seed", "eval_at"):
        old, new = getattr(recorded, name), getattr(planned, name)
        if old != new:
            out.append(f"{name} {old!r} -> {new!r}")
    skip = NOT_DEFINING | ({"eval.points", "eval.first"} if planned.eval_at else set())
    for key in sorted(set(recorded.config) & set(planned.config) - skip):
        old, new = recorded.config[key], planned.config[key]
        if old != new:
            out.append(f"config {key} {old!r} -> {new!r}")
    return out


def decide(
    run: PlannedRun,
    state: RunState,
    *,
    has_checkpoint: bool,
    changed: Sequence[str] = (),
    stale: str = "report",
) -> Action:
    """The action for `run` whose log reads `state`.

    `has_checkpoint`: whether the run folder holds a complete checkpoint (`checkpoints/latest.json`).
    `changed`: the differences between the logged and the planned definition (`differences`).
    `stale`: what to do with a stale run: "report" it, "rerun" it from scratch, or "keep" a finished one
    as it is (an interrupted stale run cannot be kept: it would continue with other settings).
    """
    if state.status == "new":
        return Action.START
    if state.status == "failed" or (state.status == "running" and not has_checkpoint):
        return Action.RESTART  # nothing of it is kept, whatever its settings were
    if changed:
        if stale == "rerun":
            return Action.RESTART
        if not (stale == "keep" and state.status == "completed"):
            return Action.STALE
    return Action.SKIP if state.status == "completed" else Action.RESUME


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
