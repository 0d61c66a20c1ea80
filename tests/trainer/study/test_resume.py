"""The sweep's resume policy (voxmix.trainer.study.resume): pure functions of a run's state, no processes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import RunState
from voxmix.trainer.study.options import SweepError
from voxmix.trainer.study.resume import (
    Action,
    Verdict,
    decide,
    differences,
    flat_config,
    planned_definition,
    settle,
)

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


@pytest.mark.parametrize(
    ("status", "has_checkpoint", "report", "rerun", "keep"),
    [
        ("completed", False, Action.STALE, Action.RESTART, Action.SKIP),
        ("running", True, Action.STALE, Action.RESTART, Action.STALE),  # would resume with new settings
        ("running", False, Action.RESTART, Action.RESTART, Action.RESTART),  # nothing to keep anyway
        ("failed", True, Action.RESTART, Action.RESTART, Action.RESTART),
    ],
)
def test_decide_on_a_run_logged_with_other_settings(status, has_checkpoint, report, rerun, keep):
    # A finished run whose plan entry changed is neither skipped nor rerun silently: reported (stale),
    # rerun with --rerun-stale, accepted with --keep-stale (only if finished: an interrupted one would
    # continue with the new settings).
    changed = ["seed 0 -> 1"]
    got = [
        decide(RUN, _state(status), has_checkpoint=has_checkpoint, changed=changed, stale=mode)
        for mode in ("report", "rerun", "keep")
    ]
    assert got == [report, rerun, keep]


CONFIG = {
    "optim": {"lr": 1e-3, "weight_decay": 0.05},
    "eval": {"at": [48, 96], "points": 6, "first": 64, "batch_size": 16},
    "train": {"out": "/runs/pilot-a", "seed": 0, "budget_samples": 96, "log_every": 10},
    "data": {"manifest": "/data/manifest.jsonl", "num_threads": 2, "batch_size": 8},
}


def test_flat_config():
    assert flat_config(CONFIG)["optim.lr"] == 1e-3 and flat_config({"x": 1}) == {"x": 1}


def test_differences_name_every_defining_field_old_to_new():
    planned = planned_definition(RUN, CONFIG)
    assert planned.eval_at == [48, 96] and differences(planned, planned) == []
    old = replace(
        planned,
        mixture={"a": 0.5, "b": 0.5},
        seed=3,
        budget_samples=48,
        eval_at=[48],
        config={**planned.config, "optim.lr": 2e-3},
    )
    assert differences(old, planned) == [
        "mixture.a 0.5 -> 1.0",
        "mixture.b 0.5 -> 0.0",  # a domain absent from the plan has weight 0
        "budget_samples 48 -> 96",
        "seed 3 -> 0",
        "eval_at [48] -> [48, 96]",
        "config optim.lr 0.002 -> 0.001",
    ]


def test_differences_ignore_what_does_not_change_a_run():
    planned = planned_definition(RUN, CONFIG)
    moved = {"train.out": "/elsewhere/pilot-a", "data.manifest": "/moved/manifest.jsonl"}
    cosmetic = {"train.log_every": 1, "data.num_threads": 1, "eval.batch_size": 4}
    # the plan gives the evaluation points: eval.points and eval.first are then unused by the trainer
    unused = {"eval.points": 8, "eval.first": 16}
    old = replace(planned, config={**planned.config, **moved, **cosmetic, **unused})
    old = replace(old, mixture={"a": 1.0 + 1e-15, "b": 0.0})  # the trainer normalises the weights
    assert differences(old, planned) == []
    # a field that one side lacks (another voxmix version) is not compared; any other change is named
    assert differences(replace(planned, config={"optim.new_field": 1}), planned) == []
    changed = replace(planned, config={**planned.config, "data.batch_size": 4})
    assert differences(changed, planned) == ["config data.batch_size 4 -> 8"]
    no_points = planned_definition(replace(RUN, eval_at=[]), {**CONFIG, "eval": {"at": None, "points": 6}})
    assert differences(replace(no_points, config={**no_points.config, "eval.points": 8}), no_points) == [
        "config eval.points 8 -> 6"
    ]


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
    with pytest.raises(SweepError, match=r"x: budget_samples 96 differs .* 100 .*--global-batch B"):
        settle(0, run, _state("completed", budget=96), attempts=1, retries=1, log="x")
    with pytest.raises(SweepError) as err:  # a larger logged budget is another run's, not a rounding
        settle(0, RUN, _state("completed", budget=200), attempts=1, retries=1, log="x")
    assert "--global-batch" not in str(err.value)
