"""The sweep's resume policy (voxmix.trainer.study.resume): pure functions of a run's state, no processes."""

from __future__ import annotations

import pytest

from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import RunState
from voxmix.trainer.study.options import SweepError
from voxmix.trainer.study.resume import Action, Verdict, decide, settle

RUN = PlannedRun(
    run_id="pilot-a", role="fit", mixture={"a": 1.0}, budget_samples=96, eval_at=[48, 96], seed=0
)


def _state(status: str, budget: int | None = 96) -> RunState:
    started = status != "new"
    return RunState(status, started=started, budget_samples=budget if started else None, last_loss={"a": 0.5})


@pytest.mark.parametrize(
    ("status", "has_checkpoint", "action"),
    [
        ("new", False, Action.START),
        ("new", True, Action.START),  # a checkpoint without a log is not a run to continue
        ("completed", False, Action.SKIP),
        ("completed", True, Action.SKIP),
        ("running", True, Action.RESUME),  # killed mid-run: continue from its checkpoint
        ("running", False, Action.RESTART),  # killed before its first checkpoint
        ("failed", True, Action.RESTART),  # a failed run's checkpoint is not trusted
        ("failed", False, Action.RESTART),
    ],
)
def test_decide(status, has_checkpoint, action):
    assert decide(RUN, _state(status), has_checkpoint=has_checkpoint) is action


@pytest.mark.parametrize("status", ["running", "completed", "failed"])
def test_decide_refuses_a_folder_of_another_budget(status):
    with pytest.raises(SweepError, match=r"runs/pilot-a/runlog.jsonl: budget_samples 48 .* 96 .*'pilot-a'"):
        decide(RUN, _state(status, budget=48), has_checkpoint=False, log="runs/pilot-a/runlog.jsonl")


def test_decide_refuses_a_started_log_without_its_budget():
    # A log whose start event lacks the budget is another run's (or corrupt): refused, not resumed.
    with pytest.raises(SweepError):
        decide(RUN, RunState("running", started=True, budget_samples=None), has_checkpoint=True)
    assert decide(RUN, RunState("new"), has_checkpoint=False) is Action.START


@pytest.mark.parametrize(
    ("returncode", "status", "attempts", "retries", "verdict"),
    [
        (0, "completed", 1, 1, Verdict.COMPLETED),
        (0, "completed", 2, 1, Verdict.COMPLETED),  # the retry succeeded
        (0, "running", 1, 1, Verdict.RETRY),  # exit 0 without `end`: the trainer did not finish
        (1, "completed", 1, 1, Verdict.RETRY),  # logged completed, then a rank crashed
        (1, "failed", 1, 1, Verdict.RETRY),
        (1, "failed", 2, 1, Verdict.FAILED),  # retried once: reported
        (1, "new", 1, 0, Verdict.FAILED),  # no retries: the first failure is final
        (-9, "running", 3, 5, Verdict.RETRY),  # killed by a signal
    ],
)
def test_settle(returncode, status, attempts, retries, verdict):
    got = settle(returncode, RUN, _state(status), attempts=attempts, retries=retries, log="x")
    assert got is verdict


def test_settle_refuses_a_log_of_another_budget():
    with pytest.raises(SweepError, match="budget_samples 8"):
        settle(0, RUN, _state("completed", budget=8), attempts=1, retries=1, log="x")


def test_a_budget_rounded_down_by_the_trainer_is_explained():
    # The trainer trains whole global batches: a plan's 100 at batch 8 logs 96. The refusal says why.
    run = PlannedRun(run_id="p", role="fit", mixture={"a": 1.0}, budget_samples=100, eval_at=[100], seed=0)
    with pytest.raises(SweepError, match=r"budget_samples 96 differs .* 100 .*--global-batch B"):
        decide(run, _state("completed", budget=96), has_checkpoint=False)
    with pytest.raises(SweepError) as err:  # a larger logged budget is another run's, not a rounding
        decide(RUN, _state("completed", budget=200), has_checkpoint=False)
    assert "--global-batch" not in str(err.value)
