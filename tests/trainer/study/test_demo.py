"""The demo's pure pieces: its options and command line, the pilot plan (lawfit's pairs design at a fixed
pilot size), the final budgets and the final plan over seeds. Fast: no processes, no training."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

from voxmix.formats.allocation import make_allocation
from voxmix.formats.plan import parse_plan, plan_json
from voxmix.trainer.study.compare import FINALS, FinalBudget, final_budgets
from voxmix.trainer.study.demo import final_plan, log_points, pilot_plan
from voxmix.trainer.study.options import DEMO_PILOT_SAMPLES, EVAL_CROPS, REPO, DemoOptions, StudyError

FIVE = ("ct_abdomen", "ct_abdomen_twin", "ct_chest", "mri_brain", "pet_wholebody")


def _script():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_defaults_hold_the_controls_and_several_seeds():
    o = DemoOptions()
    assert o.domains == FIVE
    assert (o.scales, o.final_seeds, o.eval_crops) == ((4.0,), 3, EVAL_CROPS)
    assert o.pilot_samples == DEMO_PILOT_SAMPLES and DEMO_PILOT_SAMPLES % 8 == 0  # whole tiny-preset batches
    assert f"eval.crops_per_domain={EVAL_CROPS}" in o.trainer_overrides
    # the user's --set comes after the demo's own, so it wins
    assert (
        DemoOptions(overrides=("eval.crops_per_domain=8",)).trainer_overrides[-1] == "eval.crops_per_domain=8"
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"scales": (1.0,)}, "--scales"),
        ({"scales": (4.0, 4.0)}, "--scales"),
        ({"scales": ()}, "--scales"),
        ({"final_seeds": 0}, "--final-seeds"),
        ({"eval_crops": 0}, "--eval-crops"),
    ],
)
def test_demo_options_name_the_bad_field(kw, match):
    with pytest.raises(StudyError, match=match):
        DemoOptions(**kw)


def test_command_line_fills_the_new_options():
    m = _script()
    o = m.options_from_args(m.parse_args(["--scales", "8,2,4", "--final-seeds", "5", "--eval-crops", "16"]))
    assert o.scales == (2.0, 4.0, 8.0) and o.final_seeds == 5 and o.eval_crops == 16
    with pytest.raises(SystemExit):
        m.parse_args(["--scales", "2,x"])


def test_log_points_are_whole_batches_beyond_the_start():
    pts = log_points(1.25 * 3200, 12800, 5, 8)
    assert pts[-1] == 12800 and pts[0] >= 4000 - 4 and all(p % 8 == 0 for p in pts)
    assert pts == sorted(set(pts)) and len(pts) == 5
    ref = np.geomspace(4000, 12800, 5)
    assert np.max(np.abs(np.array(pts) - ref)) <= 4  # nearest multiple of 8


def test_final_budgets_tags_only_when_several():
    (one,) = final_budgets((4.0,), 3200, 8)
    assert (one.samples, one.allocation, one.run_id("proportional", 2)) == (
        12800,
        "allocation.json",
        "final-proportional-s2",
    )
    many = final_budgets((2.0, 4.0, 8.0), 3000, 16)
    assert [b.samples for b in many] == [6000, 12000, 24000]
    assert many[2].allocation == "allocation_x8.json"
    assert many[2].allocation_proportional == "allocation_proportional_x8.json"
    assert many[0].run_id("transfer_aware", 0) == "final-transfer_aware-x2-s0"
    assert final_budgets((2.5,), 100, 8)[0].samples == 248  # 250 rounded to whole batches of 8


def test_final_plan_pairs_every_seed_at_every_budget():
    b4, b8 = FinalBudget(4.0, 9600, "_x4"), FinalBudget(8.0, 19200, "_x8")
    allocs = {
        b4: {"proportional": {"a": 5001, "b": 4, "c": 4595}, "transfer_aware": {"a": 7, "b": 9000, "c": 593}},
        b8: {"proportional": {"a": 10000, "b": 8, "c": 9192}, "transfer_aware": {"a": 1, "b": 1, "c": 19198}},
    }
    plan = final_plan(allocs, 2400, [3, 4, 5], 5, 8)
    ids = [r.run_id for r in plan.runs]
    assert len(ids) == len(set(ids)) == 12
    # per budget, per seed, both allocations: a sweep cut short leaves whole pairs
    assert ids[:4] == [
        "final-proportional-x4-s3",
        "final-transfer_aware-x4-s3",
        "final-proportional-x4-s4",
        "final-transfer_aware-x4-s4",
    ]
    by_id = {r.run_id: r for r in plan.runs}
    for fb, name, seed in itertools.product((b4, b8), FINALS, [3, 4, 5]):
        r = by_id[fb.run_id(name, seed)]
        counts = allocs[fb][name]
        assert r.seed == seed and r.role == "final" and r.budget_samples == fb.samples
        # the trainer turns weights back into counts by largest-remainder rounding
        assert make_allocation(r.mixture, r.budget_samples).samples == counts
        assert r.eval_at == by_id[fb.run_id("proportional", 3)].eval_at  # same points for every pair
        assert r.eval_at[0] > 2400 and r.eval_at[-1] == fb.samples and all(p % 8 == 0 for p in r.eval_at)
    assert plan.domains == ["a", "b", "c"]
    parse_plan(plan_json(plan))  # the plan's owner accepts it


def test_pilot_plan_is_the_pairs_design_at_the_asked_size():
    unique = {"mri_brain": 12, "ct_abdomen": 14, "ct_abdomen_twin": 13}
    o = DemoOptions(domains=tuple(unique), pilot_samples=3200, evals=8, min_eval=400)
    plan = pilot_plan(o, unique, 8)
    assert plan.domains == sorted(unique)
    fit = [r for r in plan.runs if r.role == "fit"]
    # every single domain and every pair
    assert len(fit) == 3 + 3 and {r.budget_samples for r in plan.runs} == {3200}
    pair = next(
        r for r in fit if set(k for k, w in r.mixture.items() if w > 0) == {"ct_abdomen", "mri_brain"}
    )
    assert pair.mixture["ct_abdomen"] == pytest.approx(0.5)
    assert all(
        r.eval_at[0] >= 400 and r.eval_at[-1] == 3200 and all(p % 8 == 0 for p in r.eval_at)
        for r in plan.runs
    )
    parse_plan(plan_json(plan))
    # a pilot shorter than min_eval is evaluated at its budget, not refused
    tiny = pilot_plan(DemoOptions(domains=tuple(unique), pilot_samples=64, min_eval=400), unique, 8)
    assert {r.eval_at[-1] for r in tiny.runs} == {64}
