"""From runs to `Laws`: fit every candidate form, choose by held-out error, bootstrap the winner."""

from __future__ import annotations

import sys
import time

import numpy as np

from .bootstrap import METHOD_TEXT, bootstrap
from .dataset import Dataset
from .fit import FitConfig, cross_validate, fit_forms
from .intervals import interval
from .laws import FORMS
from .lawsfile import Laws


def _log(cfg: FitConfig, msg: str) -> None:
    if cfg.progress:
        print(f"lawfit: {msg}", file=sys.stderr, flush=True)


def fit_laws(ds: Dataset, cfg: FitConfig | None = None) -> Laws:
    cfg = cfg or FitConfig()
    t0 = time.perf_counter()
    _log(cfg, f"{ds.n_runs} runs, {len(ds.y)} evaluation points, {len(ds.domains)} domains")
    fits, notes = fit_forms(ds, cfg)
    notes += cross_validate(ds, fits, cfg) if len(fits) > 1 else []
    scored = {f: ff.cv_rmse_log for f, ff in fits.items() if ff.cv_rmse_log is not None}
    if scored:
        winner = min(scored, key=scored.get)
        method = f"{min(cfg.cv_folds, ds.n_runs)}-fold cross-validation over runs (RMSE of log loss)"
    else:
        winner = "transfer" if "transfer" in fits else next(iter(fits))
        method = "no held-out comparison possible; default form"
    _log(
        cfg,
        "form held-out RMSE(log loss): "
        + ", ".join(f"{f}={v:.4f}" for f, v in scored.items())
        + f" -> {winner}",
    )
    ff = fits[winner]
    t_fit = time.perf_counter() - t0
    samples = bootstrap(ds, ff, cfg)
    laws = Laws(
        form=winner,
        domains=list(ds.domains),
        targets={d: tf.law for d, tf in ff.targets.items()},
        d0=cfg.d0,
        unique_samples=dict(ds.unique_samples),
        seconds_per_sample=dict(ds.seconds_per_sample),
        alternatives={f: {d: tf.law for d, tf in x.targets.items()} for f, x in fits.items() if f != winner},
    )
    laws.fit = {
        "objective": f"mean Huber(delta={cfg.huber_delta}) of log(predicted) - log(observed) loss",
        "optimizer": "trust-region reflective least squares (Huber loss) in float64 from a grid of starts "
        "(screened by objective, best 4 taken to convergence)",
        "huber_delta": cfg.huber_delta,
        "n_runs": ds.n_runs,
        "n_points": int(len(ds.y)),
        "runs": ds.run_ids,
        "per_target": {
            d: {
                "rmse_log": tf.rmse_log,
                "n_points": tf.n_points,
                "converged": tf.converged,
                "objective": tf.objective,
                "starts": tf.starts,
            }
            for d, tf in ff.targets.items()
        },
        "selection": {
            "method": method,
            "winner": winner,
            "candidates": list(fits),
            "cv_rmse_log": scored,
            "cv_rmse_log_per_target": {f: x.cv_per_target for f, x in fits.items()},
            "descriptions": {f: FORMS[f].description for f in fits},
        },
        "seconds": round(t_fit, 3),
        "warnings": ds.warnings,
        "notes": notes,
        # The points fitted, so that `lawfit report` can draw them without the run logs.
        "data": {
            "run_ids": ds.run_ids,
            "run": ds.run.tolist(),
            "samples_seen": ds.D.tolist(),
            "loss": [[None if not np.isfinite(v) else float(v) for v in row] for row in ds.y],
        },
    }
    if samples:
        laws.uncertainty = _summarize(laws, samples, cfg)
    _log(cfg, f"done in {time.perf_counter() - t0:.1f} s")
    return laws


def _summarize(laws: Laws, samples: dict[str, np.ndarray], cfg: FitConfig) -> dict:
    form = FORMS[laws.form]
    intervals = {}
    for d in laws.domains:
        others = [o for o in laws.domains if o != d]
        laws_b = [form.unpack(th, d, others) for th in samples[d]]
        est = laws.targets[d]

        def iv(vals, estimate):
            return [float(v) for v in interval(vals, cfg.level, cfg.interval, estimate=estimate)]

        entry = {p: iv([getattr(x, p) for x in laws_b], getattr(est, p)) for p in ("E", "A", "alpha")}
        if form.transfer:
            entry["transfer"] = {
                j: {
                    "k": iv([x.transfer[j].k for x in laws_b], est.transfer[j].k),
                    "gamma": iv([x.transfer[j].gamma for x in laws_b], est.transfer[j].gamma),
                }
                for j in others
            }
        if form.repetition:
            entry["r_star"] = iv([x.r_star for x in laws_b], est.r_star)
        intervals[d] = entry
    return {
        "method": METHOD_TEXT[cfg.bootstrap_method],
        "resample": cfg.bootstrap_method,
        "interval": cfg.interval,
        "n": cfg.bootstrap,
        "level": cfg.level,
        "seed": cfg.seed,
        "intervals": intervals,
        "param_names": {d: form.param_names([o for o in laws.domains if o != d]) for d in laws.domains},
        "samples": {d: np.round(samples[d], 10).tolist() for d in laws.domains},
    }
