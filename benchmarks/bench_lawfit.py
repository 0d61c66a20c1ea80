"""lawfit speed on the issue's reference problem: 8 domains, 64 runs x 10 evaluation points.

Targets (2 cores): fit < 10 s, allocation < 0.5 s, 200-sample bootstrap < 60 s. The baseline measured in the
same run is one start of one target solved by L-BFGS-B on the Huber objective with the analytic gradient
(lawfit's solver before #12) against the trust-region least-squares solver now used: time and the
objective each reaches.
Appends a JSON row to benchmarks/results/bench_lawfit.jsonl (or --out).

`--sweep-domains 4,8,16,32` (#18): m domains, 8 runs per domain (m pilots + 7m - 2 random mixtures + 2
held out), 10 evaluations, `--bootstrap 0`: fit + CV time of every form alone and of the default form
selection, allocation time, the growth exponent (log-log slope of fit + CV time in m), and up to
`--baseline-max-domains` the code path before #18 timed in the same run (ratio printed). A cell projected
(m^3 from the previous one) above `--cell-limit` seconds is skipped and says so.

Profile (#18, before the solver change; cProfile, one process, 2-core machine shared with other jobs):
* Where the time goes: one `scipy.optimize.least_squares` (trf) solve per start and per CV fold, per form
  and target. m = 8: 216 solves (144 target fits: 3 forms x 8 targets x 4 starts + 5 CV folds, warm),
  12.3 s in one process (fit 8.0 s, CV 4.4 s; 5.8 s on 2 workers); per solve ~30 steps.
  m = 16: 432 solves, 52 s (fit 39 s, CV 13 s); the dense SVD of the (points x parameters) Jacobian
  inside trf 17.6 s (34%), the law's value + Jacobian (`LawForm.evaluate`) 13.0 s (25%), trf's own
  bookkeeping the rest. m = 32 (one target, transfer form: 2,657 points x 66 parameters): 4 starts of
  92-160 steps each; the SVD is 87% of the solve (41 of 47 s), 10-18 ms per SVD on a quiet core and up to
  1 s while other jobs ran.
* Starts: 75 grid starts are screened by objective (cheap); 4 are solved; all 4 reach the same optimum in
  nearly every target (objectives equal to 1e-9), so 3 of 4 solves are redundant.
* Steps: they do not shrink with a better start (the linear-algebra start of lawfit/starts.py needs 40-70
  steps, as many as a grid start): the reflective trust region approaches the many kappa_j = 0 bounds
  (pairs without transfer) geometrically. Steps grow with m (30 at 8, 60-90 at 16, 90-160 at 32).
* CV refits: warm-started, 8-35 steps each; a quarter of the fit time (5 folds over mixtures above 16).
* Jacobian: analytic (one generic Jacobian per form), 1.6 ms per call at 16 domains; no finite differences.
* Process start-up and shipping the data set to workers: 2.6 MB pickled per job at 32 domains, 6 ms to
  pickle, 3 ms to load: < 5% of a job.
* Growth: per target the SVD costs (80m points) x (2m parameters)^2 ~ m^3 per step, steps ~ m^0.7, m
  targets: fit time ~ m^4-4.5 (issue: 8 -> 24 domains x31).
* Allocation: SLSQP from 8 of m + 18 starts, every evaluation law by law (m Python calls each looping over
  m - 1 sources); at 32 domains one SLSQP run took 80 steps of ~8 ms.
After the trf step was replaced from 7 domains on (#18, lawfit/gn.py: Levenberg-Marquardt on the p x p
normal equations, bounds by an active set; same machine, load 2-4):
* One solve at 32 domains (2,560 x 66): 0.2-0.3 s in 19-33 steps vs trf 8-60 s from the same start.
* Per target at 32 domains: a fit 0.45-0.85 s (transfer, interference), 0.1 s (no_transfer); LM solves
  ~60% of it, and inside them `LawForm.evaluate` (law + n x p Jacobian, 1-5 ms) dominates: the
  Jacobian is now computed only for accepted steps, and the 75 grid starts are screened by value alone.
  m = 16, one process, everything (fit + CV, 3 forms): LM 62 s of 86 s, evaluate 34-38 s of that, J^T W J
  and the rest of the step ~17 s, Cholesky 2 s (before the value-only screening and trial steps).
* Sweep (--forms selection, fit + CV), same run on a nearly quiet machine: 8 / 16 / 32 domains 2.51 / 9.95
  / 81.0 s, trf 3.84 / 13.6 / 160 s; slope 8 -> 32 2.51 (trf 2.69), 16 -> 32 3.0. What is left: the
  law's evaluation and J^T W J (n p^2 ~ m^3 per target, m^4 in all), ~20-70 LM steps per solve on the
  no_transfer/interference forms, and the CV refits (44% at 16 domains).
Second round (#18; one process pinned to one core, OMP/OPENBLAS 1 thread, load 1.7-3 from other jobs):
* m = 16, fit + CV of the 3 default forms, cProfile: 26.7 s. `LawForm.evaluate` 14.3 s (54,000 calls,
  0.26 ms each), `solve_bounded`'s own lines 5.4 s (J^T W J, bookkeeping), the two triangular solves and
  the Cholesky 2.1 s. Steps per solve: no_transfer 48-59 (4 parameters), interference 37-51, transfer
  19-26; CV refits (warm) as many as cold fits. 661 solves: fit 324, CV 337 (escapes included).
* Why that many steps: the IRLS weights min(1, delta/|r|) as curvature. With 30-40% of the points
  beyond delta (1% noise), the model is twice as curved as the loss along the outliers' directions and
  the decrease only halves per step: 81 steps for a no_transfer refit at 16 domains, 12 with the Huber
  loss's own curvature (0 beyond delta). That curvature from the first step, though, sent the
  interference form (k and rho trade off per source: many local optima) to worse optima on 6 of 32
  targets at 32 domains; IRLS until the relative decrease falls below 1e-4, then the Huber curvature,
  reaches every optimum the first round reached (at 32 domains all 96 fits and 480 CV refits of the 3
  forms equal or lower, 1e-7 relative).
* The law's evaluation at 32 domains (transfer form, 2,560 points x 66 parameters): 5.8 ms for value +
  Jacobian. The n x m exp is 0.55-0.8 ms (NumPy has no AVX2 float64 exp; this CPU has no AVX-512); a
  fresh (n, m) temporary costs more than the arithmetic (`ref * np.exp(x)` 1.55 ms, the same in place
  0.54 ms: page faults of freshly mapped memory); the F-ordered D_oth slice slowed the Jacobian's
  assembly; log(f/R) was recomputed every call. `LawForm.at` (prepared once per solve): value 0.86 ms,
  the Jacobian at the point just evaluated +0.3 ms; interference 0.15 + 0.3 ms (gamma = 1: no exp).
* Step bookkeeping: np.linalg.solve (LU) twice per trial step -> one `cho_factor`/`cho_solve`; J^T W J
  over the quadratic rows only.
* After: m = 16 one process 27.4 -> 10.5 s; m = 32 one process 260 -> 56 s (fit 29 s, CV 27 s; first
  round's code on the same core minutes before: 147 + 113 s). Steps per solve at 16 domains 10-25.
* Bootstrap (runs resampled, transfer form, warm refits, one process, load 5-6): 54 ms per target refit
  at 16 domains, 148 ms at 32; of it the solves 56%, the escape probes 28%, the escape checks 9%.
* `transfer_lowrank` (one joint problem): 28.5 s fit + CV at 8 domains by trf on the dense (n x 6m)
  Jacobian; from 7 domains on now `solve_bounded` with J^T W J assembled target by target: 2.9 s at 8,
  14.8 s at 16, not finished in 12.6 min at 32 (load 4.8-7.2; not profiled there).
* Sweep after the second round (2 workers, load 3.5-5.6 throughout: the lead's jobs): selection 4.53 /
  9.17 / 54.7 s at 8 / 16 / 32 (first round, back to back: 6.69 / 35.9 s, 32 skipped by the cell
  limit), slope 1.80; a second 32-domain call 72.1 s, its `--sweep-bootstrap 200` 1008 s.
  `--sweep-bootstrap N` times N resamples of the selected form at every m.
Third round (#18: the two new forms, 8 -> 32 exponents 2.57 / 2.59 quiet; cProfile, one process on one
core, load 2.5-3.5 from other jobs):
* `transfer_lowrank`, m = 16: 18.1 s (fit 14.9, CV 3.2). Both cold starts hit the 500-step limit
  unconverged (5.1 + 5.5 s); `_residual_blocks` 9.8 s, `BlockJacobian.gram` 2.7 s, own-law starts 2.6 s
  (no-transfer fits done once per start). Why: (1) the scale row (mean log a = 0) was a Huber row; at
  |r| ~ 0.5 >> delta its Huber curvature is 0, the a-b scale drifted ~1e-3 per step and each drift was
  a decrease that kept the stopping rule off (21.469 -> 21.462 in 1,000 more steps: the row's delta |r|).
  As a plain square (as in the trf path): 136-142 steps to 21.4559. (2) At m = 32 both starts then still
  ran 500 steps (97.17): in the Huber phase one damping serves 32 blocks and oscillated 0.1-2 with a
  rejected trial every few steps; restarted from there (IRLS weights, initial damping): 30-40 steps (97.1285).
* `transfer_lowrank`, m = 32, after (1) and restarts: `gram` 6.9 of 31.7 s (19 ms a call: m blocks of
  2,560 x 36, n m^3). From the rank-one structure (lawfit/lowrank_jac.py, n m^2) per call: residual +
  Jacobian 43.9 -> 19.4 ms, J^T W J 16.5 -> 9.2 ms, its diagonal 3.0 -> 2.0, J^T v 2.3 -> 1.6 ms; fit +
  CV 15.3 s (the per-target law 5.2 s, J^T W J 3.7 s, own-law starts 1.7 s).
* `transfer_repetition`, m = 16: 11.4 s, of it `effective_data` 3.3 s and `_log_shares` 0.9 s: each
  evaluation redid f(D; R*) and log f though no run repeats data. `LawForm.at` now detects that (no
  D > U): log f once, d/d log R* = 0, the same values bit for bit (every objective identical at 8, 16, 32
  domains); the form then costs what `transfer` does (4,439 vs 4,452 LM steps, 4.9 s CPU each). m = 32
  (43.4 s): the forward pass 15.2 s (0.6 ms a call: the n x m exp of (f/R)^gamma), `solve_bounded`'s own
  lines 8.8 s, Huber-phase J^T J 3.2 s, escapes 3.3 s, start screening 4.4 s: the transfer form's profile.
What changed is in docs/lawfit.md ("Many domains", "Allocation", "Speed"); the measured sweep in the README / #18.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxmix.lawfit.allocate import Budget, allocate  # noqa: E402
from voxmix.lawfit.bootstrap import bootstrap  # noqa: E402
from voxmix.lawfit.dataset import build_dataset, load_runs  # noqa: E402
from voxmix.lawfit.fit import FitConfig, FormFit, fit_target  # noqa: E402
from voxmix.lawfit.forms import FORMS  # noqa: E402
from voxmix.lawfit.lawsfile import Laws  # noqa: E402
from voxmix.lawfit.simulate import default_design, random_laws, simulate_runs  # noqa: E402
from voxmix.lawfit.study import fit_laws  # noqa: E402


def truth_laws(m: int, seed: int) -> Laws:
    return random_laws(
        m, seed, k_choices=(0.0, 0.0, 0.1, 0.3, 0.7), gamma_range=(0.8, 1.0), unique=1e6, prefix="domain"
    )


def meta() -> dict:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        sha = None
    import scipy

    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": sha,
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--evals", type=int, default=10)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_lawfit.jsonl"))
    ap.add_argument(
        "--sweep-domains", default=None, help="e.g. 4,8,16,32: the scaling table (8 runs per domain)"
    )
    ap.add_argument(
        "--forms",
        default=",".join(["selection", *FORMS]),
        help="sweep cells: 'selection' (default candidates + CV, as lawfit fit runs) and forms alone + CV",
    )
    ap.add_argument(
        "--cell-limit", type=float, default=240.0, help="skip a sweep cell projected above this (s)"
    )
    ap.add_argument("--baseline-max-domains", type=int, default=8, help="pre-#18 path timed up to this many")
    ap.add_argument(
        "--sweep-bootstrap", type=int, default=0,
        help="sweep: also time this many bootstrap resamples of the selected form at every m (0: none)",
    )  # fmt: skip
    a = ap.parse_args()
    if a.sweep_domains:
        sweep(a)
        return
    truth = truth_laws(a.domains, 0)
    with tempfile.TemporaryDirectory() as tmp:
        n_mix = a.runs - a.domains - 2
        plan = default_design(truth, budget_per_run=20000, n_mixtures=n_mix, n_evals=a.evals, seed=0)
        simulate_runs(truth, plan, tmp, noise=0.01, seed=0)
        ds = build_dataset(load_runs([tmp]))
    cfg = FitConfig(bootstrap=0, progress=False)
    laws, t_fit = timed(lambda: fit_laws(ds, cfg))
    alloc, t_alloc = timed(lambda: allocate(laws, Budget(samples=10**6), max_epochs=4.0))
    ff = FormFit(laws.form, {d: fit_target(FORMS[laws.form], ds, i, cfg) for i, d in enumerate(ds.domains)})
    bcfg = FitConfig(bootstrap=a.bootstrap, progress=False)
    _, t_boot = timed(lambda: bootstrap(ds, ff, bcfg))
    # Baseline: one start of one target, L-BFGS-B on the Huber objective (the solver before #12) vs _solve.
    from scipy.optimize import minimize

    from voxmix.lawfit import fit as F

    form = FORMS[laws.form]
    prob = F._problem(ds, 0)
    ref = F.reference_scale(prob)
    th0 = F._grid_starts(form, prob, [d for d in ds.domains if d != ds.domains[0]], ref)[0]
    lo, hi = F.box(form, ds.domains[1:], prob)
    bounds = list(zip(lo, hi))
    args = (form, prob, cfg.huber_delta, ref)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as lawfit's own workers: small matrices, one BLAS thread
    lb, t_lbfgs = timed(
        lambda: minimize(
            F._objective,
            th0,
            args=args,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 5000, "ftol": 1e-12, "gtol": 1e-9},
        )
    )
    (x_trf, _), t_trf = timed(lambda: F._solve(th0, form, prob, cfg.huber_delta, ref, lo, hi))
    obj_lbfgs, obj_trf = float(lb.fun), float(F._objective(x_trf, *args)[0])
    err_alpha = max(abs(laws.targets[d].alpha / truth.targets[d].alpha - 1) for d in truth.domains)
    row = {
        "bench": "lawfit",
        **meta(),
        "config": vars(a),
        "n_points": int(len(ds.y)),
        "form": laws.form,
        "fit_s": t_fit,
        "allocate_s": t_alloc,
        "bootstrap_s": t_boot,
        "one_start_lbfgsb_s": t_lbfgs,
        "one_start_trf_s": t_trf,
        "one_start_lbfgsb_objective": obj_lbfgs,
        "one_start_trf_objective": obj_trf,
        "max_rel_err_alpha": err_alpha,
        "kkt_satisfied": alloc["objective"]["kkt"]["satisfied"],
    }
    print(
        f"lawfit: {a.domains} domains, {a.runs} runs x {a.evals} evals = {row['n_points']} points, form {laws.form}"
    )
    print(
        f"  fit (all forms, CV selection)  {t_fit:7.2f} s   target < 10 s   ratio to target {t_fit / 10:.2f}"
    )
    print(
        f"  allocate (+ baselines, hubs)   {t_alloc:7.3f} s   target < 0.5 s  ratio to target {t_alloc / 0.5:.2f}"
    )
    print(
        f"  bootstrap x{a.bootstrap:<4}                {t_boot:7.2f} s   target < 60 s   ratio to target {t_boot / 60:.2f}"
    )
    print(
        f"  one start, trust-region least squares vs L-BFGS-B (before #12): {t_trf:.3f} s vs {t_lbfgs:.3f} s "
        f"(speed-up {t_lbfgs / max(t_trf, 1e-9):.1f}x); objective {obj_trf:.6g} vs {obj_lbfgs:.6g}"
    )
    print(f"  max relative error of alpha vs truth: {100 * err_alpha:.2f}%")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"  appended to {a.out}")


# ---- the scaling sweep (#18) --------------------------------------------------------------------------
def sweep_dataset(m: int, evals: int, tmp: str):
    """m domains, 8 runs per domain (m single-domain pilots, 7m - 2 random mixtures, 2 held-out mixtures)."""
    truth = truth_laws(m, 0)
    plan = default_design(truth, budget_per_run=20000, n_mixtures=8 * m - m - 2, n_evals=evals, seed=0)
    simulate_runs(truth, plan, tmp, noise=0.01, seed=0)
    return build_dataset(load_runs([tmp]))


def _law_by_law(self, D, targets=None):
    """Laws.value_grad before #18: target by target through law_value_grad (the baseline)."""
    from voxmix.lawfit.laws import law_value_grad

    targets = targets or self.targets
    out = [
        law_value_grad(targets[d], self.domains, np.asarray(D, float)[None], self.U, self.d0)
        for d in self.domains
    ]
    return np.array([v[0] for v, _ in out]), np.array([g[0] for _, g in out])


class _Baseline:
    """The code path before #18 inside this process: grid starts only (4 solved), SLSQP from 8 starts,
    the laws evaluated target by target."""

    def __enter__(self):
        from voxmix.lawfit import allocate as AL
        from voxmix.lawfit import fit as F

        self.saved = (F.MANY_SOURCES, AL.SPG_FROM, Laws.value_grad)
        F.MANY_SOURCES, AL.SPG_FROM, Laws.value_grad = 10**9, 10**9, _law_by_law

    def __exit__(self, *exc):
        from voxmix.lawfit import allocate as AL
        from voxmix.lawfit import fit as F

        F.MANY_SOURCES, AL.SPG_FROM, Laws.value_grad = self.saved


def _time_form(ds, form: str | None):
    """Fit + CV of one form (None: the default candidates with form selection, as `lawfit fit` runs it)."""
    from voxmix.lawfit.fit import fit_forms
    from voxmix.lawfit.select import cross_validate

    cfg = FitConfig(bootstrap=0, progress=False, forms=(form,) if form else None)
    t = time.perf_counter()
    fits, _ = fit_forms(ds, cfg)
    sel = cross_validate(ds, fits, cfg)
    chosen = sel.get("winner") or form
    return time.perf_counter() - t, fits, chosen


def _slope(ms, ts) -> float | None:
    ok = [(m, t) for m, t in zip(ms, ts) if t is not None]
    if len(ok) < 2:
        return None
    x, y = np.log([m for m, _ in ok]), np.log([t for _, t in ok])
    return float(np.polyfit(x, y, 1)[0])


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def sweep(a) -> None:
    ms = [int(v) for v in a.sweep_domains.split(",")]
    forms = [f for f in a.forms.split(",") if f]
    times: dict[str, list] = {f: [] for f in forms}
    rows = []
    for m in ms:
        with tempfile.TemporaryDirectory() as tmp:
            ds = sweep_dataset(m, a.evals, tmp)
        for f in forms:
            prev = [(mm, t) for mm, t in zip(ms, times[f]) if t is not None]
            guess = prev[-1][1] * (m / prev[-1][0]) ** 3 if prev else 0.0
            row = {"bench": "lawfit_sweep", **meta(), "domains": m, "runs": int(ds.n_runs), "form": f,
                   "evals": a.evals, "load_before": _load()}  # fmt: skip
            if guess > a.cell_limit or (prev == [] and times[f]):
                times[f].append(None)
                row["skipped"] = f"projected {guess:.0f} s > --cell-limit {a.cell_limit:.0f} s"
            else:
                t_fit, fits, chosen = _time_form(ds, None if f == "selection" else f)
                laws = Laws(form=chosen, domains=list(ds.domains), unique_samples=dict(ds.unique_samples),
                            targets={d: tf.law for d, tf in fits[chosen].targets.items()})  # fmt: skip
                _, t_alloc = timed(lambda laws=laws: allocate(laws, Budget(samples=10**6), max_epochs=4.0))
                times[f].append(t_fit)
                row.update(fit_cv_s=t_fit, allocate_s=t_alloc, chosen=chosen)
                if f == "selection" and a.sweep_bootstrap:
                    bcfg = FitConfig(bootstrap=a.sweep_bootstrap, progress=False)
                    _, t_boot = timed(lambda ds=ds, ff=fits[chosen], c=bcfg: bootstrap(ds, ff, c))
                    row.update(bootstrap=a.sweep_bootstrap, bootstrap_s=t_boot)
                if f == "selection" and m <= a.baseline_max_domains:
                    with _Baseline():
                        t_old, _, _ = _time_form(ds, None)
                        _, t_alloc_old = timed(
                            lambda laws=laws: allocate(laws, Budget(samples=10**6), max_epochs=4.0)
                        )
                    row.update(baseline_fit_cv_s=t_old, baseline_allocate_s=t_alloc_old)
            row["load_after"] = _load()
            rows.append(row)
            _print_row(row)
    print("\ngrowth exponent of fit + CV time in domains (log-log slope over the measured cells):")
    for f in forms:
        k = _slope(ms, times[f])
        print(f"  {f:20s} {'-' if k is None else f'{k:.2f}'}   target <= 2.5")
        rows.append({"bench": "lawfit_sweep_slope", **meta(), "form": f, "domains": ms, "fit_cv_s": times[f],
                     "growth_exponent": k})  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"appended {len(rows)} rows to {a.out}")


def _print_row(r: dict) -> None:
    head = f"{r['domains']:3d} domains {r['runs']:4d} runs  {r['form']:20s}"
    if "skipped" in r:
        print(f"{head} skipped ({r['skipped']})  load {r['load_before']}")
        return
    base = ""
    if "baseline_fit_cv_s" in r:
        base = (f"  | before #18 (same run): fit+CV {r['baseline_fit_cv_s']:.2f} s "
                f"(x{r['baseline_fit_cv_s'] / r['fit_cv_s']:.2f}), allocate {r['baseline_allocate_s']:.3f} s "
                f"(x{r['baseline_allocate_s'] / r['allocate_s']:.2f})")  # fmt: skip
    if "bootstrap_s" in r:
        base += f"  | bootstrap x{r['bootstrap']} {r['bootstrap_s']:.1f} s"
    print(f"{head} fit+CV {r['fit_cv_s']:8.2f} s  allocate {r['allocate_s']:6.3f} s  chosen {r['chosen']}{base}"
          f"  load {r['load_before']} -> {r['load_after']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
