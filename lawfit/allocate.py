"""`lawfit allocate`: the mixture that minimizes the weighted predicted loss at a budget, with baselines.

Variables are budget shares x_j = c_j D_j / B (c_j = 1 for a sample budget, seconds per sample for a time
budget), so the budget is one linear equality sum x = 1, caps and floors are bounds, and the problem is
solved by SLSQP from many starts (proportional, uniform, each vertex, random points). The best solution's
Karush-Kuhn-Tucker conditions are checked and reported: free shares share one marginal value lambda, shares
at their floor have a marginal value >= lambda, at their cap <= lambda.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize

from voxmix.formats.allocation import FORMAT, MAX_SAMPLES

from .errors import LawfitError
from .hubs import hub_analysis
from .laws import TargetLaw
from .lawsfile import Laws
from .simplex import spg

SPG_FROM = 8  # above 8 domains starts go to the projected-gradient solver, and only its best to SLSQP
SPG_STARTS = 4  # uniform, proportional and the 2 best screened starts


@dataclass(frozen=True, kw_only=True)
class Budget:
    samples: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if (self.samples is None) == (self.seconds is None):
            raise LawfitError("give exactly one budget: --budget-samples or --budget-hours")
        # Checked before any work: a budget beyond MAX_SAMPLES overflowed int64 (1e19 "bought no whole
        # sample") or exhausted memory downstream (1e14); see voxmix.formats.allocation.MAX_SAMPLES.
        n = self.samples
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0):
            raise LawfitError(f"--budget-samples must be a positive integer, got {n!r}")
        if n is not None and n > MAX_SAMPLES:
            raise LawfitError(
                f"--budget-samples {n} exceeds the maximum of {MAX_SAMPLES} samples an allocation may "
                "hold (voxmix.formats.allocation.MAX_SAMPLES: the trainer keeps its whole sample sequence "
                "in memory)"
            )
        if self.seconds is not None and not (np.isfinite(self.seconds) and self.seconds > 0):
            raise LawfitError(f"--budget-hours must be a positive finite number, got {self.seconds / 3600}")


@dataclass
class Problem:
    laws: Laws
    c: np.ndarray  # cost of one sample of each domain, in budget units
    B: float  # budget in its units
    lo: np.ndarray  # share floors
    hi: np.ndarray  # share caps
    w: np.ndarray  # objective weights per target

    def D(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0) * self.B / self.c

    def value_grad(self, x: np.ndarray, targets: dict[str, TargetLaw] | None = None):
        L, G = self.laws.value_grad(self.D(x), targets)
        return float(self.w @ L), (self.w @ G) * self.B / self.c


def _costs(laws: Laws, budget: Budget) -> tuple[np.ndarray, float]:
    """Cost of one sample of each domain in budget units, and the budget in those units."""
    doms = laws.domains
    if budget.samples is not None:
        return np.ones(len(doms)), float(budget.samples)
    missing = [d for d in doms if d not in laws.seconds_per_sample]
    if missing:
        raise LawfitError(
            f"--budget-hours needs each domain's measured seconds per sample; the runs had no "
            f"throughput for {missing} (use --budget-samples, or log throughput events)"
        )
    c = np.array([laws.seconds_per_sample[d] for d in doms])
    most = float(budget.seconds) / float(c.min())  # samples if all went to the cheapest domain
    if most > MAX_SAMPLES:
        d = doms[int(c.argmin())]
        raise LawfitError(
            f"--budget-hours {budget.seconds / 3600:g} buys up to {most:.3g} samples (domain '{d}' at "
            f"{c.min():g} s/sample), more than the maximum of {MAX_SAMPLES} an allocation may hold "
            "(voxmix.formats.allocation.MAX_SAMPLES); lower the budget"
        )
    return c, float(budget.seconds)


def _objective_weights(doms: list[str], weights: dict[str, float] | None) -> np.ndarray:
    w = np.ones(len(doms))
    for d, v in (weights or {}).items():
        if d not in doms:
            raise LawfitError(f"--weights {d}={v}: unknown domain '{d}' (laws have {doms})")
        if not (np.isfinite(v) and v >= 0):
            raise LawfitError(f"--weights {d}={v}: weights must be finite and >= 0")
        w[doms.index(d)] = v
    if not w.sum() > 0:
        raise LawfitError("--weights: at least one weight must be positive")
    return w


def _share_caps(laws: Laws, c: np.ndarray, B: float, max_epochs: float | None) -> np.ndarray:
    """Share caps: a domain's unique data times max_epochs, in budget shares (1 without a cap)."""
    hi = np.ones(len(laws.domains))
    if max_epochs is None:
        return hi
    if not (np.isfinite(max_epochs) and max_epochs > 0):
        raise LawfitError(f"--max-epochs must be positive, got {max_epochs}")
    for j, d in enumerate(laws.domains):
        u = laws.unique_samples.get(d)
        if u is not None and np.isfinite(u):
            hi[j] = min(1.0, u * max_epochs * c[j] / B)
    return hi


def _check_feasible(
    laws: Laws, lo: np.ndarray, hi: np.ndarray, min_share: float, max_epochs: float | None
) -> None:
    doms = laws.domains
    bad = [d for j, d in enumerate(doms) if hi[j] < lo[j]]
    if bad:
        raise LawfitError(
            f"infeasible: the cap (unique data x --max-epochs) of {bad} is below the floor "
            f"--min-share {min_share}"
        )
    if lo.sum() > 1 + 1e-12:
        raise LawfitError(
            f"infeasible: --min-share {min_share} x {len(doms)} domains exceeds the whole budget"
        )
    if hi.sum() < 1 - 1e-9:
        caps = {d: int(laws.unique_samples.get(d, 0) * max_epochs) for d in doms}
        raise LawfitError(
            f"infeasible: the budget exceeds all domains' caps together (unique data x "
            f"--max-epochs {max_epochs}: {caps}); lower the budget or raise --max-epochs"
        )


def build_problem(
    laws: Laws,
    budget: Budget,
    *,
    weights: dict[str, float] | None = None,
    max_epochs: float | None = None,
    min_share: float = 0.0,
) -> Problem:
    c, B = _costs(laws, budget)
    w = _objective_weights(laws.domains, weights)
    if not (0 <= min_share < 1) or not np.isfinite(min_share):
        raise LawfitError(f"--min-share must be in [0, 1), got {min_share}")
    lo = np.full(len(laws.domains), float(min_share))
    hi = _share_caps(laws, c, B, max_epochs)
    _check_feasible(laws, lo, hi, min_share, max_epochs)
    return Problem(laws, c, B, lo, hi, w)


def _starts(p: Problem, n_random: int, seed: int) -> list[np.ndarray]:
    m = len(p.c)
    rng = np.random.default_rng(seed)
    pts = [np.full(m, 1.0 / m)]
    U = np.array([p.laws.unique_samples.get(d, np.nan) for d in p.laws.domains])
    if np.all(np.isfinite(U)):
        pts.append(U * p.c / (U * p.c).sum())
    for j in range(m):  # near each vertex
        v = np.full(m, 0.02 / max(m - 1, 1))
        v[j] = 0.98
        pts.append(v)
    pts += list(rng.dirichlet(np.ones(m), size=n_random))
    return [_project(x, p.lo, p.hi) for x in pts]


def _project(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {lo <= x <= hi, sum x = 1} by bisection on the shift."""
    a, b = (lo - x).min() - 1.0, (hi - x).max() + 1.0
    for _ in range(200):
        t = 0.5 * (a + b)
        if np.clip(x + t, lo, hi).sum() > 1:
            b = t
        else:
            a = t
    return np.clip(x + 0.5 * (a + b), lo, hi)


def solve(
    p: Problem,
    *,
    n_random: int = 16,
    n_solve: int = 8,
    seed: int = 0,
    targets: dict[str, TargetLaw] | None = None,
):
    """Minimize sum_i w_i L_i over the feasible shares; returns (x, value, kkt report, starts)."""
    m = len(p.c)
    fun = lambda x: p.value_grad(x, targets)
    cons = [{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones(m)}]
    best = None
    starts = _starts(p, n_random, seed)
    n_starts = len(starts)
    if len(starts) > n_solve:
        # Screening by objective is cheap; SLSQP runs from the most promising starts (and always from the
        # uniform and proportional mixes, first in the list).
        rest = sorted(starts[2:], key=lambda x: fun(x)[0])
        starts = starts[:2] + rest[: n_solve - 2]
    if m > SPG_FROM:
        # Many domains (#18): projected gradient (lawfit/simplex.py: cheap steps) from the first starts;
        # SLSQP (~0.6 s a run at 32 domains) only polishes the best, and only where it misses the KKT
        # conditions.
        x_pg = min((spg(fun, x0, p.lo, p.hi) for x0 in starts[:SPG_STARTS]), key=lambda r: r[1])[0]
        if kkt(p, x_pg, targets)["relative_violation"] < 1e-6:
            return x_pg, fun(x_pg)[0], kkt(p, x_pg, targets), n_starts
        starts = [x_pg]
    for x0 in starts:
        r = minimize(
            fun,
            x0,
            jac=True,
            method="SLSQP",
            bounds=list(zip(p.lo, p.hi)),
            constraints=cons,
            options={"maxiter": 500, "ftol": 1e-15},
        )
        x = _project(r.x, p.lo, p.hi)
        if m > SPG_FROM and fun(x0)[0] < fun(x)[0]:
            x = x0  # the polish did not improve on the projected-gradient optimum
        v = fun(x)[0]
        if best is None or v < best[1] - 1e-15:
            best = (x, v)
    x, v = best
    return x, v, kkt(p, x, targets), n_starts


def kkt(p: Problem, x: np.ndarray, targets=None, tol: float = 1e-6) -> dict:
    _, g = p.value_grad(x, targets)
    span = p.hi - p.lo
    at_lo = x <= p.lo + tol * np.maximum(span, 1e-12)
    at_hi = x >= p.hi - tol * np.maximum(span, 1e-12)
    free = ~(at_lo | at_hi)
    lam = float(np.median(g[free])) if free.any() else float(np.median(g))
    viol = np.zeros_like(g)
    viol[free] = np.abs(g[free] - lam)
    viol[at_lo & ~at_hi] = np.maximum(
        0.0, lam - g[at_lo & ~at_hi]
    )  # a floor share must not be cheaper to grow
    viol[at_hi & ~at_lo] = np.maximum(0.0, g[at_hi & ~at_lo] - lam)
    scale = max(abs(lam), float(np.abs(g).max()), 1e-300)
    return {
        "lambda": lam,
        "max_violation": float(viol.max()),
        "relative_violation": float(viol.max() / scale),
        "satisfied": bool(viol.max() / scale < 1e-4),
        "active": {
            d: ("floor" if lo_ else "cap" if hi_ else "free")
            for d, lo_, hi_ in zip(p.laws.domains, at_lo, at_hi)
        },
    }


def integer_samples(p: Problem, x: np.ndarray, total: int | None) -> np.ndarray:
    """Integer samples per domain; for a sample budget they sum to it exactly (largest remainders)."""
    D = p.D(x)
    if total is None:
        return np.floor(D + 1e-9).astype(np.int64)
    base = np.floor(D).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(D - base), kind="stable")
    base[order[:rest]] += 1
    return base


def _entry(p: Problem, samples: np.ndarray, targets=None) -> dict:
    total = max(int(samples.sum()), 1)
    L = p.laws.predict(samples.astype(np.float64)[None], targets)[0]
    return {
        "domains": {
            d: {"weight": float(n / total), "samples": int(n)} for d, n in zip(p.laws.domains, samples)
        },
        "predicted_loss": {d: float(v) for d, v in zip(p.laws.domains, L)},
        "objective": float(p.w @ L),
    }


def _fixed_shares(p: Problem, sample_shares: np.ndarray, total: int | None) -> np.ndarray:
    """Integer samples for a mixture given in sample shares, spending the budget (samples or seconds)."""
    s = sample_shares / sample_shares.sum()
    x = s * p.c / (s * p.c).sum()  # budget shares of that sample mix
    return integer_samples(p, x, total)


def allocate(
    laws: Laws,
    budget: Budget,
    *,
    weights: dict[str, float] | None = None,
    max_epochs: float | None = None,
    min_share: float = 0.0,
    seed: int = 0,
) -> dict:
    p = build_problem(laws, budget, weights=weights, max_epochs=max_epochs, min_share=min_share)
    doms = laws.domains
    x, value, kkt_report, n_starts = solve(p, seed=seed)
    total = budget.samples
    samples = integer_samples(p, x, total)
    n_total = int(samples.sum())
    if n_total <= 0:
        raise LawfitError("the budget buys no whole sample; raise the budget")
    E = np.array([laws.targets[d].E for d in doms])
    floor = float(p.w @ E)
    out = {
        "format": FORMAT,
        "budget": {"samples": n_total}
        if budget.samples is not None
        else {"seconds": float(budget.seconds), "samples": n_total},
        **_entry(p, samples),
    }
    out["objective"] = {
        "value": out.pop("objective"),
        "reducible": None,
        "weights": {d: float(v) for d, v in zip(doms, p.w)},
        "definition": "sum_i weight_i * predicted held-out loss_i; reducible = minus sum_i weight_i*E_i",
        "solver": f"SLSQP over budget shares from the best 8 of {n_starts} starts",
        "kkt": kkt_report,
    }
    out["objective"]["reducible"] = out["objective"]["value"] - floor
    out["constraints"] = {
        "max_epochs": max_epochs,
        "min_share": min_share,
        "caps_samples": {
            d: (None if p.hi[j] >= 1 else int(p.hi[j] * p.B / p.c[j])) for j, d in enumerate(doms)
        },
    }
    for d, n in zip(doms, samples):
        u = laws.unique_samples.get(d)
        if u:
            out["domains"][d]["epochs"] = float(n / u)
    # Baselines, all evaluated under the chosen (transfer-aware) laws.
    U = np.array([laws.unique_samples.get(d, np.nan) for d in doms])
    base: dict[str, np.ndarray] = {}
    if np.all(np.isfinite(U)):
        base["proportional"] = _fixed_shares(p, U, total)
    base["uniform"] = _fixed_shares(p, np.ones(len(doms)), total)
    nt = laws.alternatives.get("no_transfer") or {
        d: replace(t, transfer={}, interference={}, dbar=None) for d, t in laws.targets.items()
    }
    x_nt, *_ = solve(p, seed=seed, targets=nt)
    base["no_transfer_optimal"] = integer_samples(p, x_nt, total)
    boots = laws.bootstrap_targets()
    out["baselines"] = {}
    for name, s in base.items():
        e = _entry(p, s)
        fb, fa = e["objective"], out["objective"]["value"]
        e["improvement"] = {
            "raw": (fb - fa) / fb,
            "reducible": (fb - fa) / max(fb - floor, 1e-300),
            "definition": "(baseline - allocation) / baseline, on the weighted loss and on the "
            "weighted reducible loss (L - E)",
        }
        if boots:
            rel = []
            for t in boots:
                lb = p.w @ laws.predict(s.astype(float)[None], t)[0]
                la = p.w @ laws.predict(samples.astype(float)[None], t)[0]
                rel.append((lb - la) / lb)
            iv = laws.interval_of(rel, estimate=e["improvement"]["raw"])
            e["improvement"]["raw_interval"] = [float(v) for v in iv]
        out["baselines"][name] = e
    if boots:
        iv = laws.predict_interval(samples.astype(float)[None], boots=boots)
        out["predicted_loss_interval"] = {
            d: [float(iv[0][0, j]), float(iv[1][0, j])] for j, d in enumerate(doms)
        }
    at = base["proportional"] if "proportional" in base else base["uniform"]
    out["hubs"] = hub_analysis(laws, at.astype(float), budget_samples=n_total, boots=boots)
    out["laws"] = {"form": laws.form, "domains": doms}
    return out
