"""Uncertainty of a fitted form: refit every target on resampled data (docs/lawfit.md, "Uncertainty").

Two ways of drawing a resample (`FitConfig.bootstrap_method`):

* ``runs``: draw whole runs with replacement (a pairs/cluster bootstrap). It needs no model of the noise,
  but a resample changes the design: a given run is missing from about 35% of the resamples.
* ``parametric``: keep the design; draw new noise from the noise model the residuals estimate, one
  offset per run and domain (sigma_u, shared by the run's evaluations) plus independent noise per
  evaluation (sigma_e), both in log loss, added to the fitted curve (`noise_model`).

docs/notes/coverage_study_2026-11-30.md measures how often the resulting intervals cover the truth; a
third way measured there, a wild bootstrap flipping each run's residuals (commit d8bc271), covered far
too little (a run that alone identifies a parameter has almost no residual along it) and was removed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .dataset import Dataset
from .errors import LawfitError
from .fit import FitConfig, FormFit, _problem, box, fit_target
from .forms import FORMS
from .parallel import map_jobs


def fitted_curves(ds: Dataset, ff: FormFit):
    """Fitted log loss (n, m) and residuals log y - log fitted (n, m) of every target (nan where not
    evaluated), and per target the Jacobian d(log L)/d(theta) at its points over the parameters that are
    free (not on a bound): the directions along which the fit absorbs noise."""
    form = FORMS[ff.form]
    logfit = np.full(ds.y.shape, np.nan)
    resid = np.full(ds.y.shape, np.nan)
    jacs = []
    for i, d in enumerate(ds.domains):
        pts = ds.target_points(i)
        tf = ff.targets[d]
        prob = _problem(ds, i)
        logL, J = form.evaluate(tf.theta, *prob[:4], ref=tf.ref)
        lo, hi = box(form, [o for o in ds.domains if o != d], prob)
        logfit[pts, i] = logL
        resid[pts, i] = prob.logy - logL
        jacs.append(J[:, (tf.theta > lo) & (tf.theta < hi)])
    return logfit, resid, jacs


def noise_model(ds: Dataset, resid: np.ndarray, jacs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """sigma_e (m,), sigma_u (m,): per-evaluation and per-run noise of every target, in log loss.

    Unbiased moments of the residuals r = M eps, M = I - H the residual maker of the fit's free directions
    (H = J (J'J)^-1 J', the fit linearized at its optimum), under eps = u[run] + e:
        E[r'r]      = sigma_e^2 tr(M)    + sigma_u^2 tr(Z'MZ)
        E[|Z'r|^2] = sigma_e^2 tr(Z'MZ) + sigma_u^2 |Z'MZ|_F^2          (Z: point-to-run indicators)
    solved for both (sigma_u^2 >= 0). The fit absorbs part of every run's offset (a run that alone
    identifies a parameter keeps almost none of it), so plain within/between-run moments would read
    sigma_u far too small. Residuals beyond 4 robust sigmas (1.4826 MAD) are clipped first, so that one
    broken evaluation, which the Huber fit discounts, does not inflate every resample's noise.
    """
    m = len(ds.domains)
    sig_e, sig_u = np.zeros(m), np.zeros(m)
    for i in range(m):
        pts = ds.target_points(i)
        r, run = resid[pts, i], ds.run[pts]
        robust = 1.4826 * np.median(np.abs(r - np.median(r)))
        if robust > 0:
            r = np.clip(r, -4 * robust, 4 * robust)
        n = len(r)
        _, inv = np.unique(run, return_inverse=True)
        Z = np.zeros((n, inv.max() + 1))
        Z[np.arange(n), inv] = 1.0
        J = np.zeros((n, 0)) if jacs is None else jacs[i]
        Q = np.linalg.qr(J)[0] if J.shape[1] else np.zeros((n, 0))  # orthonormal basis of the fit's span
        MZ = Z - Q @ (Q.T @ Z)
        ZMZ = Z.T @ MZ
        a = np.array([[n - Q.shape[1], np.trace(ZMZ)], [np.trace(ZMZ), float(np.sum(ZMZ**2))]])
        q = np.array([r @ r, float(np.sum((Z.T @ r) ** 2))])
        se2, su2 = np.linalg.solve(a, q) if abs(np.linalg.det(a)) > 1e-12 * a[0, 0] * a[1, 1] else (0.0, -1.0)
        if su2 < 0:  # no run-level noise beyond chance: all of it per evaluation
            se2, su2 = q[0] / max(a[0, 0], 1.0), 0.0
        sig_e[i], sig_u[i] = np.sqrt(max(se2, 0.0)), np.sqrt(su2)
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
    return parametric_resample(ds, *model, rng)


def _job_boot(form_name, ds, cfg, b, thetas, refs, model, joint=None):
    rng = np.random.default_rng([cfg.seed, 1 + b])
    sample = _resample(ds, cfg.bootstrap_method, model, rng)
    form = FORMS[form_name]
    others = {d: [o for o in ds.domains if o != d] for d in ds.domains}
    if form.joint:  # refit over all targets at once (lawfit/lowrank.py)
        from .lowrank import fit_lowrank

        try:
            tfs, _ = fit_lowrank(sample, cfg, init=joint)
        except LawfitError:  # a target lacks points in this resample: no estimate from it
            return [None] * len(ds.domains)
        return [form.pack(tfs[d].law, others[d]) for d in ds.domains]
    out = []
    for i, d in enumerate(ds.domains):
        if len(sample.target_points(i)) < 3:
            out.append(None)  # this resample lacks the target: no estimate from it
            continue
        tf = fit_target(form, sample, i, cfg, init=[thetas[i]], ref=refs[i])
        out.append(form.pack(tf.law, others[d]))  # natural parameters (R = 1)
    return out


def bootstrap(ds: Dataset, ff: FormFit, cfg: FitConfig, model=None) -> dict[str, np.ndarray]:
    """Natural parameter vectors of the chosen form refitted on `cfg.bootstrap` resamples. `model`: the
    fit's (fitted log loss, sigma_e, sigma_u) when the caller has it (computed here otherwise, and used by
    the parametric resample only)."""
    if cfg.bootstrap == 0:
        return {}
    thetas = [ff.targets[d].theta for d in ds.domains]
    refs = [ff.targets[d].ref for d in ds.domains]
    if cfg.bootstrap_method != "parametric":
        model = None
    elif model is None:
        logfit, resid, jacs = fitted_curves(ds, ff)
        model = (logfit, *noise_model(ds, resid, jacs))
    jobs = [(ff.form, ds, cfg, b, thetas, refs, model, ff.joint) for b in range(cfg.bootstrap)]
    res = map_jobs(_job_boot, jobs, cfg, "bootstrap")
    return {d: np.asarray([r[i] for r in res if r[i] is not None]) for i, d in enumerate(ds.domains)}


METHOD_TEXT = {
    "runs": "bootstrap over runs (resampled with replacement), each target refitted",
    "parametric": "parametric bootstrap (design kept; new per-run and per-evaluation noise of the size the "
    "residuals show), each target refitted",
}
