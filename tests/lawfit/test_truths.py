"""The simulated truths of lawfit/truths.py against their formulas written out by hand, and the law
simulation study's harness (scripts/law_sim_study.py) shrunk to one 3-domain trial."""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from voxmix.lawfit import truths
from voxmix.lawfit.truths import AtlasTruth, SaturatingTruth, TransferTruth, repetition_discount

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _study():
    """scripts/law_sim_study.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("law_sim_study", ROOT / "scripts" / "law_sim_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while being created
    spec.loader.exec_module(mod)
    return mod


def _shared(**kw):
    base = dict(
        domains=("a", "b"),
        E=np.array([0.4, 0.5]),
        A=np.array([2.0, 3.0]),
        alpha=np.array([0.5, 0.3]),
        d0=np.array([100.0, 400.0]),
        unique=np.array([1000.0, 2000.0]),
    )
    return {**base, **kw}


def test_saturating_matches_its_formula_at_hand_picked_points():
    t = SaturatingTruth(
        **_shared(),
        k=np.array([[0.0, 0.5], [0.0, 0.0]]),
        c=np.array([[1.0, 200.0], [1.0, 1.0]]),
        b=np.array([[0.0, 0.04], [0.02, 0.0]]),
    )
    got = t.loss(np.array([[300.0, 100.0], [0.0, 0.0], [0.0, 500.0]]))
    # D = (300, 100): shares r = (3/4, 1/4); b gets r of the OTHER domain, k only b -> a.
    assert got[0, 0] == pytest.approx(
        0.4 + 2 * (100 + 300 + 0.5 * 100 / (1 + 100 / 200)) ** -0.5 + 0.04 * 0.25**1.5
    )
    assert got[0, 1] == pytest.approx(0.5 + 3 * (400 + 100) ** -0.3 + 0.02 * 0.75**1.5)
    # Nothing seen: no shares, no penalty, L = E + A d0^-alpha.
    assert got[1] == pytest.approx([0.4 + 2 * 100**-0.5, 0.5 + 3 * 400**-0.3])
    # Only b seen: a gets b's saturated transfer and the full penalty (r_b = 1); b has no penalty.
    assert got[2, 0] == pytest.approx(0.4 + 2 * (100 + 0.5 * 500 / (1 + 500 / 200)) ** -0.5 + 0.04)
    assert got[2, 1] == pytest.approx(0.5 + 3 * 900**-0.3)


def test_repetition_discount_closed_form():
    U, lam = 1000.0, 2.0
    D = np.array([0.0, 500.0, 1000.0, 1000.0 + lam * U * (math.e - 1), 5000.0])
    want = [0.0, 500.0, 1000.0, U + lam * U, U + lam * U * math.log(1 + 4000 / (lam * U))]
    np.testing.assert_allclose(repetition_discount(D, U, lam), want, rtol=1e-12)


def test_atlas_matches_its_formula_at_hand_picked_points():
    t = AtlasTruth(
        **_shared(),
        tau=np.array([[0.0, 0.3], [0.1, 0.0]]),
        lam=np.array([2.0, 4.0]),
        b=np.array([[0.0, 0.01], [0.02, 0.0]]),
    )
    got = t.loss(np.array([[3000.0, 500.0]]))[0]
    S_a = 1000 + 2 * 1000 * math.log(1 + 2000 / 2000)  # a repeated 3 epochs; b (500 of 2000) is not
    assert got[0] == pytest.approx(
        0.4 + 2 * (100 + S_a + 0.3 * 500) ** -0.5 + 0.01 * math.log(1 + 500 / 3100)
    )
    assert got[1] == pytest.approx(
        0.5 + 3 * (400 + 500 + 0.1 * S_a) ** -0.3 + 0.02 * math.log(1 + 3000 / 900)
    )


def test_control_matches_lawfits_transfer_form():
    t = TransferTruth(**_shared(d0=np.ones(2)), k=np.array([[0.0, 0.2], [0.7, 0.0]]))
    got = t.loss(np.array([[50.0, 80.0]]))[0]
    assert got == pytest.approx(
        [0.4 + 2 * (1 + 50 + 0.2 * 80) ** -0.5, 0.5 + 3 * (1 + 80 + 0.7 * 50) ** -0.3]
    )


@pytest.mark.parametrize("family", sorted(truths.FAMILIES))
def test_loss_is_vectorized_row_by_row(family):
    t = truths.draw(family, 5, 1e6)
    D = np.random.default_rng(0).uniform(0, 3e5, (7, t.m))
    D[0] = 0.0
    rows = np.vstack([t.loss(d) for d in D])  # one (m,) row at a time
    L = t.loss(D)
    assert L.shape == (7, t.m)
    np.testing.assert_allclose(L, rows, rtol=1e-13)  # BLAS may sum a batch in another order
    assert np.all(np.isfinite(L)) and np.all(L > t.E)


@pytest.mark.parametrize("family", sorted(truths.FAMILIES))
def test_draws_are_seeded_and_within_the_documented_ranges(family):
    scale = 1e6
    a, b, c = truths.draw(family, 7, scale), truths.draw(family, 7, scale), truths.draw(family, 8, scale)
    D = np.full((1, a.m), 1e5)
    assert np.array_equal(a.loss(D), b.loss(D)) and not np.array_equal(a.loss(D), c.loss(D))
    r = truths.SHARED_RANGES
    for t in (a, c):
        assert np.all((r["E"][0] <= t.E) & (t.E <= r["E"][1]))
        assert np.all((r["alpha"][0] <= t.alpha) & (t.alpha <= r["alpha"][1]))
        d0_lo, d0_hi = (1.0, 1.0) if family == "control" else r["d0"]
        assert np.all((d0_lo <= t.d0) & (t.d0 <= d0_hi))
        lo, hi = r["unique_over_scale"]
        assert np.all((lo * scale - 1 <= t.unique) & (t.unique <= hi * scale + 1))
        # G_i, the own-data reducible loss at scale / m, recovered from A_i
        G = t.A * (t.d0 + scale / t.m) ** -t.alpha
        assert np.all((r["G"][0] - 1e-12 <= G) & (G <= r["G"][1] + 1e-12))
        for name in ("k", "tau", "b"):
            M = getattr(t, name, None)
            if M is not None:
                assert np.all(np.diag(M) == 0)


def test_invalid_inputs_are_named():
    with pytest.raises(ValueError, match="unknown truth family 'nope'"):
        truths.draw("nope", 0, 1e6)
    with pytest.raises(ValueError, match="shape"):
        truths.draw("atlas", 0, 1e6).loss(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        truths.draw("saturating", 0, 1e6).loss(-np.ones((1, 4)))


def test_simplex_grid_enumerates_every_composition():
    study = _study()
    g = study.simplex_grid(3, max_points=70)  # C(n + 2, 2) <= 70 -> n = 10: 66 points
    assert g.shape == (66, 3)
    np.testing.assert_allclose(g.sum(axis=1), 1.0)
    assert len(np.unique(np.round(g * 10).astype(int), axis=0)) == 66
    assert np.all(np.round(g * 10) == g * 10)


def test_true_optimum_finds_the_lagrange_solution():
    """No transfer, no penalty, one alpha: dL_i/dD_i = -alpha A_i (d0_i + D_i)^(-alpha-1) equal for all i
    gives d0_i + D_i = c A_i^(1 / (1 + alpha)), c set by sum D_i = B (every D_i > 0 here)."""
    study = _study()
    m, B, alpha = 3, 1e5, 0.4
    A, d0 = np.array([1.0, 3.0, 8.0]), np.array([100.0, 300.0, 50.0])
    t = SaturatingTruth(
        domains=("a", "b", "c"), E=np.full(m, 0.3), A=A, alpha=np.full(m, alpha), d0=d0,
        unique=np.full(m, 1e4), k=np.zeros((m, m)), c=np.ones((m, m)), b=np.zeros((m, m)),
    )  # fmt: skip
    w = A ** (1 / (1 + alpha))
    D = w * (B + d0.sum()) / w.sum() - d0
    opt = study.true_optimum(t, B, seed=0, n_random=4)
    np.testing.assert_allclose(opt["x"], D / B, atol=1e-4)
    assert opt["R"] == pytest.approx(float((A * (d0 + D) ** -alpha).sum()), rel=1e-9)


def test_one_trial_end_to_end():
    """One 3-domain trial through the harness's own functions (plan, simulate, fit, allocate, true
    optimum). Asserted only what holds for any fit: numbers are finite, a truth predicts itself exactly,
    and the true optimum is no worse than lawfit's allocation or the proportional mix under the truth."""
    study = _study()
    cfg = study.StudyConfig(
        seeds=(0,), families=("saturating",), noises=(0.01,), budget=200_000, m=3, n_mixtures=4, opt_starts=4,
        forms=("no_transfer",),  # one form: no cross-validation, so that the test takes seconds
    )  # fmt: skip
    truth = truths.draw("saturating", 0, cfg.budget, m=3)
    _, W = study.heldout_mixtures(truth, 0, cfg.n_mixtures)
    assert W.shape == (6, 3)
    np.testing.assert_array_equal(study.ape(truth.loss, truth, W * cfg.budget), 0.0)
    row = study.trial(cfg, "saturating", 0, 0.01)
    for key in ("mape", "R_star", "R_hat", "R_proportional", "gap_hat", "gap_proportional"):
        assert np.isfinite(row[key]), key
    assert row["mape"] >= 0 and len(row["ape"]) == 6
    assert row["gap_hat"] >= -1e-9 and row["gap_proportional"] >= -1e-9
    assert row["form"] in row["candidates"]
    summary = study.summarize([row])
    assert summary[0]["mape"]["mean"] == row["mape"]
