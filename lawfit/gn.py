"""Bounded Levenberg-Marquardt on the p x p normal equations, for lawfit's per-target Huber least squares
(#18).

Why not scipy's `least_squares` (trf) here: each of its steps is a dense SVD of the (points x parameters)
Jacobian, ~n p^2 with a large constant (2,657 x 66 at 32 domains: 87% of a solve), and it approaches the
many kappa_j = 0 bounds (pairs that do not transfer) only geometrically, so its step count grows with m.
Here a step is J^T W J (n p^2, one BLAS call) and a Cholesky of the p x p matrix (microseconds), and a
bound is an active set: a variable on its bound whose gradient pushes outwards is held there (projected
Newton, Bertsekas 1982), so k = 0 is reached exactly.

The objective is the one `least_squares` minimizes in lawfit/fit.py:
    Phi(theta) = sum_k huber(r_k) + 0.5 |c (theta[idx] - ctr)|^2,  huber(r) = r^2 / 2 (|r| <= delta),
                                                                          delta |r| - delta^2 / 2 (else)
(n delta times `fit._objective`). The gradient weighs each Huber row by psi(r) / r = min(1, delta / |r|).
The curvature has two phases (#18, second round):
* far from an optimum, those IRLS weights: the weighted quadratic majorizes the Huber loss, steps are
  conservative, and a solve stays in its start's basin. The interference form has many local optima
  (each source's help can sit in k or in rho); the Huber curvature of the second phase used from the
  start led to worse ones (up to 2% higher at 32 domains on the benchmark data, 6 of 32 targets);
* once a step lowers Phi by less than SWITCH (relative), the Huber loss's own curvature: 1 on the
  quadratic rows, 0 on the linear ones (as scipy's robust loss scaling does for trf). With the IRLS
  weights to the end, convergence was linear (50-120 steps where 30-40% of the rows are beyond delta, as
  at 1% noise); a Newton step on the piecewise-quadratic Huber loss stops once the set of quadratic rows
  is right (test_gn.py). The damping stays scaled by the IRLS diagonal, positive also for a parameter
  only outliers see.
Measured at 32 domains (bench data, fit + CV of 3 forms, one process): every target's and every CV
refit's objective equal to the IRLS-only solver's or lower (1e-7 relative), 56 s vs 260 s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve

MAX_ITER = 500
# Stopping (relative decreases of Phi twice in a row; the projected gradient g_i / sqrt(H_ii) relative to
# sqrt(2 Phi)). Near an optimum the decrease halves per step (Gauss-Newton on a problem whose Huber rows
# keep non-zero residuals converges linearly), so FTOL alone cost ~10 steps per decade: a solve stops at
# decreases below FTOL once the gradient is below GTOL_LOOSE too (the KKT measure of test_gn.py then
# ~2e-6), and at decreases below FTOL_TIGHT (rounding) or a gradient below GTOL in any case.
FTOL, GTOL_LOOSE = 1e-10, 1e-7
FTOL_TIGHT, GTOL = 1e-13, 1e-10
SWITCH = 1e-4  # relative decrease of Phi below which the Huber curvature replaces the IRLS weights
LAMBDA_MAX = 1e12  # damping beyond which no descent step exists at float64 (converged)
LAMBDA0 = 1e-3  # initial damping, relative to diag(H)


class GNResult(NamedTuple):
    x: np.ndarray
    phi: float
    converged: bool
    steps: int


def _phi(r: np.ndarray, dev: np.ndarray, delta: float, c: float, n_huber: int | None = None) -> float:
    a = np.abs(r)
    h = np.where(a <= delta, 0.5 * r * r, delta * a - 0.5 * delta * delta)
    if n_huber is not None:
        h[n_huber:] = 0.5 * r[n_huber:] ** 2
    return float(h.sum() + 0.5 * c * c * (dev @ dev))


def solve_bounded(
    resid: Callable[..., tuple[np.ndarray, np.ndarray | None]],
    x0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    delta: float,
    ridge_idx: np.ndarray,
    ridge_ctr: np.ndarray,
    ridge_c: float,
    max_iter: int = MAX_ITER,
    n_huber: int | None = None,
) -> GNResult:
    """Minimize Phi inside [lo, hi] from x0. resid(x, jac) -> (r (n,), dr/dx (n, p) or None without jac):
    the data rows only (the ridge rows are added here). dr/dx may be a `BlockJacobian` (or any object
    with its rmatvec, gram and gram_diag). `n_huber`: only
    the first n_huber rows are Huber rows, the rest plain squares (lawfit/lowrank.py's scale row, as in
    its trf path); None: all."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if np.any(lo > hi):
        raise ValueError("solve_bounded: a lower bound is above its upper bound")
    x = np.clip(np.asarray(x0, float), lo, hi)
    c2 = ridge_c * ridge_c
    r, J = resid(x, True)
    phi = _phi(r, x[ridge_idx] - ridge_ctr, delta, ridge_c, n_huber)
    lam, small, tiny, converged, steps = LAMBDA0, 0, 0, False, 0
    exact = SWITCH is None
    while steps < max_iter:
        steps += 1
        a = np.abs(r)
        w = np.where(a <= delta, 1.0, delta / np.maximum(a, delta))  # IRLS weight of each Huber row
        quad = a <= delta
        if n_huber is not None:  # plain squares: weight and curvature 1
            w[n_huber:], quad[n_huber:] = 1.0, True
        blocky = not isinstance(J, np.ndarray)  # a BlockJacobian or lowrank_jac.RankOneJacobian
        g = J.rmatvec(w * r) if blocky else J.T @ (w * r)
        g[ridge_idx] += c2 * (x[ridge_idx] - ridge_ctr)
        if exact:  # the Huber loss's own curvature (module docstring)
            H = J.gram(quad * 1.0) if blocky else (lambda Jq: Jq.T @ Jq)(J[quad])
        else:
            H = J.gram(w) if blocky else (J * w[:, None]).T @ J
        H[ridge_idx, ridge_idx] += c2
        # Damping scale: the IRLS diagonal, which is positive even for a parameter only outliers see.
        d2 = J.gram_diag(w) if blocky else np.einsum("ij,i,ij->j", J, w, J)
        d2[ridge_idx] += c2
        d = np.sqrt(np.maximum(d2, 1e-300))
        # Active set: on a bound (clipping puts iterates exactly there) with the gradient pushing outwards.
        active = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
        free = ~active
        gs = np.max(np.abs(g[free]) / d[free], initial=0.0) / max(np.sqrt(2 * phi), 1e-300)
        if gs <= GTOL or tiny >= 2 or (small >= 2 and gs <= GTOL_LOOSE):
            converged = True  # a (scaled) zero gradient, or two negligible decreases
            break
        Hf, gf, df = H[np.ix_(free, free)], g[free], d[free] ** 2
        while True:
            A = Hf + lam * np.diag(df)
            try:
                pf = -cho_solve(cho_factor(A, lower=True, check_finite=False), gf, check_finite=False)
            except np.linalg.LinAlgError:  # H is only semi-definite: more damping makes it definite
                lam *= 10.0
                if lam > LAMBDA_MAX:
                    break
                continue
            step = np.zeros_like(x)
            step[free] = pf
            xn = np.clip(x + step, lo, hi)
            s = xn - x
            pred = -(g @ s + 0.5 * s @ H @ s)  # decrease the IRLS model promises for the projected step
            rn, _ = resid(xn, False)  # the Jacobian only for an accepted step
            phin = (
                _phi(rn, xn[ridge_idx] - ridge_ctr, delta, ridge_c, n_huber)
                if np.all(np.isfinite(rn))
                else np.inf
            )
            if phin < phi and pred > 0:
                rho = (phi - phin) / pred
                lam = lam * (0.3 if rho > 0.75 else 1.0 if rho > 0.25 else 2.0)
                lam = max(lam, 1e-12)
                dec = (phi - phin) / max(phi, 1e-300)
                x, r, J, phi = xn, rn, resid(xn, True)[1], phin
                small, tiny = (small + 1 if dec <= FTOL else 0), (tiny + 1 if dec <= FTOL_TIGHT else 0)
                exact = exact or dec <= SWITCH
                break
            lam = 2 * LAMBDA_MAX if not np.any(s) else lam * 4.0  # a null step: nothing left to move
            if lam > LAMBDA_MAX:
                break
        if lam > LAMBDA_MAX:
            converged = True  # no step of any length lowers Phi (at rounding)
            break
    return GNResult(x, phi, converged, steps)


class BlockJacobian:
    """A Jacobian whose rows come in blocks that each touch a few columns: lawfit/lowrank.py's joint fit,
    where a target's rows see its own 5 parameters and the m source strengths. J^T v and J^T diag(w) J
    block by block: n (m + 5)^2 flops instead of n (6m)^2, 30x fewer at 32 domains."""

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray]], n_cols: int):
        self.blocks, self.n_cols = blocks, n_cols  # (distinct column indices, the rows over them)
        self.ends = np.cumsum([len(b) for _, b in blocks])

    def _each(self):
        return ((cols, B, e - len(B), e) for (cols, B), e in zip(self.blocks, self.ends))

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_cols)
        for cols, B, a, b in self._each():
            out[cols] += B.T @ v[a:b]
        return out

    def gram(self, w: np.ndarray) -> np.ndarray:
        H = np.zeros((self.n_cols, self.n_cols))
        for cols, B, a, b in self._each():
            H[np.ix_(cols, cols)] += (B * w[a:b, None]).T @ B
        return H

    def gram_diag(self, w: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_cols)
        for cols, B, a, b in self._each():
            out[cols] += w[a:b] @ (B * B)
        return out

    def dense(self) -> np.ndarray:
        out = np.zeros((int(self.ends[-1]) if len(self.ends) else 0, self.n_cols))
        for cols, B, a, b in self._each():
            out[a:b, cols] = B
        return out


# ---- lawfit's per-target problem ----------------------------------------------------------------------
def solve_law(theta0, form, prob, delta: float, ref: float, lo, hi, ridge: float) -> GNResult:
    """lawfit/fit.py's `_solve` problem (the same objective) by `solve_bounded`, then up to ESCAPES rounds
    of `_escape`, each kept only if it lowers the objective."""
    idx, ctr = form.ridge(prob.D_oth.shape[1], ref)

    law = form.at(*prob[:4], ref=ref)
    unit_scale = bool(np.all(prob.scale == 1.0))

    def resid(th, jac=True):
        logL, J = law(th, jac)
        if J is not None and unit_scale is False:
            J /= prob.scale[:, None]  # in place: `law` rebuilds J at every call with jac
        return (logL - prob.logy) / prob.scale, J

    c = np.sqrt(2.0 * len(prob.logy) * delta * ridge)  # as in _solve: Phi = n delta `_objective`
    kw = dict(delta=delta, ridge_idx=idx, ridge_ctr=ctr, ridge_c=c)
    res = solve_bounded(resid, theta0, lo, hi, **kw)
    for _ in range(ESCAPES):
        x1 = _escape(res.x, form, prob, law, delta)
        if x1 is None:
            break
        # Most escapes lead back to the same optimum (CV and bootstrap refits try one nearly every time):
        # a few steps tell, and only an escape already below the optimum is taken to convergence.
        new = solve_bounded(resid, x1, lo, hi, max_iter=ESCAPE_PROBE, **kw)
        if new.phi < res.phi and not new.converged:
            new = solve_bounded(resid, new.x, lo, hi, **kw)
        if not new.phi < res.phi:
            break
        res = new
    return res


ESCAPES = 3  # rounds of `_escape` after a converged solve
ESCAPE_PROBE = (
    12  # steps after which an escape not yet below the optimum is given up (7 were needed in test_gn.py)
)
ESCAPE_GAMMAS = (0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)


def _escape(x, form, prob, law, delta: float):
    """A point off a false optimum of a pair with (almost) no transfer, or None.

    Where kappa_j ~ 0, gamma_j has no gradient (its term is kappa_j-weighted), the ridge holds it at 1, and
    the optimum is a KKT point of the box although a lower gamma_j with a larger kappa_j descends: a
    second-order, two-variable escape that Newton steps never see. trf finds some of these because its
    iterates keep kappa_j off 0 (it reached objectives 0.03-0.2% lower, #18). Here: for each such pair,
    the gradient in kappa_j at kappa_j = 0 as a function of gamma_j (cheap: kappa_j = 0 leaves the law
    unchanged), and where it is negative, gamma_j is set to the best grid value and kappa_j released."""
    m = prob.D_oth.shape[1]
    if not (form.transfer and form.gamma and m):
        return None
    lay = form.layout(m)
    kap = x[lay["kappa"]]
    logL, J = law(x)
    small = kap * np.abs(J[:, lay["kappa"]]).max(axis=0) < 1e-6  # term's largest effect on log L
    if not small.any():
        return None
    r = (logL - prob.logy) / prob.scale
    psi = np.clip(r, -delta, delta) / prob.scale
    th = x.copy()
    th[lay["kappa"]] = np.where(small, 0.0, kap)
    best = np.zeros(m)
    best_g = np.full(m, np.nan)
    for gam in ESCAPE_GAMMAS:
        th[lay["gamma"]] = np.where(small, gam, x[lay["gamma"]])
        _, Jg = law(th)
        gk = psi @ Jg[:, lay["kappa"]]
        better = small & (gk < best)
        best = np.where(better, gk, best)
        best_g = np.where(better, gam, best_g)
    move = np.isfinite(best_g)
    if not move.any():
        return None
    out = x.copy()
    gi = np.arange(lay["gamma"].start, lay["gamma"].stop)
    out[gi[move]] = best_g[move]
    return out
