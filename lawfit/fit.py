"""Fitting: Huber loss on log-loss residuals, multi-start trust-region least squares in float64, targets in
parallel, form selection by cross-validation over runs. Uncertainty (the bootstrap): lawfit/bootstrap.py."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.optimize import least_squares

from .dataset import Dataset
from .errors import LawfitError
from .intervals import INTERVALS
from .laws import D0_DEFAULT, FORMS, LawForm, TargetLaw

BOOTSTRAP_METHODS = ("runs", "parametric")


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    huber_delta: float = 0.01
    """Residuals (in log loss) below this are treated as noise (quadratic), above as outliers (linear)."""
    d0: float = D0_DEFAULT
    """Data offset of the law, in samples (keeps the loss finite at zero relevant data)."""
    forms: tuple[str, ...] | None = None
    """Candidate forms; None: no_transfer and transfer, plus transfer_repetition when runs repeat data."""
    cv_folds: int = 5
    """Folds over runs for choosing the form by held-out error."""
    bootstrap: int = 100
    """Bootstrap resamples (0: no uncertainty)."""
    bootstrap_method: str = "runs"
    """How a resample is drawn (lawfit/bootstrap.py): 'runs' resamples whole runs with replacement,
    'parametric' keeps the design and draws new noise of the per-run and per-evaluation size the
    residuals show. docs/lawfit.md gives the coverage of each."""
    level: float = 0.9
    """Confidence level of the reported intervals."""
    interval: str = "percentile"
    """How an interval is read off the resamples (lawfit/intervals.py): 'percentile' (ends at quantile
    positions p(B + 1)) or 'bc' (Efron's bias-corrected percentile interval)."""
    seed: int = 0
    workers: int = 0
    """Processes; 0: one per CPU core, at most one per job."""
    progress: bool = True

    def __post_init__(self):
        if not self.huber_delta > 0:
            raise LawfitError(f"huber_delta must be > 0, got {self.huber_delta}")
        if not self.d0 > 0:
            raise LawfitError(f"d0 must be > 0, got {self.d0}")
        if self.cv_folds < 2:
            raise LawfitError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if self.bootstrap < 0:
            raise LawfitError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.bootstrap_method not in BOOTSTRAP_METHODS:
            raise LawfitError(
                f"bootstrap_method must be one of {BOOTSTRAP_METHODS}, got {self.bootstrap_method!r}"
            )
        if self.interval not in INTERVALS:
            raise LawfitError(f"interval must be one of {INTERVALS}, got {self.interval!r}")
        if not 0 < self.level < 1:
            raise LawfitError(f"level must be in (0, 1), got {self.level}")
        for f in self.forms or ():
            if f not in FORMS:
                raise LawfitError(f"unknown form {f!r}; known: {sorted(FORMS)}")


@dataclass
class TargetFit:
    target: str
    form: str
    theta: np.ndarray  # in the coordinates of `ref` (see LawForm)
    ref: float
    law: TargetLaw
    objective: float
    rmse_log: float
    n_points: int
    converged: bool
    starts: int


@dataclass
class FormFit:
    form: str
    targets: dict[str, TargetFit]
    cv_rmse_log: float | None = None
    cv_per_target: dict[str, float] = field(default_factory=dict)


# ---- one target ---------------------------------------------------------------------------------------
def _problem(ds: Dataset, i: int, rows: np.ndarray | None = None):
    pts = ds.target_points(i) if rows is None else rows[np.isfinite(ds.y[rows, i])]
    others = [c for c in range(len(ds.domains)) if c != i]
    return (ds.D[pts, i], ds.D[pts][:, others], ds.U[pts, i], ds.U[pts][:, others], np.log(ds.y[pts, i]))


def box(form: LawForm, others: list[str], prob) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the fit vector for this target's points (E below the lowest loss)."""
    lo, hi = np.array(form.bounds(others, float(np.exp(prob[-1].min())))).T
    return lo, hi


def _objective(theta, form: LawForm, prob, delta: float, d0: float, ref: float):
    D_own, D_oth, U_own, U_oth, logy = prob
    logL, J = form.evaluate(theta, D_own, D_oth, U_own, U_oth, d0, ref=ref)
    r = logL - logy
    a = np.abs(r)
    quad = a <= delta
    # Huber, divided by delta so that the objective reads in units of log-loss.
    h = np.where(quad, 0.5 * r * r / delta, a - 0.5 * delta)
    psi = np.where(quad, r / delta, np.sign(r))
    n = len(r)
    val, grad = float(h.sum() / n), J.T @ psi / n
    if form.transfer:
        # gamma_j is not identified where kappa_j ~ 0 (an island pair): a weak ridge towards 1 removes that
        # flat direction; it is far below the data's curvature wherever the transfer is real.
        gs = form.gamma_slice(len(theta))
        g = theta[gs]
        val += GAMMA_RIDGE * float(((g - 1.0) ** 2).sum())
        grad = grad.copy()
        grad[gs] += 2 * GAMMA_RIDGE * (g - 1.0)
    return val, grad


def reference_scale(prob, d0: float) -> float:
    """Geometric mean of the samples seen at the target's points: the centre of the fit's coordinates."""
    tot = d0 + prob[0] + prob[1].sum(axis=1)
    return float(np.exp(np.mean(np.log(tot))))


def _grid_starts(form: LawForm, prob, others: list[str], d0: float, ref: float) -> list[np.ndarray]:
    """A grid over E, alpha (and kappa), with G in closed form so that each start fits the data's level."""
    D_own, D_oth, _, _, logy = prob
    y = np.exp(logy)
    y_min = float(y.min())
    m = len(others)
    kaps = (0.01, 0.1, 0.5) if form.transfer and m else (0.0,)
    starts = []
    for e_frac, alpha, kap in product((0.3, 0.5, 0.7, 0.9, 0.97), (0.1, 0.2, 0.35, 0.6, 0.9), kaps):
        E = e_frac * y_min
        S = d0 + D_own + (kap * D_oth.sum(axis=1) if form.transfer and m else 0.0)
        logG = float(np.median(np.log(y - E) + alpha * np.log(S / ref)))
        th = [np.log(E), logG, alpha]
        if form.transfer:
            th += [kap] * m + [1.0] * m
        if form.repetition:
            th.append(np.log(5.0))
        starts.append(np.asarray(th, dtype=np.float64))
    return starts


GAMMA_RIDGE = 1e-5
N_REFINE = 4  # grid starts taken to convergence (the best by initial objective)
SOLVER_TOL = 1e-12  # least_squares' ftol, xtol and gtol
BOUND_SNAP = 1e-8  # fraction of a parameter's range within which a solution is put on the bound


def _huber_rows(n_data: int):
    """least_squares loss: Huber on the first n_data rows (z = (r / delta)^2), plain squares on the rest
    (the gamma ridge), so that the solver minimizes exactly n delta times `_objective`."""

    def rho(z):
        out = np.empty((3, len(z)))
        out[0], out[1], out[2] = z, 1.0, 0.0
        zd = z[:n_data]
        big = zd > 1.0
        sq = np.sqrt(np.where(big, zd, 1.0))
        out[0, :n_data] = np.where(big, 2.0 * sq - 1.0, zd)
        out[1, :n_data] = np.where(big, 1.0 / sq, 1.0)
        out[2, :n_data] = np.where(big, -0.5 / (sq * np.where(big, zd, 1.0)), 0.0)
        return out

    return rho


def _solve(theta0, form: LawForm, prob, delta: float, d0: float, ref: float, lo, hi):
    """Minimize `_objective` from theta0 inside [lo, hi] by trust-region reflective least squares.

    Why not L-BFGS-B on `_objective` (this project's first solver): the problem is ill-conditioned along
    the E-G-alpha direction, and with objective values ~1e-3 L-BFGS-B's stopping rule, relative to
    max(|f|, 1), ended warm-started refits after a few steps far from the optimum: bootstrap refits moved
    about a tenth as far as fresh data moves the estimate, and the intervals were that much too narrow
    (docs/notes/coverage_study_2026-11-30.md). Gauss-Newton steps with the Jacobian reach lower
    objectives in 5-50 evaluations.
    """
    n = len(prob[-1])
    g_idx = np.arange(len(theta0))[form.gamma_slice(len(theta0))]
    m = len(g_idx)
    c = np.sqrt(2.0 * n * delta * GAMMA_RIDGE)  # 0.5 (c (g - 1))^2 = n delta GAMMA_RIDGE (g - 1)^2
    cache = {}

    def evaluate(th):
        key = th.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = form.evaluate(th, *prob[:4], d0, ref=ref)
        return cache[key]

    def fun(th):
        logL, _ = evaluate(th)
        return np.concatenate([logL - prob[-1], c * (th[g_idx] - 1.0)])

    def jac(th):
        _, J = evaluate(th)
        ridge = np.zeros((m, len(th)))
        ridge[np.arange(m), g_idx] = c
        return np.vstack([J, ridge])

    res = least_squares(
        fun,
        np.clip(theta0, lo, hi),
        jac=jac,
        bounds=(lo, hi),
        method="trf",
        loss=_huber_rows(n),
        f_scale=delta,
        x_scale="jac",
        ftol=SOLVER_TOL,
        xtol=SOLVER_TOL,
        gtol=SOLVER_TOL,
        max_nfev=2000,
    )
    # TRF keeps its iterates strictly inside the bounds, so an optimum on a bound (k = 0 for a pair that does
    # not transfer) ends ~1e-10 inside it. Put such values on the bound: otherwise no bootstrap draw is ever
    # exactly 0 and a percentile interval can never contain k = 0.
    x = res.x.copy()
    tol = BOUND_SNAP * (hi - lo)
    x = np.where(x - lo <= tol, lo, np.where(hi - x <= tol, hi, x))
    return x, res.status > 0


def fit_target(
    form: LawForm,
    ds: Dataset,
    i: int,
    cfg: FitConfig,
    *,
    rows: np.ndarray | None = None,
    init: list[np.ndarray] | None = None,
    ref: float | None = None,
) -> TargetFit:
    """Fit one target. `init` are starts in the coordinates of `ref` (both from an earlier fit)."""
    target = ds.domains[i]
    others = [d for d in ds.domains if d != target]
    prob = _problem(ds, i, rows)
    n = len(prob[-1])
    if n < 3:
        raise LawfitError(f"target '{target}': only {n} evaluation points; need at least 3 to fit")
    ref = reference_scale(prob, cfg.d0) if ref is None else ref
    lo, hi = box(form, others, prob)
    args = (form, prob, cfg.huber_delta, cfg.d0, ref)
    starts = init if init is not None else _grid_starts(form, prob, others, cfg.d0, ref)
    n_starts = len(starts)
    starts = [np.clip(s, lo, hi) for s in starts]
    if len(starts) > N_REFINE:
        # Screening by the objective at the start is nearly free; the best few go to convergence.
        starts = sorted(starts, key=lambda s: _objective(s, *args)[0])[:N_REFINE]
    results = []
    for s in starts:
        x, ok = _solve(s, form, prob, cfg.huber_delta, cfg.d0, ref, lo, hi)
        results.append((_objective(x, *args)[0], x, ok))
    fun, x, ok = min(results, key=lambda r: r[0])
    logL, _ = form.evaluate(x, *prob[:4], cfg.d0, jac=False, ref=ref)
    rmse = float(np.sqrt(np.mean((logL - prob[-1]) ** 2)))
    return TargetFit(
        target=target,
        form=form.name,
        theta=x,
        ref=ref,
        law=form.unpack(x, target, others, ref),
        objective=float(fun),
        rmse_log=rmse,
        n_points=n,
        converged=bool(ok),
        starts=n_starts,
    )


# ---- parallel driver ----------------------------------------------------------------------------------
def _pool(cfg: FitConfig, n_jobs: int):
    workers = cfg.workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, n_jobs))
    if workers == 1:
        return None
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_one_blas_thread)


def _one_blas_thread() -> None:
    """The fits multiply small matrices (points x parameters): a multi-threaded BLAS in every worker only
    spins and oversubscribes the cores (measured: 12x slower bootstrap on 2 cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _progress(total: int, desc: str, cfg: FitConfig):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not cfg.progress or total <= 1,
        leave=False,
        dynamic_ncols=True,
    )


def _map(fn, jobs: list, cfg: FitConfig, desc: str) -> list:
    out = [None] * len(jobs)
    pool = _pool(cfg, len(jobs))
    with _progress(len(jobs), desc, cfg) as bar:
        if pool is None:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                for a, job in enumerate(jobs):
                    out[a] = fn(*job)
                    bar.update()
        else:
            with pool:
                futs = {pool.submit(fn, *job): a for a, job in enumerate(jobs)}
                for fut in as_completed(futs):
                    out[futs[fut]] = fut.result()
                    bar.update()
    return out


def _job_target(form_name, ds, i, cfg, rows=None, init=None, ref=None):
    return fit_target(FORMS[form_name], ds, i, cfg, rows=rows, init=init, ref=ref)


def candidate_forms(ds: Dataset, cfg: FitConfig) -> tuple[list[str], list[str]]:
    notes = []
    if cfg.forms:
        return list(cfg.forms), notes
    forms = ["no_transfer", "transfer"]
    if np.any(ds.D > ds.U):
        forms.append("transfer_repetition")
    else:
        notes.append(
            "no run saw more samples of a domain than its unique data: the repetition form is not "
            "identifiable and was not fitted"
        )
    return forms, notes


def fit_forms(ds: Dataset, cfg: FitConfig) -> tuple[dict[str, FormFit], list[str]]:
    forms, notes = candidate_forms(ds, cfg)
    m = len(ds.domains)
    jobs = [(f, ds, i, cfg) for f in forms for i in range(m)]
    res = _map(_job_target, jobs, cfg, "fit")
    fits = {f: FormFit(f, {}) for f in forms}
    for (f, _, i, _), tf in zip(jobs, res):
        fits[f].targets[ds.domains[i]] = tf
    return fits, notes


def cross_validate(ds: Dataset, fits: dict[str, FormFit], cfg: FitConfig) -> list[str]:
    """Held-out error of each form: K folds over runs, warm-started from the full-data fit."""
    k = min(cfg.cv_folds, ds.n_runs)
    if k < 2:
        return [f"only {ds.n_runs} run(s): forms cannot be compared on held-out runs"]
    perm = np.random.default_rng(cfg.seed).permutation(ds.n_runs)
    folds = [perm[a::k] for a in range(k)]
    jobs, meta = [], []
    for f, ff in fits.items():
        for a, held in enumerate(folds):
            train = np.flatnonzero(~np.isin(ds.run, held))
            for i, d in enumerate(ds.domains):
                jobs.append((f, ds, i, cfg, train, [ff.targets[d].theta], ff.targets[d].ref))
                meta.append((f, a, i))
    res = _map(_job_target, jobs, cfg, "cross-validate")
    sq: dict[tuple[str, str], list[float]] = {}
    for (f, a, i), tf in zip(meta, res):
        test = np.flatnonzero(np.isin(ds.run, folds[a]))
        D_own, D_oth, U_own, U_oth, logy = _problem(ds, i, test)
        if len(logy) == 0:
            continue
        logL, _ = FORMS[f].evaluate(tf.theta, D_own, D_oth, U_own, U_oth, cfg.d0, jac=False, ref=tf.ref)
        sq.setdefault((f, ds.domains[i]), []).extend(((logL - logy) ** 2).tolist())
    for f, ff in fits.items():
        allsq = [v for d in ds.domains for v in sq.get((f, d), [])]
        ff.cv_rmse_log = float(np.sqrt(np.mean(allsq))) if allsq else None
        ff.cv_per_target = {d: float(np.sqrt(np.mean(sq[(f, d)]))) for d in ds.domains if (f, d) in sq}
    return []
