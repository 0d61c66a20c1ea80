"""From runs to `Laws`: fit every candidate form, choose by held-out error, bootstrap the winner."""

from __future__ import annotations

import sys
import time

import numpy as np

from .bootstrap import METHOD_TEXT, bootstrap, fitted_curves, noise_model
from .dataset import Dataset
from .fit import FitConfig, FormFit, fit_forms
from .forms import FORMS
from .identify import identifiability, noise_summary
from .intervals import interval
from .lawsfile import Laws
from .select import cross_validate


def _log(cfg: FitConfig, msg: str) -> None:
    if cfg.progress:
        print(f"lawfit: {msg}", file=sys.stderr, flush=True)


def _say_selection(cfg: FitConfig, sel: dict, fits: dict[str, FormFit]) -> None:
    scored = {f: ff.cv_rmse_log for f, ff in fits.items() if ff.cv_rmse_log is not None}
    line = "form held-out RMSE(log loss): " + ", ".join(f"{f}={v:.4f}" for f, v in scored.items())
    mg = sel.get("margin")
    if mg:
        iv = mg.get("interval")
        ivs = f" [{iv[0]:+.4f}, {iv[1]:+.4f}]" if iv else ""
        line += f" -> {sel['winner']} (margin over {mg['runner_up']}: {mg['value']:+.4f}{ivs})"
    _log(cfg, line)
    _log(cfg, f"folds: {sel['method']}")


def _say_identifiability(cfg: FitConfig, ident: dict) -> None:
    for d, r in ident.items():
        if r["ok"]:
            continue
        _log(cfg, f"warning: target '{d}' is not fully identified: " + "; ".join(r["problems"]))
        _log(cfg, f"  would fix it: {'; '.join(r['suggest'])}")


def fit_laws(ds: Dataset, cfg: FitConfig | None = None) -> Laws:
    cfg = cfg or FitConfig()
    t0 = time.perf_counter()
    _log(cfg, f"{ds.n_runs} runs, {len(ds.y)} evaluation points, {len(ds.domains)} domains")
    fits, notes = fit_forms(ds, cfg)
    sel = cross_validate(ds, fits, cfg) if len(fits) > 1 else {"method": "one candidate form"}
    winner = sel.get("winner") or ("transfer" if "transfer" in fits else next(iter(fits)))
    _say_selection(cfg, {**sel, "winner": winner}, fits)
    ff = fits[winner]
    ident = identifiability(ds, ff)
    _say_identifiability(cfg, ident)
    logfit, resid, jacs = fitted_curves(ds, ff)
    sigmas = noise_model(ds, resid, jacs)  # the noise read-out, and the parametric bootstrap's model
    noise = noise_summary(ds, *sigmas)
    t_fit = time.perf_counter() - t0
    samples = bootstrap(ds, ff, cfg, model=(logfit, *sigmas))
    laws = Laws(
        form=winner,
        domains=list(ds.domains),
        targets={d: tf.law for d, tf in ff.targets.items()},
        unique_samples=dict(ds.unique_samples),
        seconds_per_sample=dict(ds.seconds_per_sample),
        alternatives={f: {d: tf.law for d, tf in x.targets.items()} for f, x in fits.items() if f != winner},
    )
    laws.fit = {
        "objective": f"mean Huber(delta={cfg.huber_delta}) of (log(predicted) - log(observed)) / relative "
        "noise of the point (its measured standard error over the target's median; 1 without one)",
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
            **sel,
            "winner": winner,
            "candidates": list(fits),
            "cv_rmse_log": {f: x.cv_rmse_log for f, x in fits.items() if x.cv_rmse_log is not None},
            "cv_rmse_log_per_target": {f: x.cv_per_target for f, x in fits.items()},
            "descriptions": {f: FORMS[f].description for f in fits},
        },
        "identifiability": ident,
        "noise": noise,
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

        entry = {p: iv([getattr(x, p) for x in laws_b], getattr(est, p)) for p in ("E", "A", "alpha", "d0")}
        if form.transfer:
            entry["transfer"] = {
                j: {
                    "k": iv([x.transfer[j].k for x in laws_b], est.transfer[j].k),
                    "gamma": iv([x.transfer[j].gamma for x in laws_b], est.transfer[j].gamma),
                }
                for j in others
            }
        if form.interference:
            entry["interference"] = {
                j: iv([x.interference[j] for x in laws_b], est.interference[j]) for j in others
            }
            entry["dbar"] = iv([x.dbar for x in laws_b], est.dbar)
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
