"""Choosing the law form: held-out error over mixture runs, per target and pooled, and the winner's margin
with its uncertainty.

Folds. A single-domain pilot is the only run that shows a target's own law; held out, no form can predict
that target from the rest, and CV measured exactly that (docs/notes/law_study_2026-11-28.md, Q1: with six
runs the transfer form lost 0.40-0.49 on held-out pilots and won on the mixtures). So every single-domain
run stays in training and only mixtures are held out: each mixture on its own (leave-one-mixture-out) up
to MAX_LOMO of them, `cfg.cv_folds` folds over the mixtures beyond. Without any mixture the folds fall
back to all runs (and the selection says so).

Margin. The runner-up's CV RMSE minus the winner's; its interval comes from resampling the held-out runs
with replacement (the unit that carries correlated errors), both forms scored on the same draw.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .errors import LawfitError
from .fit import FitConfig, FormFit, _problem, job_target
from .forms import FORMS
from .parallel import map_jobs

MAX_LOMO = 16
MARGIN_DRAWS = 2000


def single_domain_runs(ds: Dataset) -> np.ndarray:
    """Indices of the runs that saw (at most) one domain."""
    out = []
    for r in range(ds.n_runs):
        rows = ds.run == r
        if rows.any() and int((ds.D[rows] > 0).any(axis=0).sum()) <= 1:
            out.append(r)
    return np.asarray(out, dtype=np.int64)


def cv_folds(ds: Dataset, cfg: FitConfig) -> tuple[list[np.ndarray], str]:
    """Held-out run sets and a sentence saying how they were made."""
    present = np.unique(ds.run)  # a subset (validate's early points) may lack some runs
    singles = single_domain_runs(ds)
    mixes = np.setdiff1d(present, singles)
    rng = np.random.default_rng(cfg.seed)
    if len(mixes) == 0:
        k = min(cfg.cv_folds, len(present))
        perm = rng.permutation(present)
        return [perm[a::k] for a in range(k)], (
            f"{k}-fold over all {len(present)} runs (no mixture run: single-domain pilots held out too, so "
            "the CV error includes predicting a domain without its own pilot)"
        )
    if len(mixes) <= MAX_LOMO:
        return [np.array([r]) for r in mixes], (
            f"leave-one-mixture-out over {len(mixes)} mixture runs; the {len(singles)} single-domain "
            "pilots always in training"
        )
    k = cfg.cv_folds
    perm = rng.permutation(mixes)
    return [perm[a::k] for a in range(k)], (
        f"{k}-fold over {len(mixes)} mixture runs; the {len(singles)} single-domain pilots always in training"
    )


def _scores(ds: Dataset, fits: dict[str, FormFit], folds, cfg: FitConfig):
    """Squared held-out errors: {(form, domain): {run: [sq, ...]}}. A jointly fitted form (lawfit/lowrank.py)
    is refitted as a whole on each fold's training runs; the others target by target, in parallel."""
    jobs, meta = [], []
    for f, ff in fits.items():
        if FORMS[f].joint:
            continue
        for a, held in enumerate(folds):
            train = np.flatnonzero(~np.isin(ds.run, held))
            for i, d in enumerate(ds.domains):
                if len(np.intersect1d(ds.target_points(i), train)) < 3:
                    continue
                jobs.append((f, ds, i, cfg, train, [ff.targets[d].theta], ff.targets[d].ref))
                meta.append((f, a, i))
    res = map_jobs(job_target, jobs, cfg, "cross-validate")
    for f, ff in fits.items():
        if not FORMS[f].joint:
            continue
        from .lowrank import fit_lowrank

        for a, held in enumerate(folds):
            try:
                tfs, _ = fit_lowrank(ds, cfg, rows=np.flatnonzero(~np.isin(ds.run, held)), init=ff.joint)
            except LawfitError:  # a target without 3 training points: this fold cannot score the form
                continue
            res += [tfs[d] for d in ds.domains]
            meta += [(f, a, i) for i in range(len(ds.domains))]
    sq: dict[tuple[str, str], dict[int, list[float]]] = {}
    for (f, a, i), tf in zip(meta, res):
        test = np.flatnonzero(np.isin(ds.run, folds[a]))
        prob = _problem(ds, i, test)
        if len(prob.logy) == 0:
            continue
        logL, _ = FORMS[f].evaluate(tf.theta, *prob[:4], jac=False, ref=tf.ref)
        runs = ds.run[test[np.isfinite(ds.y[test, i])]]
        per = sq.setdefault((f, ds.domains[i]), {})
        for r, e in zip(runs, (logL - prob.logy) ** 2):
            per.setdefault(int(r), []).append(float(e))
    return sq


def _pooled(sq, form: str, domains: list[str]) -> dict[int, tuple[float, int]]:
    """Per held-out run: (sum of squared errors, count) over every target."""
    out: dict[int, list[float]] = {}
    for d in domains:
        for r, v in sq.get((form, d), {}).items():
            acc = out.setdefault(r, [0.0, 0])
            acc[0] += sum(v)
            acc[1] += len(v)
    return {r: (s, n) for r, (s, n) in out.items()}


def _margin(pooled: dict[str, dict], winner: str, runner: str, cfg: FitConfig) -> dict:
    runs = sorted(set(pooled[winner]) & set(pooled[runner]))
    w = np.array([pooled[winner][r] for r in runs])
    u = np.array([pooled[runner][r] for r in runs])

    def rmse(a, idx):
        return np.sqrt(a[idx, 0].sum(axis=-1) / np.maximum(a[idx, 1].sum(axis=-1), 1))

    all_idx = np.arange(len(runs))
    value = float(rmse(u, all_idx) - rmse(w, all_idx))
    out = {
        "runner_up": runner,
        "value": value,
        "relative": value / float(rmse(u, all_idx)) if rmse(u, all_idx) > 0 else None,
        "held_out_runs": len(runs),
        "interval": None,
        "definition": "CV RMSE(log loss) of the runner-up minus the winner's (> 0: the winner predicts "
        "held-out mixtures better); interval: held-out runs resampled with replacement "
        f"({MARGIN_DRAWS} draws), level {cfg.level}",
    }
    if len(runs) >= 2:
        idx = np.random.default_rng([cfg.seed, 7]).integers(0, len(runs), size=(MARGIN_DRAWS, len(runs)))
        draws = rmse(u, idx) - rmse(w, idx)
        q = (1 - cfg.level) / 2
        out["interval"] = [float(np.quantile(draws, q)), float(np.quantile(draws, 1 - q))]
        out["p_winner_better"] = float(np.mean(draws > 0))
    return out


def cross_validate(ds: Dataset, fits: dict[str, FormFit], cfg: FitConfig) -> dict:
    """Held-out error of every form, pooled and per target; fills each FormFit's cv fields and returns the
    selection (winner, margin, folds) for laws.json."""
    if len(np.unique(ds.run)) < 2:
        return {"method": "no held-out comparison possible (one run); default form", "folds": None}
    folds, how = cv_folds(ds, cfg)
    sq = _scores(ds, fits, folds, cfg)
    pooled = {f: _pooled(sq, f, ds.domains) for f in fits}
    for f, ff in fits.items():
        tot = sum(s for s, _ in pooled[f].values())
        n = sum(n for _, n in pooled[f].values())
        ff.cv_rmse_log = float(np.sqrt(tot / n)) if n else None
        ff.cv_per_target = {
            d: float(np.sqrt(np.mean([e for v in sq[(f, d)].values() for e in v])))
            for d in ds.domains
            if sq.get((f, d))
        }
    scored = {f: ff.cv_rmse_log for f, ff in fits.items() if ff.cv_rmse_log is not None}
    sel: dict = {
        "method": f"cross-validation, {how} (RMSE of log loss)",
        "folds": [f.tolist() for f in folds],
    }
    if not scored:
        return sel
    ranked = sorted(scored, key=scored.get)
    sel["winner"] = ranked[0]
    sel["per_target_winner"] = {
        d: min((f for f in fits if d in fits[f].cv_per_target), key=lambda f: fits[f].cv_per_target[d])
        for d in ds.domains
        if any(d in fits[f].cv_per_target for f in fits)
    }
    if len(ranked) > 1:
        sel["margin"] = _margin(pooled, ranked[0], ranked[1], cfg)
    return sel
