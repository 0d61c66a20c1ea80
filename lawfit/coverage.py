"""How often do lawfit's intervals cover the truth? One simulated trial: known laws, a pilot design, noisy
run logs, the fit and its bootstrap, and for every quantity whether its interval holds the true value.

Used by `scripts/coverage_study.py` (many trials, docs/notes/coverage_study_2026-11-30.md) and by the
coverage test in tests/lawfit, so that the study and the test measure the same thing.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace

import numpy as np

from .bootstrap import bootstrap
from .dataset import build_dataset, load_runs
from .errors import LawfitError
from .fit import BOOTSTRAP_METHODS, FitConfig, fit_forms
from .intervals import interval
from .lawsfile import unpack_samples
from .simulate import default_design, random_laws, simulate_runs

PRED_SCALES = (1.0, 4.0, 10.0)
GROUPS = ("E", "A", "alpha", "k_pos", "k_zero", "gamma", "pred_1x", "pred_4x", "pred_10x")
"""k_zero: pairs with true k = 0 (a boundary value); gamma only where the true k > 0 (else not
identified); pred_Sx: predicted loss of every domain at S times the per-run budget, uniform and random
mixture."""


@dataclass(frozen=True, kw_only=True)
class CoverageDesign:
    m: int = 5
    """Domains."""
    budget_per_run: int = 20000
    n_mixtures: int = 10
    """Random fitting mixtures (plus one single-domain run per domain and two held-out mixtures)."""
    n_evals: int = 10
    noise: float = 0.01
    """Lognormal sigma of each evaluation."""
    run_noise: float = 0.0
    """Lognormal sigma of one offset per run and domain, shared by the run's evaluations."""
    bootstrap: int = 100
    level: float = 0.9

    def __post_init__(self):
        if self.m < 2:
            raise LawfitError(f"m must be >= 2, got {self.m}")
        if self.bootstrap < 2:
            raise LawfitError(f"bootstrap must be >= 2, got {self.bootstrap}")
        if not 0 < self.level < 1:
            raise LawfitError(f"level must be in (0, 1), got {self.level}")

    def to_json(self) -> dict:
        return asdict(self)


# The conditions of docs/notes/coverage_study_2026-11-30.md, fixed before any result was seen. `test` is the
# design tests/lawfit/test_coverage.py runs (its coverage measured in the study over other seeds).
CONDITIONS = {
    "iid": CoverageDesign(m=5, n_mixtures=10, n_evals=10, noise=0.01),
    "run_correlated": CoverageDesign(m=5, n_mixtures=10, n_evals=10, noise=0.005, run_noise=0.01),
    "test": CoverageDesign(m=2, n_mixtures=4, n_evals=8, noise=0.01),
}
TEST_DESIGN = CONDITIONS["test"]


def _covered(lo, hi, truth) -> np.ndarray:
    return (np.asarray(lo) <= truth) & (truth <= np.asarray(hi))


def coverage_trial(
    design: CoverageDesign,
    seed: int,
    methods: tuple[str, ...] = BOOTSTRAP_METHODS,
    rules: tuple[str, ...] = ("weibull",),
) -> list[dict]:
    """One trial: a row per (method, quantile rule) with, per group, [covered, count, median relative
    width], and two single indicators (`probes`) that the coverage test counts over trials."""
    truth = random_laws(design.m, seed)
    with tempfile.TemporaryDirectory() as tmp:
        plan = default_design(
            truth,
            budget_per_run=design.budget_per_run,
            n_mixtures=design.n_mixtures,
            n_evals=design.n_evals,
            seed=seed,
        )
        simulate_runs(truth, plan, tmp, noise=design.noise, run_noise=design.run_noise, seed=seed)
        ds = build_dataset(load_runs([tmp]))
    base = FitConfig(forms=("transfer",), bootstrap=design.bootstrap, workers=1, progress=False, seed=seed)
    ff = fit_forms(ds, base)[0]["transfer"]
    doms = truth.domains
    rng = np.random.default_rng([seed, 7])
    mixes = np.stack([np.full(design.m, 1.0 / design.m), rng.dirichlet(np.ones(design.m))])
    points = {s: s * design.budget_per_run * mixes for s in PRED_SCALES}
    true_pred = {s: truth.predict(D) for s, D in points.items()}
    point = {d: ff.targets[d].law for d in doms}  # the estimate, which the BC interval needs
    est_pred = {s: truth.predict(D, point) for s, D in points.items()}
    rows = []
    for method in methods:
        cfg = replace(base, bootstrap_method=method)
        samples = bootstrap(ds, ff, cfg)
        boots = unpack_samples("transfer", doms, samples)
        n = len(boots)
        preds = {s: np.stack([truth.predict(D, t) for t in boots]) for s, D in points.items()}
        for rule in rules:
            acc: dict[str, list[tuple[bool, float]]] = {g: [] for g in GROUPS}

            def add(group, draws, true, est, acc=acc, rule=rule):
                lo, hi = interval(draws, design.level, rule, estimate=est)
                width = (hi - lo) / abs(true) if true != 0 else hi - lo
                acc[group].append((bool(_covered(lo, hi, true)), float(width)))

            for d in doms:
                t = truth.targets[d]
                b_laws = [bt[d] for bt in boots]
                for p in ("E", "A", "alpha"):
                    add(p, [getattr(x, p) for x in b_laws], getattr(t, p), getattr(point[d], p))
                for j, tt in t.transfer.items():
                    ks = [x.transfer[j].k for x in b_laws]
                    add("k_pos" if tt.k > 0 else "k_zero", ks, tt.k, point[d].transfer[j].k)
                    if tt.k > 0:
                        gs = [x.transfer[j].gamma for x in b_laws]
                        add("gamma", gs, tt.gamma, point[d].transfer[j].gamma)
            for s in PRED_SCALES:
                lo, hi = interval(preds[s], design.level, rule, estimate=est_pred[s], axis=0)
                cov = _covered(lo, hi, true_pred[s])
                width = (hi - lo) / true_pred[s]
                acc[f"pred_{s:g}x"].extend(zip(cov.ravel().tolist(), width.ravel().tolist()))
            # One indicator per trial each: independent over trials, so their count is binomial.
            alphas = [bt[doms[0]].alpha for bt in boots]
            a_lo, a_hi = interval(alphas, design.level, rule, estimate=point[doms[0]].alpha)
            lo4, hi4 = interval(preds[4.0][:, 0, 0], design.level, rule, estimate=est_pred[4.0][0, 0])
            probes = {
                "alpha_d0": bool(_covered(a_lo, a_hi, truth.targets[doms[0]].alpha)),
                "pred_4x_uniform_d0": bool(_covered(lo4, hi4, true_pred[4.0][0, 0])),
            }
            rows.append(
                {
                    "seed": seed,
                    "method": method,
                    "rule": rule,
                    "n_boot": n,
                    "groups": {
                        g: [sum(c for c, _ in v), len(v), float(np.median([w for _, w in v]))]
                        for g, v in acc.items()
                        if v
                    },
                    "probes": probes,
                }
            )
    return rows
