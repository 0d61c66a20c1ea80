"""Many domains (#18): the vectorised laws against the law-by-law definition, the exact projection, the
projected-gradient allocator against brute force (small) and its KKT conditions (32 domains), and the
linear-algebra start of the transfer fit against the grid-only fit.

Every random draw here has a fixed seed, so each test is deterministic (it cannot fail by chance); the
tolerances are those of rounding (1e-12 for closed forms) or of the solvers' own stopping rules."""

import numpy as np
import pytest

from tests.lawfit.test_allocate import _grid_optimum, _laws3
from voxmix.lawfit import allocate as AL
from voxmix.lawfit import fit as F
from voxmix.lawfit.allocate import Budget, allocate, build_problem, solve
from voxmix.lawfit.dataset import build_dataset, load_runs
from voxmix.lawfit.forms import FORMS
from voxmix.lawfit.laws import TargetLaw, TransferTerm, law_value_grad
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.lawvec import LawMatrix
from voxmix.lawfit.simplex import project
from voxmix.lawfit.simulate import default_design, random_laws, simulate_runs


def _mixed_laws(m: int, seed: int) -> Laws:
    """Every feature at once: gamma != 1, missing and zero pairs, repetition on some targets, interference
    on others, d0 absent on one (the file's global d0)."""
    rng = np.random.default_rng(seed)
    doms = [f"d{i}" for i in range(m)]
    targets = {}
    for i, d in enumerate(doms):
        tr = {j: TransferTerm(float(rng.choice([0.0, 0.2, 0.9])), float(rng.uniform(0.5, 1.5)))
              for j in doms if j != d and rng.random() < 0.8}  # fmt: skip
        inter = {j: float(rng.normal(0, 0.3)) for j in doms if j != d} if i % 3 == 0 else {}
        targets[d] = TargetLaw(
            d, float(rng.uniform(0.2, 1)), float(rng.uniform(2, 20)), float(rng.uniform(0.1, 0.6)), tr,
            r_star=float(rng.uniform(1, 20)) if i % 2 else None, d0=None if i == 1 else float(rng.uniform(1, 500)),
            interference=inter, dbar=float(rng.uniform(1e3, 1e5)) if inter else None,
        )  # fmt: skip
    return Laws(form="interference", domains=doms, targets=targets, d0=3.0,
                unique_samples={d: float(rng.uniform(1e3, 1e5)) for d in doms})  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_law_matrix_equals_law_by_law(seed):
    laws = _mixed_laws(9, seed)
    lm = LawMatrix(laws.targets, laws.domains, laws.U, laws.d0)
    rng = np.random.default_rng(seed + 10)
    for D in [rng.uniform(0, 2e5, 9), np.where(rng.random(9) < 0.5, 0.0, rng.uniform(0, 3e4, 9))]:
        L, G = lm.value_grad(D)
        for i, d in enumerate(laws.domains):
            v, g = law_value_grad(laws.targets[d], laws.domains, D[None], laws.U, laws.d0)
            np.testing.assert_allclose(L[i], v[0], rtol=1e-12)
            np.testing.assert_allclose(G[i], g[0], rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("seed", range(20))
def test_projection_is_the_nearest_feasible_point(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 12))
    lo = rng.uniform(0, 0.5 / m, m)
    hi = np.where(rng.random(m) < 0.5, 1.0, rng.uniform(1.2 / m, 3.0 / m, m))
    x = rng.normal(0, 1, m)
    p = project(x, lo, hi)
    assert abs(p.sum() - 1) < 1e-12 and np.all(p >= lo) and np.all(p <= hi)
    # Independent reference: allocate's bisection on the shift (200 halvings: exact to rounding).
    np.testing.assert_allclose(p, AL._project(x, lo, hi), atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"max_epochs": 4.0}, {"min_share": 0.2}])
@pytest.mark.parametrize("form", ["transfer", "interference"])
def test_projected_gradient_allocator_equals_brute_force(form, kw, monkeypatch):
    monkeypatch.setattr(AL, "SPG_FROM", 1)  # the many-domain path, on a problem a grid can check
    p = build_problem(_laws3(form), Budget(samples=100_000), **kw)
    x, v, kkt, _ = solve(p)
    v_grid, _ = _grid_optimum(p)
    assert v <= v_grid + 1e-9 and kkt["satisfied"]


def test_allocation_at_32_domains_meets_its_kkt_conditions():
    m = 32
    laws = random_laws(m, 5, k_choices=(0.0, 0.0, 0.1, 0.3, 0.7), gamma_range=(0.8, 1.0), unique=1e6)
    laws.unique_samples = {d: 1.5e6 / m for d in laws.domains}  # caps bind for the most useful domains
    out = allocate(laws, Budget(samples=10**6), max_epochs=1.0, min_share=0.2 / m)
    kkt = out["objective"]["kkt"]
    active = set(kkt["active"].values())
    assert kkt["satisfied"] and kkt["relative_violation"] < 1e-6 and {"floor", "cap", "free"} <= active
    assert sum(e["samples"] for e in out["domains"].values()) == 10**6
    # No baseline beats the optimum (all are feasible points of the same problem, up to integer rounding).
    for name, b in out["baselines"].items():
        assert b["objective"] >= out["objective"]["value"] - 1e-9, name


def test_linear_algebra_start_reaches_the_grid_optimum(tmp_path, monkeypatch):
    """7 domains (the smallest that uses lawfit/starts.py): the fit with the start and the early stop reaches
    the objective of the fit from the grid alone, for every target and both transfer forms."""
    truth = random_laws(7, 1, k_choices=(0.0, 0.1, 0.4), gamma_range=(0.8, 1.0), unique=1e6)
    plan = default_design(truth, budget_per_run=20000, n_mixtures=7 * 4 - 9, n_evals=8, seed=0)
    simulate_runs(truth, plan, tmp_path, noise=0.01, seed=0)
    ds = build_dataset(load_runs([str(tmp_path)]))
    cfg = F.FitConfig(bootstrap=0, progress=False, workers=1)
    for name in ("transfer", "interference"):
        for i in range(len(ds.domains)):
            new = F.fit_target(FORMS[name], ds, i, cfg)
            monkeypatch.setattr(F, "MANY_SOURCES", 10**6)
            old = F.fit_target(FORMS[name], ds, i, cfg)
            monkeypatch.undo()
            assert new.starts == old.starts + 1
            assert new.objective <= old.objective * (1 + 1e-6), (name, i)


@pytest.mark.parametrize("m", [2, 5, 6, 7, 12, 32])
def test_plan_grows_linearly_and_says_what_it_identifies(m):
    from voxmix.lawfit.plan import make_plan

    doms = [f"d{i}" for i in range(m)]
    plan = make_plan(doms, {d: 10_000 for d in doms}, 10**7)
    fit = [r for r in plan["runs"] if r["role"] == "fit"]
    n_pairs = m * (m - 1) // 2 if m <= 6 else 2 * m  # all pairs up to 6 domains, 2m sampled above
    assert len(fit) == m + n_pairs  # 3m fitted runs from 7 domains on: linear in m
    ident = plan["identifies"]
    assert ident["fitted_runs"] == len(fit)
    assert ident["own_law"]["domains"] == m  # every pilot planned
    assert ident["transfer"]["ordered_pairs"] == m * (m - 1)  # every pilot evaluated on every domain
    # Transfer vs interference: both directions of each planned pair, and only those.
    pairs = {r["run_id"].removeprefix("pair-") for r in fit if r["run_id"].startswith("pair-")}
    assert ident["transfer_vs_interference"]["ordered_pairs"] == 2 * n_pairs
    assert set(ident["transfer_vs_interference"]["pairs"]) == {"+".join(sorted(p.split("+"))) for p in pairs}
