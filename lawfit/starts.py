"""A start for the transfer forms from linear algebra, for studies with many domains (#18).

Why: with m domains a target's transfer fit has 2(m - 1) transfer parameters, and from the grid of
lawfit/fit.py (the same kappa for every source) trust-region least squares needs 60-170 steps at m = 16-32,
each a dense SVD of the (points x parameters) Jacobian: the profile in benchmarks/bench_lawfit.py. A start
near the optimum saves most of them.

How: the target's own law (E, G, alpha, d0) is fitted on its single-domain pilot alone (4 parameters, no
transfer involved). Each other point's loss y then says how much effective data the model must have seen,
S = R ((y - E) / G)^(-1 / alpha), and the transfer term must supply the rest: S - d0 - D_own = sum_j
kappa_j D_j (gamma = 1), a linear least-squares problem with 0 <= kappa <= 20 (scipy's `lsq_linear`).
Rows are weighed by d log L / d S so that the residuals read in log loss, as in the fit; points whose loss
is within noise of E (the inversion blows up there) carry almost no weight.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear

KAPPA_MAX = 20.0  # the fit's box for kappa (LawForm.bounds)
MIN_PILOT_POINTS = 3  # the own law has 4 parameters, d0 weakly pinned: below 3 points use the grid only


def own_law(prob, ref: float, delta: float, solve, grid_starts):
    """(log E, log G, alpha, log d0) from the points where the target saw only its own data, or None."""
    from .fit import Problem
    from .forms import FORMS

    solo = (prob.D_oth.sum(axis=1) == 0) & (prob.D_own > 0)
    if solo.sum() < MIN_PILOT_POINTS:
        return None
    sub = Problem(*(a[solo] for a in prob))
    form = FORMS["no_transfer"]
    tot = sub.D_own
    lo, hi = np.array(form.bounds([], float(np.exp(sub.logy.min())), (tot.min(), tot.max()))).T
    best = None
    for s in grid_starts(form, sub, [], ref)[:25:6]:  # a few spread starts: 4 parameters, cheap
        x, _ = solve(np.clip(s, lo, hi), form, sub, delta, ref, lo, hi)
        logL, _ = form.evaluate(x, *sub[:4], jac=False, ref=ref)
        v = float(np.sum(((logL - sub.logy) / sub.scale) ** 2))
        if best is None or v < best[0]:
            best = (v, x)
    return best[1]


def kappa_start(prob, ref: float, own: np.ndarray) -> np.ndarray:
    """kappa_j >= 0 (gamma = 1) that best explains the mixture points given the target's own law."""
    log_e, log_g, alpha, log_d0 = own[:4]
    E, G, d0 = np.exp(log_e), np.exp(log_g), np.exp(log_d0)
    y = np.exp(prob.logy)
    mix = prob.D_oth.sum(axis=1) > 0
    m = prob.D_oth.shape[1]
    # Above E by more than 1% of y: below it the loss says nothing about S (noise ~1% of y).
    ok = mix & (y - E > 0.01 * y)
    if ok.sum() < 2:
        return np.zeros(m)
    red = (y[ok] - E) / G
    S = ref * red ** (-1.0 / alpha)
    rhs = S - d0 - prob.D_own[ok]
    # d log L / d S = -alpha (y - E) / (y S): one unit of the scaled row is one unit of log loss.
    wt = alpha * (y[ok] - E) / (y[ok] * S) / prob.scale[ok]
    A = prob.D_oth[ok] * wt[:, None]
    res = lsq_linear(A, rhs * wt, bounds=(0.0, KAPPA_MAX), method="bvls", lsmr_tol="auto")
    return np.clip(res.x, 0.0, KAPPA_MAX)


def transfer_start(form, prob, ref: float, delta: float, solve, grid_starts) -> np.ndarray | None:
    """A full start vector for a transfer form (None when the target has no single-domain pilot)."""
    m = prob.D_oth.shape[1]
    if not form.transfer or m == 0:
        return None
    own = own_law(prob, ref, delta, solve, grid_starts)
    if own is None:
        return None
    lay = form.layout(m)
    th = np.zeros(form.n_params(m))
    th[:4] = own[:4]
    th[lay["kappa"]] = kappa_start(prob, ref, own)
    return fill_shape_defaults(th, form, lay, ref)


def fill_shape_defaults(th: np.ndarray, form, lay: dict, ref: float) -> np.ndarray:
    """The neutral values every start gives the shape parameters: gamma 1 (linear transfer), the
    interference scale at the reference data size, a repetition half-life of 5 epochs."""
    if form.gamma:
        th[lay["gamma"]] = 1.0
    if form.interference:
        th[lay["log_dbar"]] = np.log(ref)
    if form.repetition:
        th[lay["log_r_star"]] = np.log(5.0)
    return th
