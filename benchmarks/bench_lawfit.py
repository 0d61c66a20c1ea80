"""lawfit speed on the issue's reference problem: 8 domains, 64 runs x 10 evaluation points.

Targets (2 cores): fit < 10 s, allocation < 0.5 s, 200-sample bootstrap < 60 s. The baseline measured in the
same run is one start of one target solved by L-BFGS-B on the Huber objective with the analytic gradient
(lawfit's solver before #12) against the trust-region least-squares solver now used: time and the
objective each reaches.
Appends a JSON row to benchmarks/results/bench_lawfit.jsonl (or --out).
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
    a = ap.parse_args()
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


if __name__ == "__main__":
    main()
