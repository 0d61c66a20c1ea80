"""`lawfit validate`: fit on the early part of every run, predict the rest, and score the predictions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.stats import pearsonr, spearmanr

from .dataset import Dataset
from .errors import LawfitError
from .fit import FitConfig
from .study import fit_laws


def scores(pred: np.ndarray, obs: np.ndarray) -> dict:
    n = len(obs)
    out = {"n": int(n), "mape": float(np.mean(np.abs(pred - obs) / obs)) if n else None}
    if n >= 3 and np.ptp(obs) > 0 and np.ptp(pred) > 0:
        out["pearson_r"] = float(pearsonr(pred, obs)[0])
        out["spearman_rho"] = float(spearmanr(pred, obs)[0])
    else:
        out["pearson_r"] = out["spearman_rho"] = None
    return out


def validate(ds: Dataset, fit_max_samples: float, cfg: FitConfig | None = None) -> dict:
    if not fit_max_samples > 0:
        raise LawfitError(f"--fit-max-samples must be positive, got {fit_max_samples}")
    cfg = replace(cfg or FitConfig(), bootstrap=0)
    total = ds.D.sum(axis=1)
    early, late = total <= fit_max_samples, total > fit_max_samples
    if not late.any():
        raise LawfitError(
            f"no evaluation point has seen more than {fit_max_samples:g} samples: nothing to predict"
        )
    if early.sum() < 3:
        raise LawfitError(
            f"only {int(early.sum())} evaluation points at or below {fit_max_samples:g} samples: "
            "too few to fit"
        )
    laws = fit_laws(ds.subset(np.flatnonzero(early)), cfg)
    held = ds.subset(np.flatnonzero(late))
    P = laws.predict(held.D)
    per, allp, allo = {}, [], []
    for c, d in enumerate(ds.domains):
        ok = np.isfinite(held.y[:, c])
        per[d] = scores(P[ok, c], held.y[ok, c])
        allp.append(P[ok, c])
        allo.append(held.y[ok, c])
    return {
        "fit_max_samples": fit_max_samples,
        "form": laws.form,
        "n_fit_points": int(early.sum()),
        "n_predicted_points": int(late.sum()),
        "per_domain": per,
        "overall": scores(np.concatenate(allp), np.concatenate(allo)),
        "max_extrapolation": float(total.max() / fit_max_samples),
    }


def format_table(res: dict) -> str:
    rows = [("domain", "n", "pearson r", "spearman rho", "MAPE")]
    fmt = lambda v, p: "-" if v is None else f"{v:{p}}"
    for d, s in list(res["per_domain"].items()) + [("overall", res["overall"])]:
        rows.append(
            (
                d,
                str(s["n"]),
                fmt(s["pearson_r"], ".4f"),
                fmt(s["spearman_rho"], ".4f"),
                fmt(None if s["mape"] is None else 100 * s["mape"], ".2f")
                + ("%" if s["mape"] is not None else ""),
            )
        )
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    head = (
        f"fit on points <= {res['fit_max_samples']:g} samples ({res['n_fit_points']} points, form "
        f"{res['form']}); predicted {res['n_predicted_points']} later points, up to "
        f"{res['max_extrapolation']:.1f}x further"
    )
    return head + "\n" + "\n".join(lines)
