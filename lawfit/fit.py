"""Fitting one target: Huber loss on noise-weighted log-loss residuals, multi-start trust-region least
squares in float64. Targets run in parallel (lawfit/parallel.py); the form is chosen by cross-validation
(lawfit/select.py); uncertainty by the bootstrap (lawfit/bootstrap.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.optimize import least_squares

from .dataset import Dataset
from .errors import LawfitError
from .forms import FORMS, LawForm
from .intervals import INTERVALS
from .laws import TargetLaw
from .parallel import map_jobs
from .problem import Problem, _problem, box, point_scale  # noqa: F401 (point_scale: re-exported)
from .starts import fill_shape_defaults

BOOTSTRAP_METHODS = ("runs", "parametric")


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    huber_delta: float = 0.01
    """Residuals (in log loss) below this are treated as noise (quadratic), above as outliers (linear)."""
    forms: tuple[str, ...] | None = None
    """Candidate forms; None: no_transfer, transfer and interference, plus transfer_repetition when runs
    repeat data."""
    cv_folds: int = 5
    """Folds over the mixture runs for choosing the form by held-out error when there are more than
    `lawfit.select.MAX_LOMO` of them (fewer: each mixture is its own fold); single-domain pilots always
    stay in training (lawfit/select.py)."""
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
        if self.cv_folds < 2:
            raise LawfitError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if self.bootstrap < 0:
            raise LawfitError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.workers < 0:
            raise LawfitError(f"workers must be >= 0 (0: one per core), got {self.workers}")
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
    joint: np.ndarray | None = None  # a jointly fitted form's vector over all targets (lawfit/lowrank.py)


# ---- one target ---------------------------------------------------------------------------------------
def _objective(theta, form: LawForm, prob: Problem, delta: float, ref: float, jac: bool = True, law=None):
    """Mean Huber loss of the noise-weighted log-loss residuals, plus the weak ridge; value and gradient
    (None without jac: the Jacobian is most of the cost, ~n x p, and screening starts needs only values).
    `law`: `form.at(*prob[:4], ref)` when the caller has it (it keeps the data-only work between calls)."""
    law = law or form.at(*prob[:4], ref=ref)
    logL, J = law(theta, jac)
    r = (logL - prob.logy) / prob.scale
    a = np.abs(r)
    quad = a <= delta
    # Huber, divided by delta so that the objective reads in units of log-loss.
    h = np.where(quad, 0.5 * r * r / delta, a - 0.5 * delta)
    psi = np.where(quad, r / delta, np.sign(r)) / prob.scale
    n = len(r)
    val, grad = float(h.sum() / n), None if J is None else J.T @ psi / n
    # gamma_j is not identified where kappa_j ~ 0 (an island pair), nor dbar where every rho ~ 0: a weak
    # ridge (towards gamma 1, dbar R) removes those flat directions; it is far below the data's curvature
    # wherever the term is real.
    idx, ctr = form.ridge(prob.D_oth.shape[1], ref)
    if len(idx):
        dev = theta[idx] - ctr
        val += RIDGE * float((dev**2).sum())
        if grad is not None:
            grad = grad.copy()
            grad[idx] += 2 * RIDGE * dev
    return val, grad


def reference_scale(prob: Problem) -> float:
    """Geometric mean of the samples seen at the target's points: the centre of the fit's coordinates."""
    tot = 1.0 + prob.D_own + prob.D_oth.sum(axis=1)
    return float(np.exp(np.mean(np.log(tot))))


def _d0_start(prob: Problem) -> float:
    """d0's start: a third of the first positive amount of own data the target saw (the data a model starts
    with is of the order of its first evaluation: docs/notes/law_study_2026-11-28.md found 100-300 for
    evaluations from 400). One value, not a grid: the solver moves d0 freely (it is well scaled in log)."""
    own = prob.D_own[prob.D_own > 0]
    first = float(own.min()) if len(own) else float(max(prob.D_oth.sum(axis=1).max(), 10.0))
    return max(1.0, first / 3.0)


def _grid_starts(form: LawForm, prob: Problem, others: list[str], ref: float) -> list[np.ndarray]:
    """A grid over E, alpha, d0 (and kappa), with G in closed form so that each start fits the data's level."""
    y = np.exp(prob.logy)
    y_min = float(y.min())
    m = len(others)
    kaps = (0.01, 0.1, 0.5) if form.transfer and m else (0.0,)
    lay = form.layout(m)
    starts = []
    d0 = _d0_start(prob)
    for e_frac, alpha, kap in product((0.3, 0.5, 0.7, 0.9, 0.97), (0.1, 0.2, 0.35, 0.6, 0.9), kaps):
        E = e_frac * y_min
        S = d0 + prob.D_own + (kap * prob.D_oth.sum(axis=1) if form.transfer and m else 0.0)
        th = np.zeros(form.n_params(m))
        th[0], th[2], th[3] = np.log(E), alpha, np.log(d0)
        th[1] = float(np.median(np.log(y - E) + alpha * np.log(S / ref)))
        if form.transfer:
            th[lay["kappa"]] = kap
        starts.append(fill_shape_defaults(th, form, lay, ref))
    return starts


RIDGE = 1e-5
N_REFINE = 4  # grid starts taken to convergence (the best by initial objective)
SOLVER_TOL = 1e-12  # least_squares' ftol, xtol and gtol
BOUND_SNAP = 1e-8  # fraction of a parameter's range within which a solution is put on the bound
MANY_SOURCES = 6  # from 7 domains on, transfer forms also start from lawfit/starts.py and may stop early
AGREE_RTOL = 1e-7  # two solves reached the same optimum when their objectives agree this closely


def _agree(results) -> bool:
    (a, _, ok_a), (b, _, ok_b) = results[:2]
    return ok_a and ok_b and abs(a - b) <= AGREE_RTOL * max(abs(a), abs(b), 1e-300)


def _huber_rows(n_data: int):
    """least_squares loss: Huber on the first n_data rows (z = (r / delta)^2), plain squares on the rest
    (the ridge), so that the solver minimizes exactly n delta times `_objective`."""

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


def _solve(theta0, form: LawForm, prob: Problem, delta: float, ref: float, lo, hi):
    """Minimize `_objective` from theta0 inside [lo, hi] by trust-region reflective least squares.

    Why not L-BFGS-B on `_objective` (this project's first solver): the problem is ill-conditioned along
    the E-G-alpha direction, and with objective values ~1e-3 L-BFGS-B's stopping rule, relative to
    max(|f|, 1), ended warm-started refits after a few steps far from the optimum: bootstrap refits moved
    about a tenth as far as fresh data moves the estimate, and the intervals were that much too narrow
    (docs/notes/coverage_study_2026-11-30.md). Gauss-Newton steps with the Jacobian reach lower
    objectives in 5-50 evaluations.
    """
    n = len(prob.logy)
    idx, ctr = form.ridge(prob.D_oth.shape[1], ref)
    c = np.sqrt(2.0 * n * delta * RIDGE)  # 0.5 (c dev)^2 = n delta RIDGE dev^2
    cache = {}
    law = form.at(*prob[:4], ref=ref)

    def evaluate(th):
        key = th.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = law(th)  # its J is rebuilt in place by the next call: used before that
        return cache[key]

    def fun(th):
        logL, _ = evaluate(th)
        return np.concatenate([(logL - prob.logy) / prob.scale, c * (th[idx] - ctr)])

    def jac(th):
        _, J = evaluate(th)
        ridge = np.zeros((len(idx), len(th)))
        ridge[np.arange(len(idx)), idx] = c
        return np.vstack([J / prob.scale[:, None], ridge])

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
    return _snap(res.x, lo, hi), res.status > 0


def _snap(x, lo, hi):
    tol = BOUND_SNAP * (hi - lo)
    return np.where(x - lo <= tol, lo, np.where(hi - x <= tol, hi, x))


def _solve_gn(theta0, form: LawForm, prob: Problem, delta: float, ref: float, lo, hi):
    # Active bounds are exact already; a value within BOUND_SNAP of one is put on it as `_solve` does.
    res = _gn_raw(theta0, form, prob, delta, ref, lo, hi)
    return _snap(res.x, lo, hi), res.converged


def _gn_raw(theta0, form: LawForm, prob: Problem, delta: float, ref: float, lo, hi):
    """`_solve`'s problem by bounded Levenberg-Marquardt on the normal equations (lawfit/gn.py), before the
    snap to bounds. Used from MANY_SOURCES on (#18)."""
    from .gn import solve_law

    return solve_law(theta0, form, prob, delta, ref, lo, hi, RIDGE)


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
    n = len(prob.logy)
    if n < 3:
        raise LawfitError(f"target '{target}': only {n} evaluation points; need at least 3 to fit")
    ref = reference_scale(prob) if ref is None else ref
    lo, hi = box(form, others, prob)
    law = form.at(*prob[:4], ref=ref)
    args = (form, prob, cfg.huber_delta, ref, False, law)
    starts = init if init is not None else _grid_starts(form, prob, others, ref)
    smart = None
    if init is None and len(others) >= MANY_SOURCES:
        from .starts import transfer_start  # lawfit/starts.py: why and how

        smart = transfer_start(form, prob, ref, cfg.huber_delta, _solve_gn, _grid_starts)
    n_starts = len(starts) + (smart is not None)
    starts = [np.clip(s, lo, hi) for s in starts]
    if len(starts) > N_REFINE:
        # Screening by the objective at the start is nearly free; the best few go to convergence.
        starts = sorted(starts, key=lambda s: _objective(s, *args)[0])[:N_REFINE]
    if smart is not None:
        starts = [np.clip(smart, lo, hi), *starts]
    # Many sources (#18): Levenberg-Marquardt on the normal equations (30-40x faster per solve than trf at
    # 32 domains); trf stays the solver below 7 domains (the demo, the coverage study).
    many = len(others) >= MANY_SOURCES
    solve = _solve_gn if many else _solve
    results = []
    for s in starts:
        x, ok = solve(s, form, prob, cfg.huber_delta, ref, lo, hi)
        results.append((_objective(x, *args)[0], x, ok))
        # Each solve costs ~m^3 per step: stop once two starts (the linear-algebra start and the best grid
        # start) agree on the optimum; they rarely disagree, and then all starts run.
        if smart is not None and len(results) == 2 and _agree(results):
            break
    fun, x, ok = min(results, key=lambda r: r[0])
    logL, _ = law(x, False)
    rmse = float(np.sqrt(np.mean((logL - prob.logy) ** 2)))
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


def job_target(form_name, ds, i, cfg, rows=None, init=None, ref=None):
    return fit_target(FORMS[form_name], ds, i, cfg, rows=rows, init=init, ref=ref)


def candidate_forms(ds: Dataset, cfg: FitConfig) -> tuple[list[str], list[str]]:
    notes = []
    if cfg.forms:
        return list(cfg.forms), notes
    forms = ["no_transfer", "transfer", "interference"]
    if np.any(ds.D > ds.U):
        forms.append("transfer_repetition")
    else:
        notes.append(
            "no run saw more samples of a domain than its unique data: the repetition form is not "
            "identifiable and was not fitted"
        )
    m = len(ds.domains)
    n_runs = len(np.unique(ds.run))
    if m >= 3 and n_runs < 2 * m:
        # Fewer runs than the full transfer form needs (lawfit plan's rule: 2 + 2(m - 1)): the rank-one
        # transfer matrix, 2m numbers instead of m (m - 1), competes too.
        forms.append("transfer_lowrank")
        notes.append(f"{n_runs} runs for {m} domains (< 2m): the low-rank transfer form was added")
    return forms, notes


def fit_forms(ds: Dataset, cfg: FitConfig) -> tuple[dict[str, FormFit], list[str]]:
    forms, notes = candidate_forms(ds, cfg)
    m = len(ds.domains)
    jobs = [(f, ds, i, cfg) for f in forms if not FORMS[f].joint for i in range(m)]
    res = map_jobs(job_target, jobs, cfg, "fit")
    fits = {f: FormFit(f, {}) for f in forms}
    for (f, _, i, _), tf in zip(jobs, res):
        fits[f].targets[ds.domains[i]] = tf
    for f in forms:
        if FORMS[f].joint:
            from .lowrank import fit_lowrank  # it builds on this module

            fits[f].targets, fits[f].joint = fit_lowrank(ds, cfg)
    return fits, notes
