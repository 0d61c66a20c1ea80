"""`lawfit simulate`: run logs drawn from known laws with noise, to test the fit and size pilot studies."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from voxmix.formats.allocation import MAX_SAMPLES
from voxmix.formats.plan import check_run_id, validate_plan
from voxmix.formats.runlog import FILENAME, RunLogWriter

from .errors import LawfitError
from .laws import TargetLaw, TransferTerm
from .lawsfile import Laws
from .plan import make_plan


def default_design(
    laws: Laws,
    *,
    budget_per_run: int,
    n_mixtures: int | None,
    n_evals: int,
    seed: int,
    design: str | None = None,
) -> dict:
    """`lawfit plan`'s design with every run at `budget_per_run` samples: its default design, or the random
    one when `n_mixtures` is given (singles + that many random mixtures)."""
    n = budget_per_run
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_SAMPLES:
        raise LawfitError(f"--budget-per-run must be an integer in [1, {MAX_SAMPLES}], got {n!r}")
    unique = {d: int(laws.unique_samples.get(d, 10 * budget_per_run)) for d in laws.domains}
    design = design or ("random" if n_mixtures is not None else "pairs")
    return make_plan(
        laws.domains,
        unique,
        budget_per_run,
        1.0,
        design=design,
        pilot_samples=budget_per_run,
        n_mixtures=n_mixtures if design == "random" else None,
        n_evals=n_evals,
        seed=seed,
    )


def simulate_runs(
    laws: Laws,
    plan: dict,
    out_dir: str | os.PathLike,
    *,
    noise: float = 0.01,
    run_noise: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    where: str = "plan",
) -> list[Path]:
    """Write one run directory per planned run; losses are the laws' predictions times lognormal noise:
    `noise` independent per evaluation, `run_noise` one offset per run and domain shared by all of the
    run's evaluations (a run's seed shifts its whole curve, so real evaluations within a run correlate).
    `where` names the plan in messages (its file)."""
    for opt, v in (("--noise", noise), ("--run-noise", run_noise)):
        if not (math.isfinite(v) and v >= 0):
            raise LawfitError(f"{opt} must be >= 0 and finite, got {v}")
    validate_plan(plan, where)
    out_dir = Path(out_dir)
    # Every run folder is checked before the first is written (here as well as by the plan reader:
    # callers may pass a plan of their own), so that a bad run leaves no half-simulated study behind.
    run_dirs = [_run_dir(out_dir, r["run_id"], f"{where}: runs[{i}]") for i, r in enumerate(plan["runs"])]
    taken = [str(p / FILENAME) for p in run_dirs if (p / FILENAME).exists()]
    if taken and not overwrite:
        raise LawfitError(
            f"{taken[0]} already exists{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}; "
            "simulate into a new folder or pass --overwrite"
        )
    unknown = [d for d in plan["domains"] if d not in laws.domains]
    if unknown:
        raise LawfitError(f"plan domain(s) {unknown} have no law in the truth file (it has {laws.domains})")
    rng = np.random.default_rng(seed)
    # Its own stream, so that run_noise = 0 leaves the per-evaluation noise of earlier versions unchanged.
    run_rng = np.random.default_rng([seed, 1]) if run_noise > 0 else None
    cost = {d: laws.seconds_per_sample.get(d, 0.01) for d in laws.domains}
    paths = []
    for r, run_dir in zip(plan["runs"], run_dirs):
        log = run_dir / FILENAME
        if log.exists():
            log.unlink()
        w = np.array([r["mixture"].get(d, 0.0) for d in laws.domains])
        unique = {
            d: int(laws.unique_samples[d])
            for d in laws.domains
            if np.isfinite(laws.unique_samples.get(d, np.inf))
        }
        writer = RunLogWriter(run_dir)
        writer.start(
            run_id=r["run_id"],
            domains=laws.domains,
            mixture=dict(zip(laws.domains, w.tolist())),
            budget_samples=r["budget_samples"],
            unique_samples=unique,
            seed=int(r.get("seed", 0)),
            config={"simulated": True, "noise": noise, "run_noise": run_noise, "truth_form": laws.form},
        )
        evals = np.asarray(r["eval_at"], dtype=np.float64)
        D = np.floor(w[None, :] * evals[:, None] + 0.5)
        L = laws.predict(D) * np.exp(noise * rng.standard_normal((len(evals), len(laws.domains))))
        if run_rng is not None:
            L = L * np.exp(run_noise * run_rng.standard_normal(len(laws.domains)))[None, :]
        batch = 8
        for t, (drow, lrow) in enumerate(zip(D, L)):
            step = int(evals[t]) // batch
            writer.eval(
                step=step,
                samples_seen={d: int(x) for d, x in zip(laws.domains, drow)},
                loss={d: float(x) for d, x in zip(laws.domains, lrow)},
                # What a trainer would measure over its crops: the per-evaluation noise, se / loss = noise
                # (the delta method for lognormal noise); run_noise is not visible within one point.
                loss_se={d: float(noise * x) for d, x in zip(laws.domains, lrow)},
            )
            # Mean cost of this mixture's samples; per-domain costs are what the trainer measures.
            sps = float(1.0 / max(1e-12, float(w @ np.array([cost[d] for d in laws.domains]))))
            writer.throughput(
                step=step,
                samples_per_s=sps,
                seconds_per_sample={d: cost[d] for d, x in zip(laws.domains, w) if x > 0},
            )
        writer.end(status="completed", step=int(r["budget_samples"]) // batch)
        paths.append(run_dir)
    return paths


def _run_dir(out_dir: Path, run_id, where: str) -> Path:
    """`out_dir / run_id`, for a run id that is a plain folder name and whose folder, if it exists, is
    not a link leading out of `out_dir`."""
    check_run_id(run_id, where)  # the plan format's rule: no separators, '..', absolute paths, NUL
    run_dir = out_dir / run_id
    if run_dir.exists() and run_dir.resolve().parent != out_dir.resolve():
        raise LawfitError(f"{where}: run folder {run_dir} leads outside {out_dir} (a link?); remove it")
    return run_dir


def random_laws(
    m: int,
    seed: int,
    *,
    k_choices=(0.0, 0.0, 0.15, 0.4, 0.8),
    gamma_range=(0.75, 1.0),
    unique: float = 1e7,
    prefix: str = "d",
) -> Laws:
    """Random transfer laws for m domains (tests, benchmarks, sizing studies): each pair's k is drawn from
    `k_choices` (zeros make non-transferring pairs), gamma uniformly from `gamma_range`."""
    rng = np.random.default_rng(seed)
    doms = [f"{prefix}{i}" for i in range(m)]
    targets = {}
    for d in doms:
        tr = {
            o: TransferTerm(float(rng.choice(k_choices)), float(rng.uniform(*gamma_range)))
            for o in doms
            if o != d
        }
        targets[d] = TargetLaw(
            d,
            E=float(rng.uniform(0.2, 0.5)),
            A=float(rng.uniform(3, 10)),
            alpha=float(rng.uniform(0.25, 0.5)),
            transfer=tr,
        )
    return Laws(
        form="transfer",
        domains=doms,
        targets=targets,
        unique_samples={d: unique for d in doms},
        seconds_per_sample={d: 0.01 * (1 + i) for i, d in enumerate(doms)},
    )
