"""`lawfit plan` (voxmix.lawfit.plan): the designs' runs, whole global batches, and the command line.

References are independent of the planner: itertools for the pairs, NumPy for total-variation distances
and the earlier (random) design, hand-computed evaluation points.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from tests.lawfit.lawfit_helpers import lawfit
from voxmix.formats.plan import read_plan, write_plan
from voxmix.lawfit import plan as planmod
from voxmix.lawfit.errors import LawfitError
from voxmix.lawfit.plan import fallback_skewed, make_plan


def _domains(m: int) -> tuple[list[str], dict[str, int]]:
    doms = [f"d{i}" for i in range(m)]
    # Unequal unique counts: the proportional mixture is not the uniform one.
    return doms, {d: 500 * (i + 1) ** 2 for i, d in enumerate(doms)}


def _vec(mix: dict[str, float], doms: list[str]) -> np.ndarray:
    return np.array([mix[d] for d in doms])


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def _connected(m: int, pairs: list[tuple[int, int]]) -> bool:
    seen, todo = {0}, [0]
    while todo:
        i = todo.pop()
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if x == i and y not in seen:
                    seen.add(y)
                    todo.append(y)
    return len(seen) == m


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("m", [3, 4, 6, 8])
def test_pairs_design(m, seed):
    doms, unique = _domains(m)
    plan = make_plan(doms, unique, 10_000_000, 0.1, seed=seed)
    runs = {r["run_id"]: r for r in plan["runs"]}
    assert plan["design"] == "pairs" and plan["global_batch"] == 8
    for d in doms:
        assert runs[f"pilot-{d}"]["mixture"] == {x: float(x == d) for x in doms}
    pairs = [tuple(rid[5:].split("+")) for rid in runs if rid.startswith("pair-")]
    idx = [(doms.index(a), doms.index(b)) for a, b in pairs]
    if m <= 6:
        assert sorted(idx) == list(itertools.combinations(range(m), 2))
    else:
        # 2m sampled pairs, distinct, each domain in >= 2 of them, all domains linked through pairs
        assert len(idx) == len(set(idx)) == 2 * m and all(a < b for a, b in idx)
        assert min(sum(i in p for p in idx) for i in range(m)) >= 2
        assert _connected(m, idx)
    for a, b in pairs:
        mix = runs[f"pair-{a}+{b}"]["mixture"]
        assert mix == {x: 0.5 if x in (a, b) else 0.0 for x in doms} and sum(mix.values()) == 1.0
    fit = [r for r in plan["runs"] if r["role"] == "fit"]
    val = [r for r in plan["runs"] if r["role"] == "validate"]
    assert len(fit) == m + len(pairs) and len(plan["runs"]) == len(fit) + 3
    assert [r["run_id"] for r in val] == ["holdout-proportional", "holdout-skewed1", "holdout-skewed2"]
    prop = np.array([unique[d] for d in doms], float) / sum(unique.values())
    assert np.allclose(_vec(val[0]["mixture"], doms), prop, atol=1e-6)
    vs = [_vec(r["mixture"], doms) for r in val]
    for p, q in itertools.combinations(vs, 2):
        assert _tv(p, q) >= 0.3
    for r in val[1:]:  # the skewed holdouts are not near-copies of a fitted run
        assert min(_tv(_vec(r["mixture"], doms), _vec(f["mixture"], doms)) for f in fit) >= 0.1
    for r in plan["runs"]:
        assert abs(sum(r["mixture"].values()) - 1) < 1e-9
    assert len({r["seed"] for r in plan["runs"]}) == len(plan["runs"])
    assert not [w for w in plan["warnings"] if "fitted runs <" in w]  # >= 2m fitted runs


def test_pairs_design_is_seeded():
    doms, unique = _domains(8)
    a, b = (make_plan(doms, unique, 10**7, 0.1, seed=5) for _ in range(2))
    assert a == b
    c = make_plan(doms, unique, 10**7, 0.1, seed=6)
    assert [r["run_id"] for r in a["runs"]] != [r["run_id"] for r in c["runs"]]


def test_pairs_plus_loo():
    doms, unique = _domains(4)
    plan = make_plan(doms, unique, 10**7, 0.1, design="pairs+loo")
    runs = {r["run_id"]: r for r in plan["runs"]}
    for d in doms:
        assert runs[f"loo-{d}"]["role"] == "fit"
        assert np.allclose(_vec(runs[f"loo-{d}"]["mixture"], doms), [(x != d) / 3 for x in doms], atol=1e-6)
    assert sum(r["role"] == "fit" for r in plan["runs"]) == 4 + 6 + 4
    # At m = 3 a leave-one-out mixture is the other two domains' pair: not planned twice, said.
    p3 = make_plan(*_domains(3), 10**7, 0.1, design="pairs+loo")
    assert not [r for r in p3["runs"] if r["run_id"].startswith("loo-")]
    assert sum("leave-one-out" in w for w in p3["warnings"]) == 3


def test_random_design_is_the_earlier_one():
    """design="random" with global batch 1 = the design lawfit planned before, recomputed with NumPy."""
    doms, unique = _domains(5)
    T, f, n_evals, seed = 1_000_000, 0.1, 8, 3
    plan = make_plan(doms, unique, T, f, design="random", global_batch=1, n_evals=n_evals, seed=seed)
    rng = np.random.default_rng(seed)
    mixes = [np.eye(5)[i] for i in range(5)] + [rng.dirichlet(np.ones(5)) for _ in range(2)]
    prop = np.array([unique[d] for d in doms], float) / sum(unique.values())
    mixes += [prop, np.full(5, 0.2)]
    assert [r["run_id"] for r in plan["runs"]] == [f"pilot-{d}" for d in doms] + [
        "pilot-mix0",
        "pilot-mix1",
        "holdout-proportional",
        "holdout-uniform",
    ]
    per_run = int(f * T) // 9
    pts = sorted({max(1, int(round(p))) for p in np.geomspace(per_run / 64, per_run, n_evals)} | {per_run})
    for r, w in zip(plan["runs"], mixes):
        assert np.allclose(_vec(r["mixture"], doms), w, atol=1e-6)
        assert r["budget_samples"] == per_run and r["eval_at"] == pts
    # 5 + 2 fitted runs < 2 + 2(m-1) = 10: too few for a transfer form, said
    assert any("7 fitted runs < 10" in w for w in plan["warnings"])


@pytest.mark.parametrize("g", [8, 12, 48])
@pytest.mark.parametrize("first_eval", [None, 100, 1000])
def test_budgets_and_eval_points_are_whole_global_batches(g, first_eval):
    doms, unique = _domains(4)
    T, f = 3_000_000, 0.05
    plan = make_plan(doms, unique, T, f, global_batch=g, first_eval=first_eval, n_evals=10)
    per_run = int(f * T) // len(plan["runs"]) // g * g  # rounded down: never more than the pilot budget
    assert plan["pilot_samples"] == per_run * len(plan["runs"]) <= f * T
    for r in plan["runs"]:
        ev = r["eval_at"]
        assert r["budget_samples"] == per_run and per_run % g == 0
        assert all(x % g == 0 and x > 0 for x in ev) and ev == sorted(set(ev)) and ev[-1] == per_run
        assert len(ev) <= 10
        if first_eval is None:
            assert ev[0] >= max(g, per_run / 64 - g / 2)
        else:
            assert ev[0] == -(-first_eval // g) * g  # the first point is never before first_eval


def test_eval_points_hand_computed():
    # geomspace(400, 6000, 8) = 400, 588.9, 867.1, 1276.7, 1879.8, 2767.7, 4075.1, 6000 -> nearest x 8
    plan = make_plan(["a", "b"], {"a": 10, "b": 10}, 10**6, pilot_samples=6000, first_eval=400)
    assert plan["runs"][0]["eval_at"] == [400, 592, 864, 1280, 1880, 2768, 4072, 6000]


def test_pilot_samples_rounding():
    doms, unique = _domains(3)
    # pilot_fraction is ignored (even an invalid one); the target budget is still recorded
    plan = make_plan(doms, unique, 10**6, 7.0, global_batch=8, pilot_samples=25, first_eval=8)
    assert {r["budget_samples"] for r in plan["runs"]} == {24}
    assert plan["pilot_fraction"] is None and plan["target_budget"] == 10**6
    assert plan["pilot_samples"] == 24 * len(plan["runs"])
    assert any("--pilot-samples 25 rounded down to 24" in w for w in plan["warnings"])
    # 8 log-spaced points between 8 and 24 collapse to the 3 multiples of 8: said
    assert plan["runs"][0]["eval_at"] == [8, 16, 24]
    assert any("left 3 of 8" in w for w in plan["warnings"])
    exact = make_plan(doms, unique, 10**6, global_batch=8, pilot_samples=6000)
    assert not [w for w in exact["warnings"] if "rounded" in w or "left" in w]
    with pytest.raises(LawfitError, match="--pilot-samples 7 is less than one global batch"):
        make_plan(doms, unique, 10**6, global_batch=8, pilot_samples=7)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"design": "triples"}, "--design must be one of"),
        ({"global_batch": 0}, "--global-batch must be a positive integer"),
        ({"pilot_samples": -8}, "--pilot-samples must be a positive integer"),
        ({"n_evals": 0}, "--evals must be a positive integer"),
        ({"n_mixtures": 3}, "--mixtures 3 applies to --design random only"),
        ({"pilot_samples": 800, "first_eval": 801}, "--first-eval 801 exceeds the per-run budget of 800"),
        ({"global_batch": 10**6}, "per run"),  # 100000 pilot samples over 9 runs: no whole batch
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(LawfitError, match=match):
        make_plan(*_domains(3), 10**6, 0.1, **kw)


def test_fallback_skewed_is_far_apart():
    # m = 2 over a grid of the proportional share; m >= 3 over skewed random shares (seeded)
    props = [np.array([a, 1 - a]) for a in np.linspace(0, 1, 1001)]
    rng = np.random.default_rng(0)
    props += [rng.dirichlet(np.full(m, 0.2)) for m in range(3, 9) for _ in range(200)]
    for p in props:
        s1, s2 = fallback_skewed(p)
        assert min(_tv(s1, p), _tv(s2, p), _tv(s1, s2)) >= 0.3, p
        assert np.isclose(s1.sum(), 1) and np.isclose(s2.sum(), 1) and (s1 >= 0).all() and (s2 >= 0).all()
        if len(p) >= 3:  # and off every single-domain and 50/50 pair mixture
            m = len(p)
            fits = [np.eye(m)[i] for i in range(m)]
            fits += [(np.eye(m)[i] + np.eye(m)[j]) / 2 for i, j in itertools.combinations(range(m), 2)]
            assert min(_tv(s, f) for s in (s1, s2) for f in fits) >= 0.1


def test_rejection_sampling_falls_back(monkeypatch):
    monkeypatch.setattr(planmod, "SKEW_TRIES", 0)
    doms, unique = _domains(4)
    plan = make_plan(doms, unique, 10**7, 0.1)
    prop = np.array([unique[d] for d in doms], float) / sum(unique.values())
    want = fallback_skewed(prop)
    got = [_vec(r["mixture"], doms) for r in plan["runs"] if r["run_id"].startswith("holdout-skewed")]
    assert np.allclose(got, want, atol=1e-6)
    assert any("deterministic skewed holdouts" in w for w in plan["warnings"])


def test_plan_file_round_trip(tmp_path):
    doms, unique = _domains(3)
    write_plan(tmp_path / "plan.json", make_plan(doms, unique, 10**6, global_batch=16, pilot_samples=960))
    plan = read_plan(tmp_path / "plan.json")
    assert plan.global_batch == 16 and plan.design == "pairs"
    assert all(r.budget_samples == 960 and all(x % 16 == 0 for x in r.eval_at) for r in plan.runs)


# ---- the command line (the installed console script, in a subprocess) ---------------------------------


PLAN_ARGS = ["plan", "--domains", "ct", "mri", "pet", "--unique", "ct=1000", "mri=500", "pet=200",
             "--target-budget", 100000, "--pilot-fraction", 0.1]  # fmt: skip


def test_cli_plan(tmp_path):
    r = lawfit(*PLAN_ARGS, "-o", "plan.json", cwd=tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["format"] == "voxmix.plan/1" and plan["design"] == "pairs" and plan["global_batch"] == 8
    assert plan["pilot_samples"] <= 10000
    roles = [x["role"] for x in plan["runs"]]
    assert roles.count("fit") == 6 and roles.count("validate") == 3
    single = [x for x in plan["runs"] if x["run_id"] == "pilot-ct"][0]
    assert single["mixture"] == {"ct": 1.0, "mri": 0.0, "pet": 0.0}
    assert single["eval_at"][-1] == single["budget_samples"] and single["eval_at"] == sorted(
        set(single["eval_at"])
    )
    assert "pilot-ct" in r.stdout and "pair-ct+mri" in r.stdout and "design pairs" in r.stdout


def test_cli_plan_random_and_sizes(tmp_path):
    lawfit(*PLAN_ARGS, "--design", "random", "--mixtures", 3, "-o", "r.json", cwd=tmp_path)
    plan = json.loads((tmp_path / "r.json").read_text())
    roles = [x["role"] for x in plan["runs"]]
    assert roles.count("fit") == 6 and roles.count("validate") == 2 and plan["design"] == "random"
    r = lawfit(*PLAN_ARGS, "--global-batch", 12, "--pilot-samples", 1000, "--first-eval", 100, "-o", "s.json",
               cwd=tmp_path)  # fmt: skip
    plan = json.loads((tmp_path / "s.json").read_text())
    assert {x["budget_samples"] for x in plan["runs"]} == {996} and plan["global_batch"] == 12
    assert plan["runs"][0]["eval_at"][0] == 108
    assert "rounded down to 996" in r.stderr


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["plan", "--domains", "a", "--unique", "b=3", "--target-budget", "10"], "no unique-sample"),
        ([*PLAN_ARGS, "--mixtures", "3"], "--mixtures 3 applies to --design random only"),
        ([*PLAN_ARGS, "--pilot-samples", "4"], "less than one global batch (8 samples)"),
    ],
)
def test_cli_plan_bad_input_exits_2(tmp_path, args, match):
    r = lawfit(*args, "-o", "p.json", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and match in r.stderr, r.stderr
    assert not (tmp_path / "p.json").exists()
