"""The low-rank transfer form: k_ij = b_i a_j, fitted jointly over all targets.

With m domains the full transfer form has (m - 1) transfer rates per target, m (m - 1) in all; a study with
few runs cannot identify them (docs/notes/law_study_2026-11-28.md, Q1). The low-rank form explains the
matrix by how much each source gives (a_j) and how much each target takes (b_i): 2m numbers. The rates
are no longer separable by target, so the targets are fitted together: one least-squares problem over
every target's points, parameters [log E, log G, alpha, log d0, log b] per target and log a per source,
with the Jacobian assembled from the per-target one of the `transfer_lowrank` form (the transfer law with
gamma = 1, whose kappa_ij = b_i a_j) by the chain rule. The scale shared by a and b (a c, b / c) is fixed
by a ridge that centres mean(log a) on 0.

A fitted target is then an ordinary `TargetFit` of that per-target form (its kappa_ij = b_i a_j), so
prediction, allocation, CV scoring, identifiability and the stored bootstrap draws need nothing new; the
refits (CV folds, bootstrap resamples) refit the whole joint problem.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from scipy.optimize import least_squares

from .dataset import Dataset
from .errors import LawfitError
from .fit import (
    MANY_SOURCES,
    SOLVER_TOL,
    FitConfig,
    TargetFit,
    _huber_rows,
    _objective,
    _problem,
    box,
    reference_scale,
)
from .forms import FORMS
from .gn import BlockJacobian, solve_bounded

NAME = "transfer_lowrank"
LOG_RATE = (-12.0, 3.0)  # bounds of log a_j and log b_i (e^-12 ~ no transfer; a_j b_i <= e^6 ~ 400)
SCALE_RIDGE = 1.0  # weight of the mean(log a) = 0 row: fixes the a-b scale without moving any fit


def _blocks(ds: Dataset, rows: np.ndarray | None):
    """Per target: its problem, reference scale, box (per-target layout), the other domains' indices and
    the prepared law (`LawForm.at`) of its points."""
    out = []
    for i in range(len(ds.domains)):
        prob = _problem(ds, i, rows)
        if len(prob.logy) < 3:
            raise LawfitError(f"target '{ds.domains[i]}': fewer than 3 points for the low-rank fit")
        others = [c for c in range(len(ds.domains)) if c != i]
        lo, hi = box(FORMS[NAME], [ds.domains[c] for c in others], prob)
        ref = reference_scale(prob)
        out.append((prob, ref, lo, hi, others, FORMS[NAME].at(*prob[:4], ref=ref)))
    return out


def _per_target(x: np.ndarray, i: int, others: list[int], m: int) -> np.ndarray:
    """Target i's vector in the per-target layout: [log E, log G, alpha, log d0, kappa_ij = b_i a_j]."""
    own = x[5 * i : 5 * i + 5]
    log_a = x[5 * m :]
    return np.concatenate([own[:4], np.exp(own[4] + log_a[others])])


def _bounds(blocks, m: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = [], []
    for _, _, blo, bhi, _, _ in blocks:
        lo += [*blo[:4], LOG_RATE[0]]
        hi += [*bhi[:4], LOG_RATE[1]]
    return np.array(lo + [LOG_RATE[0]] * m), np.array(hi + [LOG_RATE[1]] * m)


def _residual_blocks(x, blocks, m: int, jac: bool = True):
    """Residuals of every target's points (and the scale row), and their Jacobian by blocks: a target's
    rows touch only its own 5 parameters and the sources' log a_j (None without jac)."""
    res, jb = [], []
    for i, (prob, _, _, _, others, law) in enumerate(blocks):
        th = _per_target(x, i, others, m)
        logL, J = law(th, jac)  # the block's prepared law (LawForm.at): data-only work done once
        res.append((logL - prob.logy) / prob.scale)
        if jac:
            J = J / prob.scale[:, None]
            dk = J[:, 4:] * th[4:]  # d/d log(kappa_ij): kappa_ij = exp(log b_i + log a_j)
            cols = np.concatenate([np.arange(5 * i, 5 * i + 5), 5 * m + np.asarray(others, dtype=np.int64)])
            jb.append((cols, np.column_stack([J[:, :4], dk.sum(axis=1), dk])))
    res.append([SCALE_RIDGE * float(np.mean(x[5 * m :]))])
    jb.append((np.arange(5 * m, 6 * m), np.full((1, m), SCALE_RIDGE / m)))
    return np.concatenate(res), (BlockJacobian(jb, 6 * m) if jac else None)


def _residuals_and_jacobian(x, blocks, m: int):
    r, J = _residual_blocks(x, blocks, m)
    return r, J.dense()


def _start(ds: Dataset, rows, cfg: FitConfig, b0: float) -> np.ndarray:
    """Each target's own law from the no-transfer fit (same points), every a_j = 1 and b_i = b0."""
    from .fit import fit_target

    m = len(ds.domains)
    x = []
    for i in range(m):
        tf = fit_target(FORMS["no_transfer"], ds, i, cfg, rows=rows)
        x += [*tf.theta[:4], np.log(b0)]
    return np.array(x + [0.0] * m)


def fit_lowrank(
    ds: Dataset, cfg: FitConfig, *, rows: np.ndarray | None = None, init: np.ndarray | None = None
) -> tuple[dict[str, TargetFit], np.ndarray]:
    """Fit every target jointly; returns the per-target fits and the joint vector (for warm refits)."""
    m = len(ds.domains)
    blocks = _blocks(ds, rows)
    lo, hi = _bounds(blocks, m)
    n_data = sum(len(b[0].logy) for b in blocks)
    cache: dict = {}

    def rj(x):
        key = x.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = _residuals_and_jacobian(x, blocks, m)
        return cache[key]

    starts = [init] if init is not None else [_start(ds, rows, cfg, b0) for b0 in (0.01, 0.3)]
    best = None
    for x0 in starts:
        if m - 1 >= MANY_SOURCES:  # as the per-target fits (lawfit/fit.py), by blocks: #18
            res = solve_bounded(
                lambda x, jac=True: _residual_blocks(x, blocks, m, jac), x0, lo, hi, delta=cfg.huber_delta,
                ridge_idx=np.zeros(0, np.int64), ridge_ctr=np.zeros(0), ridge_c=0.0,
            )  # fmt: skip
            r = SimpleNamespace(x=res.x, cost=res.phi, status=int(res.converged))
        else:
            r = least_squares(
                lambda x: rj(x)[0], np.clip(x0, lo + 1e-9, hi - 1e-9), jac=lambda x: rj(x)[1],
                bounds=(lo, hi), method="trf", loss=_huber_rows(n_data), f_scale=cfg.huber_delta,
                x_scale="jac", ftol=SOLVER_TOL, xtol=SOLVER_TOL, gtol=SOLVER_TOL, max_nfev=3000,
            )  # fmt: skip
        if best is None or r.cost < best.cost:
            best = r
    x = best.x
    fits = {}
    for i, (prob, ref, _, _, others, _) in enumerate(blocks):
        d = ds.domains[i]
        th = _per_target(x, i, others, m)  # a kappa above the per-target box is kept (and reported)
        logL, _ = FORMS[NAME].evaluate(th, *prob[:4], jac=False, ref=ref)
        fits[d] = TargetFit(
            target=d,
            form=NAME,
            theta=th,
            ref=ref,
            law=FORMS[NAME].unpack(th, d, [ds.domains[c] for c in others], ref),
            objective=float(_objective(th, FORMS[NAME], prob, cfg.huber_delta, ref)[0]),
            rmse_log=float(np.sqrt(np.mean((logL - prob.logy) ** 2))),
            n_points=len(prob.logy),
            converged=bool(best.status > 0),
            starts=len(starts),
        )
    return fits, x
