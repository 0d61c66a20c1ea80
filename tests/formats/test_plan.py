"""The plan reader (voxmix.formats.plan): the optional `design` and `global_batch` fields, and the check
that every budget and evaluation point of a plan that names its global batch is a multiple of it."""

from __future__ import annotations

import copy
import json

import pytest

from voxmix.formats.allocation import MAX_SAMPLES
from voxmix.formats.plan import PlanError, parse_plan, read_plan, write_plan

PLAN = {
    "format": "voxmix.plan/1",
    "domains": ["ct", "mri"],
    "design": "pairs",
    "global_batch": 8,
    "runs": [
        {"run_id": "pilot-ct", "role": "fit", "mixture": {"ct": 1.0, "mri": 0.0}, "budget_samples": 96,
         "eval_at": [16, 48, 96], "seed": 0},
        {"run_id": "pair-ct+mri", "role": "fit", "mixture": {"ct": 0.5, "mri": 0.5}, "budget_samples": 96,
         "eval_at": [16, 48, 96], "seed": 1},
    ],
}  # fmt: skip


def _plan(**changes) -> dict:
    p = copy.deepcopy(PLAN)
    for key, value in changes.items():
        if key.startswith("run1_"):
            p["runs"][1][key[5:]] = value
        elif value is None:
            del p[key]
        else:
            p[key] = value
    return p


def test_design_and_global_batch_are_read():
    plan = parse_plan(_plan())
    assert plan.global_batch == 8 and plan.design == "pairs"
    assert [r.budget_samples for r in plan.runs] == [96, 96]


def test_both_fields_are_optional():
    # plans written before these fields existed (or by a study's own stages) stay valid, unchecked
    plan = parse_plan(_plan(design=None, global_batch=None, run1_budget_samples=25, run1_eval_at=[3, 25]))
    assert plan.global_batch is None and plan.design is None and plan.runs[1].budget_samples == 25


@pytest.mark.parametrize("g", [0, -8, 2.5, "8", True, None])
def test_global_batch_must_be_a_positive_integer(g):
    obj = _plan()
    obj["global_batch"] = g  # None here: present but null
    with pytest.raises(PlanError, match=r"plan.json: field 'global_batch': expected a positive integer"):
        parse_plan(obj, "plan.json")


@pytest.mark.parametrize("design", ["", 3, ["pairs"], None])
def test_design_must_be_a_name(design):
    obj = _plan()
    obj["design"] = design
    with pytest.raises(PlanError, match="plan.json: field 'design': expected a non-empty string"):
        parse_plan(obj, "plan.json")


def test_a_budget_off_the_global_batch_is_named():
    # 100 = 12 x 8 + 4: not whole batches
    with pytest.raises(
        PlanError,
        match=r"^plan.json: runs\[1\] \('pair-ct\+mri'\): field 'budget_samples' 100 is not a multiple "
        r"of global_batch 8$",
    ):
        parse_plan(_plan(run1_budget_samples=100, run1_eval_at=[16, 100]), "plan.json")


def test_an_eval_point_off_the_global_batch_is_named():
    with pytest.raises(
        PlanError,
        match=r"runs\[1\] \('pair-ct\+mri'\): field 'eval_at' 20 is not a multiple of global_batch 8",
    ):
        parse_plan(_plan(run1_eval_at=[16, 20, 96]), "plan.json")
    # a coarser global batch: 16 and 48 are multiples of 16, 96 too, so only the budget check passes
    with pytest.raises(PlanError, match=r"'eval_at' 8 is not a multiple of global_batch 16 \(2 such points"):
        parse_plan(_plan(global_batch=16, run1_eval_at=[8, 24, 96]), "plan.json")
    assert parse_plan(_plan(global_batch=16)).global_batch == 16


def test_read_names_the_file_and_write_refuses(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_plan(run1_budget_samples=100, run1_eval_at=[16, 100])))
    with pytest.raises(PlanError, match=rf"^{path}: runs\[1\]"):
        read_plan(path)
    out = tmp_path / "out.json"
    with pytest.raises(PlanError, match="not a multiple of global_batch 8"):
        write_plan(out, _plan(run1_eval_at=[12, 96]))
    assert not out.exists()
    write_plan(out, parse_plan(_plan()))  # a typed Plan keeps both fields through a round trip
    assert json.loads(out.read_text())["global_batch"] == 8 and read_plan(out).design == "pairs"


# A run id becomes a folder under the sweep's (and `lawfit simulate --plan`'s) output folder (#15).
@pytest.mark.parametrize(
    "rid",
    ["../../x", "/abs", ".", "..", "a/b", "a\\b", "a\x00b", "a\nb", "", " x", "-x", ".hidden", "_sweep",
     "x" * 201, "pilot-a.failed1", "pilot-a.stale2", 5, None, ["a"]],
)  # fmt: skip
def test_run_ids_that_are_not_plain_folder_names_are_refused(rid):
    obj = _plan(run1_run_id=rid)
    with pytest.raises(
        PlanError, match=r"^plan.json: runs\[1\]: field 'run_id' .* is not a usable folder name"
    ):
        parse_plan(obj, "plan.json")


def test_plain_run_ids_are_kept():
    for rid in (
        "pair-ct_chest+mri_brain",
        "final-transfer_aware-x4-s0",
        "holdout-skewed1",
        "a.b=c,d@e",
        "x" * 200,
    ):
        assert parse_plan(_plan(run1_run_id=rid)).runs[1].run_id == rid


@pytest.mark.parametrize(
    ("mixture", "match"),
    [
        ({"ct": float("nan"), "mri": 1.0}, r"field 'mixture.ct': expected a finite weight >= 0, got nan"),
        ({"ct": -0.5, "mri": 1.5}, r"field 'mixture.ct': expected a finite weight >= 0, got -0.5"),
        ({"ct": float("inf"), "mri": 0.0}, r"field 'mixture.ct'.* got inf"),
        ({"ct": "0.5", "mri": 0.5}, r"field 'mixture.ct'.* got '0.5'"),
        ({"ct": True, "mri": 0.0}, r"field 'mixture.ct'.* got True"),
        ({"ct": 0.0, "mri": 0.0}, r"field 'mixture': every weight is 0"),
        ({"ct": 0.3, "mri": 0.3}, r"field 'mixture': weights must sum to 1, got 0.6"),
        ({"ct": 0.5, "pet": 0.5}, r"field 'mixture': unknown domain\(s\) \['pet'\]"),
        ({}, r"field 'mixture': expected an object of domain weights"),
    ],
)
def test_bad_mixture_weights_name_the_run_and_domain(mixture, match):
    with pytest.raises(PlanError, match=r"^plan.json: runs\[1\] \('pair-ct\+mri'\): " + match):
        parse_plan(_plan(run1_mixture=mixture), "plan.json")


def test_a_nan_weight_in_the_file_is_named(tmp_path):
    # JSON has no NaN, but Python's json module (and many writers) emit and read the bare word
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_plan(run1_mixture={"ct": float("nan"), "mri": 1.0})))
    assert "NaN" in path.read_text()
    with pytest.raises(PlanError, match=rf"^{path}: runs\[1\] \('pair-ct\+mri'\): field 'mixture.ct'.* nan"):
        read_plan(path)


def test_a_budget_beyond_what_an_allocation_may_hold_is_named(tmp_path):
    # each planned run trains on an allocation of its budget: beyond MAX_SAMPLES the trainer would refuse
    # it only at launch (or numpy would fail deep inside it), so the plan's reader refuses it by name
    at_max = parse_plan(_plan(global_batch=None, run1_budget_samples=MAX_SAMPLES))
    assert at_max.runs[1].budget_samples == MAX_SAMPLES
    path = tmp_path / "plan.json"
    for budget in (MAX_SAMPLES + 1, 10**19):
        path.write_text(json.dumps(_plan(global_batch=None, run1_budget_samples=budget)))
        with pytest.raises(
            PlanError,
            match=rf"^{path}: runs\[1\] \('pair-ct\+mri'\): field 'budget_samples' {budget} exceeds the "
            rf"maximum of {MAX_SAMPLES} samples an allocation may hold",
        ):
            read_plan(path)
    with pytest.raises(PlanError, match="exceeds the maximum"):
        write_plan(tmp_path / "out.json", _plan(global_batch=None, run1_budget_samples=MAX_SAMPLES + 1))
    assert not (tmp_path / "out.json").exists()
