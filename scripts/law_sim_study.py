"""Do lawfit's laws predict and allocate well when the truth is NOT of their family?
(docs/notes/law_sim_study_2026-11-30.md; truths: lawfit/truths.py)

    python scripts/law_sim_study.py                      # 10 seeds x {saturating, atlas} x noise {1%, 2%}
    python scripts/law_sim_study.py --quick              # 2 seeds, 2% noise: a smoke run
    python scripts/law_sim_study.py --families control   # lawfit's own family: a check of this harness

Per (truth family, seed, noise): draw the truth; plan pilots with lawfit's `make_plan` at 1/8 of the
target budget B (its default design, whatever that is when this runs); evaluate the truth at every
planned evaluation point (a run of mixture w at s samples has seen D = round(w s)) times lognormal noise;
fit with `fit_laws` (the form chosen by its own cross-validation, no bootstrap); then measure
- held-out MAPE at B: |predicted - true| / true over every domain of 20 Dirichlet(1) mixtures, the
  proportional mix (unique data shares) and the uniform mix (true = the noiseless truth);
- allocation: x_hat = lawfit's `allocate` at B; x_star = the true optimum of sum_i L_i (SLSQP from many
  starts, checked against a simplex grid); gap = (R(x) - R(x_star)) / R(x_star) with R = sum_i (L_i - E_i)
  under the truth, for x_hat and for the proportional mix;
- the form lawfit picked and every candidate's cross-validation score.
Every number per trial goes to a JSON file; a summary (mean and 95% t interval over seeds, verdict against
the issue's targets) is printed.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from math import comb
from pathlib import Path

import numpy as np
from scipy import stats
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxmix.formats.io import atomic_write_json  # noqa: E402
from voxmix.lawfit import truths  # noqa: E402
from voxmix.lawfit.allocate import Budget, allocate  # noqa: E402
from voxmix.lawfit.dataset import Dataset  # noqa: E402
from voxmix.lawfit.fit import FitConfig  # noqa: E402
from voxmix.lawfit.plan import make_plan  # noqa: E402
from voxmix.lawfit.study import fit_laws  # noqa: E402

# The targets, fixed before any result: held-out MAPE at the target budget, and the allocation's
# excess true reducible loss over the true optimum's.
TARGET_MAPE = 0.03
TARGET_GAP = 0.01
GRID_POINTS = 20000  # simplex grid of the optimum check: the finest step with at most this many points


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    seeds: tuple[int, ...] = tuple(range(10))
    """Truth, plan and noise seeds; the same seed gives the same truth at every noise level (paired)."""
    families: tuple[str, ...] = ("saturating", "atlas")
    """Truth families of lawfit/truths.py."""
    noises: tuple[float, ...] = (0.01, 0.02)
    """Lognormal sigma of each evaluation."""
    budget: int = 1_000_000
    """Target budget B in samples (the truths' unique data and amplitudes are drawn relative to it)."""
    pilot_fraction: float = 1 / 8
    m: int | None = None
    """Domains; None: each family's default (lawfit/truths.py FAMILIES)."""
    n_mixtures: int = 20
    """Dirichlet(1) held-out mixtures (plus proportional and uniform)."""
    opt_starts: int = 24
    """Random SLSQP starts of the true optimizer (plus uniform, proportional and near-vertex starts)."""
    forms: tuple[str, ...] | None = None
    """Law forms lawfit may choose from; None: its default candidates, chosen by its cross-validation."""

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("StudyConfig.seeds: give at least one seed")
        bad = [f for f in self.families if f not in truths.FAMILIES]
        if bad:
            raise ValueError(f"StudyConfig.families: unknown {bad}; known: {sorted(truths.FAMILIES)}")
        if any(not s >= 0 for s in self.noises):
            raise ValueError(f"StudyConfig.noises: must be >= 0, got {self.noises}")
        if self.budget <= 0:
            raise ValueError(f"StudyConfig.budget: must be > 0, got {self.budget}")
        if not 0 < self.pilot_fraction <= 1:
            raise ValueError(f"StudyConfig.pilot_fraction: must be in (0, 1], got {self.pilot_fraction}")
        if self.n_mixtures < 1:
            raise ValueError(f"StudyConfig.n_mixtures: must be >= 1, got {self.n_mixtures}")


# ---- data ---------------------------------------------------------------------------------------------
def simulate(truth, plan: dict, sigma: float, seed: int) -> Dataset:
    """The Dataset lawfit would build from the planned runs' logs: every run (fit and validate roles, as
    `lawfit fit runs/` reads them all) evaluated at its planned points, loss = truth x exp(sigma N(0,1))."""
    rng = np.random.default_rng([seed, int(round(sigma * 1e6)), 11])
    Ds, Ys, R = [], [], []
    for r_idx, run in enumerate(plan["runs"]):
        w = np.array([run["mixture"].get(d, 0.0) for d in truth.domains])
        evals = np.asarray(run["eval_at"], dtype=np.float64)
        D = np.floor(w[None] * evals[:, None] + 0.5)  # as lawfit/simulate.py rounds samples seen
        Ds.append(D)
        Ys.append(truth.loss(D) * np.exp(sigma * rng.standard_normal(D.shape)))
        R += [r_idx] * len(evals)
    D = np.concatenate(Ds)
    return Dataset(
        domains=list(truth.domains),
        run_ids=[r["run_id"] for r in plan["runs"]],
        D=D,
        U=np.broadcast_to(truth.unique, D.shape).astype(np.float64),
        y=np.concatenate(Ys),
        run=np.asarray(R),
        seconds_per_sample={d: 0.01 for d in truth.domains},  # unused: the budget is in samples
        unique_samples={d: float(u) for d, u in zip(truth.domains, truth.unique)},
        warnings=[],
    )


def heldout_mixtures(truth, seed: int, n: int) -> tuple[list[str], np.ndarray]:
    """n Dirichlet(1) mixtures, then the proportional (unique data shares) and the uniform mix."""
    W = np.random.default_rng([seed, 303]).dirichlet(np.ones(truth.m), n)
    prop = truth.unique / truth.unique.sum()
    names = [f"dirichlet{a}" for a in range(n)] + ["proportional", "uniform"]
    return names, np.vstack([W, prop, np.full(truth.m, 1.0 / truth.m)])


def ape(predict, truth, D: np.ndarray) -> np.ndarray:
    """|predict(D) - truth(D)| / truth(D), (n, m): predict maps samples seen (n, m) to losses (n, m)."""
    true = truth.loss(D)
    return np.abs(predict(D) - true) / true


def reducible(truth, D: np.ndarray) -> np.ndarray:
    """The objective's reducible part under the truth, sum_i (L_i - E_i), at rows D (n, m)."""
    return (truth.loss(D) - truth.E[None]).sum(axis=1)


# ---- the true optimum ---------------------------------------------------------------------------------
def simplex_grid(m: int, max_points: int = GRID_POINTS) -> np.ndarray:
    """All shares with step 1/n summing to 1, for the largest n with at most max_points of them."""
    n = 1
    while comb(n + 1 + m - 1, m - 1) <= max_points:  # compositions of n + 1 into m parts
        n += 1
    # Stars and bars: m - 1 bars among n + m - 1 slots; the gaps between bars are the parts.
    cuts = itertools.combinations(range(n + m - 1), m - 1)
    pts = [np.diff([-1, *c, n + m - 1]) - 1 for c in cuts]
    return np.asarray(pts, dtype=np.float64) / n


def true_optimum(truth, budget: float, seed: int, n_random: int = 24) -> dict:
    """argmin over budget shares x of R(x B) under the truth: SLSQP (finite-difference gradients) from the
    uniform and proportional mixes, near each vertex and from random points; then a simplex grid check,
    and SLSQP again from the grid's best point if the grid found a lower value."""
    m = truth.m
    f = lambda x: float(reducible(truth, np.maximum(x, 0.0)[None] * budget)[0])
    cons = [{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones(m)}]
    rng = np.random.default_rng([seed, 404])
    starts = [np.full(m, 1.0 / m), truth.unique / truth.unique.sum()]
    starts += [np.where(np.arange(m) == j, 0.9, 0.1 / (m - 1)) for j in range(m)]
    starts += list(rng.dirichlet(np.ones(m), n_random))

    def polish(x0):
        r = minimize(f, x0, method="SLSQP", bounds=[(0.0, 1.0)] * m, constraints=cons,
                     options={"maxiter": 500, "ftol": 1e-14})  # fmt: skip
        x = np.clip(r.x, 0.0, 1.0)
        return x / x.sum()

    sols = [polish(x0) for x0 in starts]
    vals = [f(x) for x in sols]
    best = int(np.argmin(vals))
    x, v = sols[best], vals[best]
    grid = simplex_grid(m)
    gv = reducible(truth, grid * budget)
    g = int(np.argmin(gv))
    grid_improved = bool(gv[g] < v)
    if grid_improved:
        xg = polish(grid[g])
        x, v = (xg, f(xg)) if f(xg) < gv[g] else (grid[g], float(gv[g]))
    return {
        "x": x.tolist(),
        "R": v,
        "grid_step": float(grid[grid > 0].min()),
        "grid_best_R": float(gv[g]),
        "grid_improved": grid_improved,
        "starts_within_1e-6": int(sum(val <= v * (1 + 1e-6) for val in vals)),
    }


# ---- one trial ----------------------------------------------------------------------------------------
def fit(ds: Dataset, seed: int, forms: tuple[str, ...] | None = None):
    """lawfit's fit as `lawfit fit` does it (the form by its cross-validation), without the bootstrap."""
    return fit_laws(ds, FitConfig(bootstrap=0, workers=1, progress=False, seed=seed, forms=forms))


def allocation(laws, budget: int, seed: int) -> tuple[np.ndarray, float | None]:
    """lawfit's allocation at the budget: samples per domain, and the improvement over the proportional
    mix that lawfit itself claims (on the reducible loss, under its laws; None without unique data)."""
    out = allocate(laws, Budget(samples=budget), seed=seed)
    claim = out["baselines"].get("proportional", {}).get("improvement", {}).get("reducible")
    return np.array([out["domains"][d]["samples"] for d in laws.domains], dtype=np.float64), claim


def trial(cfg: StudyConfig, family: str, seed: int, sigma: float) -> dict:
    t0 = time.perf_counter()
    B = cfg.budget
    truth = truths.draw(family, seed, B, m=cfg.m)
    plan = make_plan(list(truth.domains), truth.unique_samples(), B, cfg.pilot_fraction, seed=seed)
    ds = simulate(truth, plan, sigma, seed)
    laws = fit(ds, seed, cfg.forms)
    t_fit = time.perf_counter() - t0
    names, W = heldout_mixtures(truth, seed, cfg.n_mixtures)
    err = ape(laws.predict, truth, W * B)
    signed = laws.predict(W * B) / truth.loss(W * B) - 1.0
    D_hat, claim = allocation(laws, B, seed)
    opt = true_optimum(truth, B, seed, cfg.opt_starts)
    prop = truth.unique / truth.unique.sum() * B
    R_hat, R_prop = reducible(truth, np.vstack([D_hat, prop]))
    sel = laws.fit.get("selection", {})
    # Diagnostics: every candidate form's MAPE at B (did cross-validation pick badly, or do all miss?), and
    # the chosen laws' MAPE at the pilots' own scale (the same mixtures at one run's budget: fit vs
    # extrapolation).
    by_form = {
        f: float(ape(lambda D, t=t: laws.predict(D, t), truth, W * B).mean())
        for f, t in laws.alternatives.items()
    }
    by_form[laws.form] = float(err.mean())
    per_run = plan["runs"][0]["budget_samples"]
    return {
        "family": family,
        "seed": seed,
        "noise": sigma,
        "m": truth.m,
        "form": laws.form,
        "cv_rmse_log": sel.get("cv_rmse_log", {}),
        "candidates": sel.get("candidates", []),
        "plan": {
            "design": plan.get("design"),  # absent before lawfit had named designs
            "runs": len(plan["runs"]),
            "run_ids": [r["run_id"] for r in plan["runs"]],
            "budget_per_run": [r["budget_samples"] for r in plan["runs"]],
            "pilot_samples": plan["pilot_samples"],
        },
        "mape": float(err.mean()),
        "mape_dirichlet": float(err[: cfg.n_mixtures].mean()),
        "mape_proportional": float(err[-2].mean()),
        "mape_uniform": float(err[-1].mean()),
        "ape_max": float(err.max()),
        "mean_signed_error": float(signed.mean()),
        "overpredicted_share": float((signed > 0).mean()),
        "ape": {n: e.tolist() for n, e in zip(names, err)},
        "x_hat": (D_hat / D_hat.sum()).tolist(),
        "x_star": opt["x"],
        "x_proportional": (prop / B).tolist(),
        "R_star": opt["R"],
        "R_hat": float(R_hat),
        "R_proportional": float(R_prop),
        "gap_hat": float((R_hat - opt["R"]) / opt["R"]),
        "gap_proportional": float((R_prop - opt["R"]) / opt["R"]),
        # What lawfit says its allocation gains over the proportional mix, and what it gains under the truth.
        "claimed_gain_vs_proportional": claim,
        "true_gain_vs_proportional": float((R_prop - R_hat) / R_prop),
        "optimizer": {k: v for k, v in opt.items() if k not in ("x", "R")},
        "mape_by_form": by_form,
        "mape_pilot_scale": float(ape(laws.predict, truth, W * per_run).mean()),
        "ape_at_x_hat": ape(laws.predict, truth, D_hat[None])[0].tolist(),
        "max_epochs_x_hat": float((D_hat / truth.unique).max()),
        "max_epochs_x_star": float((np.asarray(opt["x"]) * B / truth.unique).max()),
        "seconds_fit": round(t_fit, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _safe_trial(cfg: StudyConfig, family: str, seed: int, sigma: float) -> dict:
    """A trial that raises is recorded with its traceback and counted in the summary's `errors`, never
    dropped silently."""
    try:
        return trial(cfg, family, seed, sigma)
    except Exception as err:  # noqa: BLE001 - any failure of lawfit on a truth is a result to report
        where = {"family": family, "seed": seed, "noise": sigma}
        return {**where, "error": repr(err), "trace": traceback.format_exc()}


# ---- summary ------------------------------------------------------------------------------------------
def mean_ci(x, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t interval over seeds (nan interval with one value)."""
    x = np.asarray(x, dtype=np.float64)
    mu = float(x.mean())
    if len(x) < 2:
        return mu, float("nan"), float("nan")
    h = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mu, mu - h, mu + h


def verdict(lo: float, hi: float, target: float) -> str:
    """pass: the whole 95% interval of the mean meets the target; fail: none of it does; else unclear."""
    if hi <= target:
        return "pass"
    if lo > target:
        return "FAIL"
    return "unclear"


# Per-trial numbers summarized over seeds, and the target of each (None: reported only).
SUMMARY_KEYS = (
    ("mape", TARGET_MAPE),
    ("gap_hat", TARGET_GAP),
    ("gap_proportional", None),
    ("mean_signed_error", None),
    ("mape_pilot_scale", None),
    ("claimed_gain_vs_proportional", None),
    ("true_gain_vs_proportional", None),
)


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for fam, sig in sorted({(r["family"], r["noise"]) for r in rows}):
        rs = [r for r in rows if (r["family"], r["noise"]) == (fam, sig)]
        ok = [r for r in rs if "error" not in r]
        entry = {"family": fam, "noise": sig, "seeds": [r["seed"] for r in ok], "errors": len(rs) - len(ok)}
        for key, target in SUMMARY_KEYS:
            vals = [r[key] for r in ok if r.get(key) is not None]
            if not vals:
                continue
            mu, lo, hi = mean_ci(vals)
            entry[key] = {"mean": mu, "ci95": [lo, hi], "median": float(np.median(vals)), "max": max(vals)}
            if target is not None:
                entry[key]["target"] = target
                entry[key]["seeds_meeting"] = int(sum(v <= target for v in vals))
                entry[key]["verdict"] = verdict(lo, hi, target) if len(ok) > 1 else "unclear"
        entry["forms"] = {f: sum(r["form"] == f for r in ok) for f in sorted({r["form"] for r in ok})}
        by_form = [r["mape_by_form"] for r in ok if "mape_by_form" in r]
        if by_form:
            forms = sorted(set.intersection(*(set(b) for b in by_form)))
            entry["mape_by_form"] = {f: mean_ci([b[f] for b in by_form]) for f in forms}
            entry["mape_best_form"] = mean_ci([min(b.values()) for b in by_form])
        out.append(entry)
    return out


SUMMARY_KEYS_EXTRA = ("mean_signed_error", "claimed_gain_vs_proportional", "true_gain_vs_proportional")


def _cell(v: dict | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v['mean']:.2f}% [{100 * v['ci95'][0]:.2f}, {100 * v['ci95'][1]:.2f}]"


def print_summary(summary: list[dict]) -> None:
    print("| family | noise | n | MAPE at B, mean [95% CI] (max) | verdict | gap lawfit [95% CI] (max) | verdict "
          "| gap proportional [95% CI] | forms picked |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in summary:
        if "mape" not in e:
            print(f"| {e['family']} | {e['noise']} | 0 | every trial failed ({e['errors']}) | | | | | |")
            continue

        def cell(k, e=e):
            return _cell(e[k]) + f" ({100 * e[k]['max']:.2f})"

        n = len(e["seeds"])
        forms = ", ".join(f"{f} {c}" for f, c in e["forms"].items())
        errs = f" (+{e['errors']} errors)" if e["errors"] else ""
        print(
            f"| {e['family']} | {e['noise']:.0%} | {n}{errs} "
            f"| {cell('mape')} | {e['mape']['verdict']} ({e['mape']['seeds_meeting']}/{n}) "
            f"| {cell('gap_hat')} | {e['gap_hat']['verdict']} ({e['gap_hat']['seeds_meeting']}/{n}) "
            f"| {cell('gap_proportional')} | {forms} |"
        )
    print("\n| family | noise | mean signed error of the predictions | gain over proportional: lawfit claims "
          "| true gain |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for e in summary:
        if "mape" in e:
            cells = [_cell(e.get(k)) for k in SUMMARY_KEYS_EXTRA]
            print(f"| {e['family']} | {e['noise']:.0%} | " + " | ".join(cells) + " |")
    print(
        "\n| family | noise | MAPE at B of each candidate form; best form per trial | MAPE at the pilots' scale |"
    )
    print("| --- | --- | --- | --- |")
    for e in summary:
        if "mape_by_form" in e:
            parts = [f"{f} {100 * v[0]:.2f}%" for f, v in e["mape_by_form"].items()]
            parts.append(f"best {100 * e['mape_best_form'][0]:.2f}%")
            print(
                f"| {e['family']} | {e['noise']:.0%} | {'; '.join(parts)} | {_cell(e.get('mape_pilot_scale'))} |"
            )


def _sha() -> str | None:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return r.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    ap.add_argument(
        "--families", nargs="+", default=list(StudyConfig.families), choices=sorted(truths.FAMILIES)
    )
    ap.add_argument("--noises", nargs="+", type=float, default=list(StudyConfig.noises))
    ap.add_argument("--budget", type=int, default=StudyConfig.budget)
    ap.add_argument("--m", type=int, default=None, help="domains (default: each family's own)")
    ap.add_argument("--forms", nargs="+", default=None, help="force lawfit's candidate forms")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 2%% noise only")
    ap.add_argument("--label", default="current", help="names this code version in the output")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "law_sim_study.json")
    a = ap.parse_args(argv)
    cfg = StudyConfig(seeds=tuple(range(a.seeds)), families=tuple(a.families), noises=tuple(a.noises),
                      budget=a.budget, m=a.m, forms=tuple(a.forms) if a.forms else None)  # fmt: skip
    if a.quick:
        cfg = replace(cfg, seeds=(0, 1), noises=(0.02,))
    rows, t0 = [], time.perf_counter()
    jobs = [(f, s, n) for f in cfg.families for n in cfg.noises for s in cfg.seeds]
    for k, (fam, seed, sig) in enumerate(jobs, 1):
        r = _safe_trial(cfg, fam, seed, sig)
        rows.append(r)
        msg = r.get("error") or f"form {r['form']}, MAPE {r['mape']:.2%}, gap {r['gap_hat']:.2%}"
        print(f"[{k}/{len(jobs)} {time.perf_counter() - t0:.0f} s] {fam} seed {seed} noise {sig}: {msg}",
              file=sys.stderr, flush=True)  # fmt: skip
    summary = summarize(rows)
    atomic_write_json(
        a.out,
        {"label": a.label, "git_sha": _sha(), "config": asdict(cfg), "seconds": time.perf_counter() - t0,
         "targets": {"mape": TARGET_MAPE, "gap": TARGET_GAP}, "summary": summary, "trials": rows},
    )  # fmt: skip
    print_summary(summary)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
