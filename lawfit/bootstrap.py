"""Uncertainty of a fitted form: refit every target on resampled data (docs/lawfit.md, "Uncertainty").

Two ways of drawing a resample (`FitConfig.bootstrap_method`):

* ``runs``: draw whole runs with replacement (a pairs/cluster bootstrap). It needs no model of the noise,
  but a resample changes the design: a given run is missing from about 35% of the resamples.
* ``wild``: keep the design and every run; multiply each run's residual vector (log observed - log
  fitted, all its points and all targets) by one random sign per run (a wild cluster bootstrap, Cameron,
  Gelbach & Miller 2008). Whole runs keep one sign, so correlation within a run is kept.
* ``parametric``: keep the design; draw new noise from the noise model the residuals estimate, one
  offset per run and domain (sigma_u, shared by the run's evaluations) plus independent noise per
  evaluation (sigma_e), both in log loss, added to the fitted curve.

docs/notes/coverage_study_2026-11-30.md measures how often the resulting intervals cover the truth.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .dataset import Dataset
from .fit import FitConfig, FormFit, _map, _problem, fit_target
from .laws import FORMS


def wild_residuals(ds: Dataset, ff: FormFit, d0: float) -> tuple[np.ndarray, np.ndarray]:
    """Fitted log loss (n, m) and scaled residuals (n, m) of every target (nan where not evaluated).

    Residuals of a least-squares-like fit are smaller than the errors by about sqrt((n - p) / n) (n points,
    p parameters of the target): they are scaled back by sqrt(n / (n - p)) so that a resample's noise has
    the data's size.
    """
    form = FORMS[ff.form]
    logfit = np.full(ds.y.shape, np.nan)
    resid = np.full(ds.y.shape, np.nan)
    for i, d in enumerate(ds.domains):
        pts = ds.target_points(i)
        tf = ff.targets[d]
        D_own, D_oth, U_own, U_oth, logy = _problem(ds, i)
        logL, _ = form.evaluate(tf.theta, D_own, D_oth, U_own, U_oth, d0, jac=False, ref=tf.ref)
        n, p = len(pts), len(tf.theta)
        scale = np.sqrt(n / (n - p)) if n > p else 1.0
        logfit[pts, i] = logL
        resid[pts, i] = scale * (logy - logL)
    return logfit, resid


def wild_resample(ds: Dataset, logfit: np.ndarray, resid: np.ndarray, rng: np.random.Generator) -> Dataset:
    """The dataset with y = fitted * exp(sign(run) * residual): one Rademacher sign per run."""
    signs = rng.choice(np.array([-1.0, 1.0]), size=ds.n_runs)
    y = np.exp(logfit + signs[ds.run][:, None] * resid)  # nan (not evaluated) stays nan
    return replace(ds, y=y)


def noise_model(ds: Dataset, logfit: np.ndarray, resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sigma_e (m,), sigma_u (m,): per-evaluation and per-run noise of every target, in log loss.

    Method of moments on the (scaled) residuals: sigma_e^2 from the spread within runs, sigma_u^2 = the
    variance of run means beyond what sigma_e^2 / n_run explains (>= 0). Residuals beyond 4 robust sigmas
    (1.4826 MAD) are clipped first, so that one broken evaluation, which the Huber fit discounts, does
    not inflate the noise of every resample.
    """
    m = len(ds.domains)
    sig_e, sig_u = np.zeros(m), np.zeros(m)
    for i in range(m):
        pts = ds.target_points(i)
        r, run = resid[pts, i], ds.run[pts]
        robust = 1.4826 * np.median(np.abs(r - np.median(r)))
        if robust > 0:
            r = np.clip(r, -4 * robust, 4 * robust)
        runs, inv, cnt = np.unique(run, return_inverse=True, return_counts=True)
        means = np.bincount(inv, weights=r) / cnt
        within = np.sum((r - means[inv]) ** 2)
        dof = len(r) - len(runs)
        se2 = within / dof if dof > 0 else float(np.mean(r**2))
        su2 = max(0.0, float(np.mean(means**2 - se2 / cnt)))
        sig_e[i], sig_u[i] = np.sqrt(se2), np.sqrt(su2)
    return sig_e, sig_u


def parametric_resample(
    ds: Dataset, logfit: np.ndarray, sig_e: np.ndarray, sig_u: np.ndarray, rng: np.random.Generator
) -> Dataset:
    """The dataset with y = fitted * exp(u[run] + e): new noise from the estimated model."""
    e = rng.standard_normal(ds.y.shape) * sig_e
    u = rng.standard_normal((ds.n_runs, len(ds.domains))) * sig_u
    y = np.exp(logfit + u[ds.run] + e)  # nan (not evaluated) stays nan
    return replace(ds, y=y)


def _resample(ds: Dataset, method: str, model, rng: np.random.Generator) -> Dataset:
    if method == "runs":
        return ds.resample_runs(rng)
    if method == "wild":
        return wild_resample(ds, *model, rng)
    return parametric_resample(ds, *model, rng)


def _job_boot(form_name, ds, cfg, b, thetas, refs, model):
    rng = np.random.default_rng([cfg.seed, 1 + b])
    sample = _resample(ds, cfg.bootstrap_method, model, rng)
    form = FORMS[form_name]
    out = []
    for i, d in enumerate(ds.domains):
        if len(sample.target_points(i)) < 3:
            out.append(None)  # this resample lacks the target: no estimate from it
            continue
        tf = fit_target(form, sample, i, cfg, init=[thetas[i]], ref=refs[i])
        out.append(form.pack(tf.law, [o for o in ds.domains if o != d]))  # natural parameters (R = 1)
    return out


def bootstrap(ds: Dataset, ff: FormFit, cfg: FitConfig) -> dict[str, np.ndarray]:
    """Natural parameter vectors of the chosen form refitted on `cfg.bootstrap` resamples."""
    if cfg.bootstrap == 0:
        return {}
    thetas = [ff.targets[d].theta for d in ds.domains]
    refs = [ff.targets[d].ref for d in ds.domains]
    model = None
    if cfg.bootstrap_method != "runs":
        logfit, resid = wild_residuals(ds, ff, cfg.d0)
        model = (
            (logfit, resid) if cfg.bootstrap_method == "wild" else (logfit, *noise_model(ds, logfit, resid))
        )
    jobs = [(ff.form, ds, cfg, b, thetas, refs, model) for b in range(cfg.bootstrap)]
    res = _map(_job_boot, jobs, cfg, "bootstrap")
    return {d: np.asarray([r[i] for r in res if r[i] is not None]) for i, d in enumerate(ds.domains)}


METHOD_TEXT = {
    "runs": "bootstrap over runs (resampled with replacement), each target refitted",
    "wild": "wild cluster bootstrap (design kept; each run's residuals times one random sign), each target "
    "refitted",
    "parametric": "parametric bootstrap (design kept; new per-run and per-evaluation noise of the size the "
    "residuals show), each target refitted",
}
