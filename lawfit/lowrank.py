"""The low-rank transfer form: k_ij = b_i a_j, fitted jointly over all targets.

With m domains the full transfer form has (m - 1) transfer rates per target, m (m - 1) in all; a study with
few runs cannot identify them (docs/notes/law_study_2026-11-28.md, Q1). The low-rank form explains the
matrix by how much each source gives (a_j) and how much each target takes (b_i): 2m numbers. The rates
are no longer separable by target, so the targets are fitted together: one least-squares problem over
every target's points, parameters [log E, log G, alpha, log d0, log b] per target and log a per source,
with the Jacobian assembled from the per-target one of the `transfer_lowrank` form (the transfer law with
gamma = 1, whose kappa_ij = b_i a_j) by the chain rule. The scale shared by a and b (a c, b / c) is fixed
by a ridge that centres mean(log a) on 0 (a plain square row, not a Huber row).

From 7 domains on (#18) the joint problem is solved by lawfit/gn.py's Levenberg-Marquardt, restarted
every RESTART steps (`_solve_joint`), with J^T W J formed from the rank-one structure
(lawfit/lowrank_jac.py: n m^2 instead of n m^3 per step); below, by trf on the dense Jacobian.

A fitted target is then an ordinary `TargetFit` of that per-target form (its kappa_ij = b_i a_j), so
prediction, allocation, CV scoring, identifiability and the stored bootstrap draws need nothing new; the
refits (CV folds, bootstrap resamples) refit the whole joint problem.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from scipy.optimize import least_squares
from threadpoolctl import threadpool_limits

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
from .gn import MAX_ITER, BlockJacobian, GNResult, solve_bounded
from .lowrank_jac import RankOneJacobian

NAME = "transfer_lowrank"
LOG_RATE = (-12.0, 3.0)  # bounds of log a_j and log b_i (e^-12 ~ no transfer; a_j b_i <= e^6 ~ 400)
SCALE_RIDGE = 1.0  # weight of the mean(log a) = 0 row: fixes the a-b scale without moving any fit
RESTART = 50  # joint Levenberg-Marquardt steps after which a solve restarts from its point (_solve_joint)


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


def _solve_joint(resid, x0, lo, hi, delta: float, n_data: int) -> GNResult:
    """`solve_bounded` on the joint problem, restarted from its own point every RESTART steps until it
    converges (MAX_ITER steps in all). The scale row is a plain square (`n_huber`), as in the trf path.

    Why restarts (#18, third round): one global damping serves every target's block. Once the solve
    has switched to the Huber loss's own curvature (lawfit/gn.py), a block whose set of quadratic rows
    is still wrong makes trial steps fail and holds the damping high for all of them; at 32 domains both
    starts then crawled to the 500-step limit without converging (objective 97.17, 30 s each on the
    benchmark data). A restart (IRLS weights again, the initial damping) from the point reached converged
    in 30-40 further steps to 97.1285 (with RESTART = 50: 81 and 133 steps in all from the two starts;
    at 16 domains 76 and 91 instead of 136-142, the same optimum). On the benchmark's 8-domain data no
    solve reaches RESTART steps (45-46), so nothing changes there."""
    steps, x = 0, x0
    while True:
        res = solve_bounded(
            resid, x, lo, hi, delta=delta, ridge_idx=np.zeros(0, np.int64), ridge_ctr=np.zeros(0),
            ridge_c=0.0, max_iter=min(RESTART, MAX_ITER - steps), n_huber=n_data,
        )  # fmt: skip
        steps += res.steps
        if res.converged or steps >= MAX_ITER:
            return res._replace(steps=steps)
        x = res.x


def _points(ds: Dataset, rows: np.ndarray | None) -> list[np.ndarray]:
    """Each target's rows of the dataset, in the order of its `Problem` (lawfit/problem.py)."""
    return [
        ds.target_points(i) if rows is None else rows[np.isfinite(ds.y[rows, i])]
        for i in range(len(ds.domains))
    ]


def _rank_one_data(ds: Dataset, rows: np.ndarray | None):
    """What `_residual_rank_one` needs of the dataset: D (N, m), each target's rows (`_points`) and D at
    them (one array shared by the targets with the same rows: all of them without missing values)."""
    D, pts, seen = np.asarray(ds.D, np.float64), _points(ds, rows), {}
    Dp = [seen.setdefault(p.tobytes(), D if np.array_equal(p, np.arange(len(D))) else D[p]) for p in pts]
    return D, pts, Dp


def _residual_rank_one(x, blocks, m: int, data, jac: bool = True):
    """`_residual_blocks` with the Jacobian as a `RankOneJacobian` (lawfit/lowrank_jac.py): the same
    residuals and derivatives, J^T W J in n m^2 instead of n m^3. data: `_rank_one_data`."""
    res, own, u = [], [], []
    for i, (prob, _, _, _, others, law) in enumerate(blocks):
        th = _per_target(x, i, others, m)
        logL, J = law(th, jac)
        res.append((logL - prob.logy) / prob.scale)
        if jac:
            ui = J[:, 3] / np.exp(th[3]) / prob.scale  # d log L / dS (J[:, 3] is it times d0)
            own.append(np.column_stack([J[:, :4], J[:, 4:] @ th[4:]]) / prob.scale[:, None])
            u.append(ui)
    res.append([SCALE_RIDGE * float(np.mean(x[5 * m :]))])
    if not jac:
        return np.concatenate(res), None
    b, a = np.exp(x[4 : 5 * m : 5]), np.exp(x[5 * m :])
    return np.concatenate(res), RankOneJacobian(own, u, data[1], data[0], data[2], b, a, SCALE_RIDGE / m)


def _residuals_and_jacobian(x, blocks, m: int):
    r, J = _residual_blocks(x, blocks, m)
    return r, J.dense()


def _starts(ds: Dataset, rows, cfg: FitConfig, b0s=(0.01, 0.3)) -> list[np.ndarray]:
    """Each target's own law from the no-transfer fit (same points, fitted once for every start), every
    a_j = 1 and b_i = b0, one start per b0."""
    from .fit import fit_target

    m = len(ds.domains)
    own = [fit_target(FORMS["no_transfer"], ds, i, cfg, rows=rows).theta[:4] for i in range(m)]
    return [np.array([v for th in own for v in (*th, np.log(b0))] + [0.0] * m) for b0 in b0s]


def fit_lowrank(
    ds: Dataset, cfg: FitConfig, *, rows: np.ndarray | None = None, init: np.ndarray | None = None
) -> tuple[dict[str, TargetFit], np.ndarray]:
    """Fit every target jointly; returns the per-target fits and the joint vector (for warm refits).

    With one BLAS thread, as lawfit's worker processes (lawfit/parallel.py): the joint fit runs in the
    calling process, where a 2-thread OpenBLAS made the 32-domain fit + CV 9x slower (117.7 s vs 12.6 s
    on 2 cores, #18 third round: small matrices, the threads only spin)."""
    with threadpool_limits(1):
        return _fit_lowrank(ds, cfg, rows, init)


def _fit_lowrank(ds: Dataset, cfg: FitConfig, rows, init):
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

    starts = [init] if init is not None else _starts(ds, rows, cfg)
    many = m - 1 >= MANY_SOURCES  # as the per-target fits (lawfit/fit.py): Levenberg-Marquardt, #18
    data = _rank_one_data(ds, rows) if many else None
    best = None
    for x0 in starts:
        if many:
            res = _solve_joint(lambda x, jac=True: _residual_rank_one(x, blocks, m, data, jac), x0, lo, hi,
                               cfg.huber_delta, n_data)  # fmt: skip
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
