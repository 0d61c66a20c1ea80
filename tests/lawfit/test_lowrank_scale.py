"""#18, third round: the paths that made `transfer_lowrank` and `transfer_repetition` scale, each against an
independent reference. The joint low-rank Jacobian by its rank-one structure (lawfit/lowrank_jac.py)
against the target-by-target `BlockJacobian`; plain-square rows in `solve_bounded` against scipy's
`least_squares` with the same loss; the restarted joint solve against the unrestarted one; the
repetition law on data that never repeats against the transfer law (f = D, d/d R* = 0) and, where data
repeat, against finite differences. Seeded and deterministic."""

import numpy as np
import pytest
from scipy.optimize import least_squares

from voxmix.lawfit import lowrank
from voxmix.lawfit.dataset import build_dataset, load_runs
from voxmix.lawfit.fit import FitConfig, _huber_rows
from voxmix.lawfit.forms import FORMS
from voxmix.lawfit.gn import solve_bounded
from voxmix.lawfit.simulate import default_design, random_laws, simulate_runs


@pytest.fixture(scope="module")
def ds8(tmp_path_factory):
    """8 domains, 3 evaluations per run (the smallest joint problem on the many-domain path, kept small)."""
    truth = random_laws(8, 3, k_choices=(0.0, 0.1, 0.5), gamma_range=(1.0, 1.0), unique=1e6, prefix="d")
    plan = default_design(truth, budget_per_run=20000, n_mixtures=12, n_evals=3, seed=0)
    out = tmp_path_factory.mktemp("lowrank_scale")
    simulate_runs(truth, plan, out, noise=0.01, seed=0)
    return build_dataset(load_runs([str(out)]))


def test_rank_one_jacobian_equals_the_block_jacobian(ds8):
    """Every product the solver uses, on all rows and on a CV-like subset with one target missing points
    the others have (so that targets' rows differ)."""
    m = len(ds8.domains)
    rng = np.random.default_rng(0)
    ds8.y[rng.random(len(ds8.y)) < 0.1, 2] = np.nan  # target 2 lacks ~10% of the points
    rows = np.flatnonzero(rng.random(len(ds8.y)) < 0.7)
    for sub in (None, rows):
        blocks = lowrank._blocks(ds8, sub)
        x = np.concatenate([
            np.concatenate([[np.log(0.3), np.log(0.2), 0.4, np.log(100.0), rng.normal(-1, 0.5)] for _ in range(m)]),
            rng.normal(0, 1, m),
        ])  # fmt: skip
        r_ref, J_ref = lowrank._residual_blocks(x, blocks, m)
        r, J = lowrank._residual_rank_one(x, blocks, m, lowrank._rank_one_data(ds8, sub))
        w = rng.random(len(r))
        np.testing.assert_array_equal(r, r_ref)
        scale = np.abs(J_ref.dense()).max()
        for name, got, want in [
            ("dense", J.dense(), J_ref.dense()),
            ("J^T v", J.rmatvec(w * r), J_ref.rmatvec(w * r)),
            ("J^T W J", J.gram(w), J_ref.gram(w)),
            ("diag(J^T W J)", J.gram_diag(w), J_ref.gram_diag(w)),
        ]:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale**2, err_msg=name)


@pytest.mark.parametrize("seed", range(3))
def test_plain_square_rows_equal_scipy_with_the_same_loss(seed):
    """Huber rows with 20% outliers plus 3 plain-square rows (lowrank's scale row): `solve_bounded` with
    n_huber reaches scipy's trf objective (same loss as lowrank's trf path) to 1e-9 relative."""
    rng = np.random.default_rng(seed)
    n, p, delta = 80, 6, 0.1
    A = rng.normal(size=(n, p))
    b = A @ rng.normal(size=p) + 0.05 * rng.normal(size=n)
    b[rng.random(n) < 0.2] += rng.normal(0, 3, size=1)  # outliers: linear Huber rows
    C = rng.normal(size=(3, p))  # plain squares, residuals far beyond delta
    c = C @ rng.normal(size=p) + 5.0
    lo, hi = np.full(p, -2.0), np.full(p, 2.0)

    def resid(x, jac=True):
        return np.concatenate([A @ x - b, C @ x - c]), (np.vstack([A, C]) if jac else None)

    res = solve_bounded(resid, np.zeros(p), lo, hi, delta=delta, ridge_idx=np.zeros(0, np.int64),
                        ridge_ctr=np.zeros(0), ridge_c=0.0, n_huber=n)  # fmt: skip
    ref = least_squares(lambda x: resid(x)[0], np.zeros(p), jac=lambda x: resid(x)[1], bounds=(lo, hi),
                        loss=_huber_rows(n), f_scale=delta, ftol=1e-14, xtol=1e-14, gtol=1e-14)  # fmt: skip
    assert res.converged
    assert res.phi <= ref.cost * (1 + 1e-9), (res.phi, ref.cost)
    assert res.phi >= ref.cost * (1 - 1e-9)  # the same objective: scipy's cost is Phi
    np.testing.assert_allclose(res.x, ref.x, atol=1e-6)


def test_restarted_joint_solve_reaches_the_unrestarted_optimum(ds8, monkeypatch):
    """Restarts every 5 steps (many restarts) and none: the same joint objective to 1e-7."""
    cfg = FitConfig(progress=False, workers=1)
    x0 = lowrank._starts(ds8, None, cfg, (0.3,))[0]

    def total(fits):
        return sum(f.objective * f.n_points for f in fits.values())

    monkeypatch.setattr(lowrank, "RESTART", 10**9)
    once, _ = lowrank.fit_lowrank(ds8, cfg, init=x0)
    monkeypatch.setattr(lowrank, "RESTART", 5)
    often, _ = lowrank.fit_lowrank(ds8, cfg, init=x0)
    assert total(often) == pytest.approx(total(once), rel=1e-7)
    assert all(f.converged for f in often.values())


def _points(seed: int, U: float):
    rng = np.random.default_rng(seed)
    n, m = 40, 5
    D_oth = rng.uniform(0, 3e4, size=(n, m)) * (rng.random((n, m)) < 0.7)
    D_own = rng.uniform(0, 3e4, size=n)
    return D_own, D_oth, np.full(n, U), np.full((n, m), U)


def test_repetition_law_without_repeats_is_the_transfer_law():
    """No point saw more than the unique data: value and Jacobian of `transfer_repetition` are those of
    `transfer` (its first columns), and d log L / d log R* is 0."""
    rep, tr = FORMS["transfer_repetition"], FORMS["transfer"]
    D_own, D_oth, U_own, U_oth = _points(0, 1e9)
    rng = np.random.default_rng(1)
    th = tr.pack(
        random_laws(6, 1, unique=1e9, prefix="domain").targets["domain0"],
        [f"domain{j}" for j in range(1, 6)],
        1e4,
    )
    th[4:9] = rng.uniform(0.0, 0.5, 5)
    th_rep = np.append(th, np.log(2.0))
    v_rep, J_rep = rep.at(D_own, D_oth, U_own, U_oth, ref=1e4)(th_rep)
    v_tr, J_tr = tr.at(D_own, D_oth, U_own, U_oth, ref=1e4)(th)
    np.testing.assert_array_equal(v_rep, v_tr)
    np.testing.assert_array_equal(J_rep[:, :-1], J_tr)
    assert not J_rep[:, -1].any()


def test_repetition_law_with_repeats_keeps_its_r_star_derivative():
    """Unique data 5,000 (most points repeat): d log L / d log R* against central differences, and the
    value differs from the transfer law's."""
    rep, tr = FORMS["transfer_repetition"], FORMS["transfer"]
    D_own, D_oth, U_own, U_oth = _points(2, 5e3)
    th = tr.pack(
        random_laws(6, 1, unique=1e9, prefix="domain").targets["domain0"],
        [f"domain{j}" for j in range(1, 6)],
        1e4,
    )
    th_rep = np.append(th, np.log(2.0))
    law = rep.at(D_own, D_oth, U_own, U_oth, ref=1e4)
    v, J = law(th_rep)
    J = J.copy()
    e = np.zeros_like(th_rep)
    e[-1] = 1e-6
    num = (law(th_rep + e, False)[0] - law(th_rep - e, False)[0]) / 2e-6
    assert np.abs(J[:, -1]).max() > 1e-3
    np.testing.assert_allclose(J[:, -1], num, rtol=1e-5, atol=1e-9)
    assert np.abs(v - tr.at(D_own, D_oth, U_own, U_oth, ref=1e4)(th, False)[0]).max() > 1e-3
