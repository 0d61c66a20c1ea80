"""The whole study on phantoms, as stages over the library (`make demo`, `make study`, scripts/demo.py).

phantoms -> ingest -> pilot plan (lawfit's pairs design) -> pilot sweep (real `deepspeed` launches) ->
law fit -> allocation at each unseen budget (scale x the largest pilot) -> final runs, proportional and
law-optimal ("transfer_aware"), several seeds each, one sweep -> lawfit report -> comparison.json and
report.md (trainer/study/compare.py computes, trainer/study/report.py renders) -> optional downstream
fine-tuning of both encoders.

Stages hand over through files only (each read and written by its owner in voxmix.formats, or `Laws`
for laws.json), so that a rerun can skip a finished stage: each leaves a stamp in <out>/.stages/
(trainer/study/stages.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from voxmix.formats.allocation import Allocation, read_allocation, write_allocation
from voxmix.formats.io import atomic_write_json, atomic_write_text
from voxmix.formats.manifest import read_manifest
from voxmix.formats.plan import Plan, PlannedRun, parse_plan, read_plan, write_plan

from .compare import FINALS, FinalBudget, compare, final_budgets
from .options import REPO, DemoOptions, StudyError, SweepOptions
from .report import render, summary
from .stages import Clock, DemoPaths, Stages, quiet
from .sweep import run_sweep


def log_points(first: float, last: int, n: int, batch: int = 1) -> list[int]:
    """n log-spaced sample counts from `first` to `last` in whole batches (lawfit plan's rule)."""
    from voxmix.lawfit.plan import eval_points

    return eval_points(last, n, multiple=batch, first=int(np.ceil(first)))


def global_batch(o: DemoOptions) -> int:
    """Samples per optimizer step of one run: the preset's batch x one process (one GPU or CPU group)."""
    from voxmix.trainer.pretrain.config import ConfigError, load_config

    try:
        return load_config(o.config_path, list(o.trainer_overrides)).data.batch_size
    except ConfigError as err:
        raise StudyError(f"--config: {err}") from None


# ---- stages ------------------------------------------------------------------------------------------
def make_phantoms(o: DemoOptions, p: DemoPaths) -> None:
    from voxmix.trainer.data.phantoms import write_dataset

    with quiet():
        write_dataset(p.phantoms, list(o.domains), o.per_domain, o.size, o.seed, False)


def ingest_phantoms(o: DemoOptions, p: DemoPaths) -> None:
    from voxmix.trainer.data.ingest import ingest, load_spec

    res = ingest(
        load_spec(p.phantoms / "dataset.yaml"), p.manifest.parent, workers=o.ingest_workers, progress=False
    )
    counts = {d: sum(r.domain == d for r in res.done) for d in sorted({r.domain for r in res.done})}
    print(
        f"ingest: {len(res.done)} volumes ({res.skipped} unchanged), {len(res.failures)} failed; "
        + ", ".join(f"{d}: {n}" for d, n in counts.items())
    )
    if res.failures:
        f = res.failures[0]
        raise StudyError(
            f"ingest: {len(res.failures)} source(s) failed, e.g. [{f['reason']}] {f['source']}: {f['detail']} "
            f"(all in {p.manifest.parent / 'failures.jsonl'})"
        )


def train_counts(manifest: Path) -> dict[str, int]:
    """Unique training volumes per domain: the plan's `unique` (and, through it, the proportional mix)."""
    m = read_manifest(manifest)
    return {d: len(m.select(domain=d, split="train")) for d in m.domains()}


def pilot_plan(o: DemoOptions, unique: dict[str, int], batch: int) -> Plan:
    """`lawfit plan`'s pairs design with every pilot at exactly `o.pilot_samples` samples (pure).

    Every single domain and every pair of domains are fitted (a pair's transfer is then seen in both
    directions, which the controls need), plus held-out mixtures; the target is the largest final budget.
    """
    from voxmix.lawfit.plan import make_plan

    doms = sorted(unique)
    target = max(final_budgets(o.scales, o.pilot_samples, batch), key=lambda b: b.samples).samples
    plan = make_plan(
        doms,
        {d: unique[d] for d in doms},
        target,
        1.0,
        design="pairs",
        global_batch=batch,
        pilot_samples=o.pilot_samples,
        # The first tens of optimizer steps are the MAE loss's plateau near 1 (warm-up), not the power law;
        # pilots shorter than that (tests) start at their budget.
        first_eval=min(o.min_eval, o.pilot_samples) or None,
        n_evals=o.evals,
        seed=o.seed,
    )
    return parse_plan(plan)


def write_pilot_plan(o: DemoOptions, p: DemoPaths) -> None:
    plan = pilot_plan(o, train_counts(p.manifest), global_batch(o))
    write_plan(p.file("plan.json"), plan)
    print(f"wrote {p.file('plan.json')}: {len(plan.runs)} runs")
    for r in plan.runs:
        print(f"  {r.run_id:<32} {r.role:<9} {r.budget_samples:>9} samples, {len(r.eval_at)} evals")
    for w in plan.extra.get("warnings", []):
        print(f"lawfit: warning: {w}", file=sys.stderr)


def sweep(o: DemoOptions, p: DemoPaths, plan: Path, runs_dir: Path) -> None:
    """One sweep of real `deepspeed trainer/run.py` launches; a run not done (failed, busy, stale) stops
    the demo."""
    res = run_sweep(
        SweepOptions(
            plan=plan,
            runs_dir=runs_dir,
            manifest=p.manifest,
            config=o.config_path,
            overrides=o.trainer_overrides,
            parallel=o.parallel,
        )
    )
    print(res.summary)
    if res.not_done:  # failed, busy (another trainer holds the folder) or stale (other settings)
        ids = [f"{x.run.run_id} ({x.status})" for x in res.not_done]
        raise StudyError(f"sweep of {plan}: run(s) {ids} not done; logs in {runs_dir / '_sweep'}")


def fit_pilots(o: DemoOptions, p: DemoPaths, fit_dirs: list[Path]) -> None:
    """The laws, fitted exactly as `lawfit fit DIRS --bootstrap B --workers W --seed S --quiet` does."""
    from voxmix.lawfit.dataset import build_dataset, load_runs
    from voxmix.lawfit.fit import FitConfig
    from voxmix.lawfit.study import fit_laws

    cfg = FitConfig(bootstrap=o.bootstrap, seed=o.seed, workers=o.workers, forms=None, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # as lawfit's main: optimizer probes
        ds = build_dataset(load_runs([str(d) for d in fit_dirs]), None)
        for w in ds.warnings:
            print(f"lawfit: warning: {w}", file=sys.stderr)
        laws = fit_laws(ds, cfg)
    laws.save(p.file("laws.json"))
    print(f"wrote {p.file('laws.json')}: form {laws.form} ({laws.fit['selection']['method']})")
    for d in laws.domains:
        t, rm = laws.targets[d], laws.fit["per_target"][d]["rmse_log"]
        print(f"  {d}: E={t.E:.4g} A={t.A:.4g} alpha={t.alpha:.3f} rmse(log)={rm:.4f}")


def allocate_budget(o: DemoOptions, p: DemoPaths, fb: FinalBudget) -> None:
    """`lawfit allocate laws.json --budget-samples B --seed S`, in process; and the proportional baseline
    as an allocation file of its own (allocation_proportional*.json), so that it is trained like the other."""
    from voxmix.lawfit.allocate import Budget, allocate
    from voxmix.lawfit.lawsfile import Laws

    alloc = allocate(Laws.load(p.file("laws.json")), Budget(samples=fb.samples), weights={}, seed=o.seed)
    write_allocation(p.file(fb.allocation), alloc)
    prop = {d: int(e["samples"]) for d, e in alloc["baselines"]["proportional"]["domains"].items()}
    total, doms = sum(prop.values()), sorted(prop)
    baseline = Allocation(domains=doms, weights={d: prop[d] / total for d in doms}, samples=prop, total=total)
    write_allocation(p.file(fb.allocation_proportional), baseline)
    print(
        f"wrote {p.file(fb.allocation)}: {alloc['budget']['samples']} samples ({fb.scale:g}x the largest pilot)"
    )
    for d, e in alloc["domains"].items():
        print(f"  {d:<20} share {e['weight']:.4f}  samples {e['samples']:>10}  (proportional {prop[d]:>10})")
    for name, b in alloc["baselines"].items():
        im = b["improvement"]
        iv = im.get("raw_interval")
        ivs = f" [{100 * iv[0]:+.2f}%, {100 * iv[1]:+.2f}%]" if iv else ""
        print(f"  vs {name:<20} predicted improvement {100 * im['raw']:+.2f}%{ivs} raw")


def final_plan(
    allocs: dict[FinalBudget, dict[str, dict[str, int]]],
    pilot: int,
    seeds: list[int],
    n_evals: int,
    batch: int,
) -> Plan:
    """Every final run in one plan (pure): per budget, per seed, each allocation (so that a sweep cut
    short leaves whole pairs). A pair shares the budget, the seed and the evaluation points, all beyond
    the largest pilot."""
    runs = []
    for fb, named in allocs.items():
        for seed in seeds:
            for name, counts in named.items():
                budget = sum(counts.values())
                runs.append(
                    PlannedRun(
                        run_id=fb.run_id(name, seed),
                        role="final",
                        # samples / budget reproduces the integer counts exactly under largest-remainder
                        # rounding (the trainer's)
                        mixture={d: n / budget for d, n in counts.items()},
                        budget_samples=budget,
                        eval_at=log_points(1.25 * pilot, budget, n_evals, batch),
                        seed=seed,
                    )
                )
    doms = sorted(next(iter(next(iter(allocs.values())).values())))
    return Plan(domains=doms, runs=runs, extra={"warnings": []})


def final_runs(o: DemoOptions, p: DemoPaths, pilot_max: int, budgets: list[FinalBudget]) -> None:
    allocs = {
        fb: dict(
            zip(
                FINALS,
                (read_allocation(p.file(f)).samples for f in (fb.allocation_proportional, fb.allocation)),
            )
        )
        for fb in budgets
    }
    plan = final_plan(allocs, pilot_max, final_seeds(o), o.final_evals, global_batch(o))
    write_plan(p.file("final_plan.json"), plan)
    sweep(o, p, p.file("final_plan.json"), p.final)


def final_seeds(o: DemoOptions) -> list[int]:
    return list(range(o.seed, o.seed + o.final_seeds))


def lawfit_report(p: DemoPaths, top: FinalBudget) -> None:
    from voxmix.lawfit.lawsfile import Laws
    from voxmix.lawfit.report import write_report

    with quiet():
        alloc = read_allocation(p.file(top.allocation)).to_json()
        write_report(Laws.load(p.file("laws.json")), alloc, p.file("report"))


def write_result(o: DemoOptions, p: DemoPaths, st: Stages, plan: Plan, budgets: list[FinalBudget]) -> str:
    """comparison.json and report.md from the final runs; returns the summary printed at the end."""
    pilot_max = max(r.budget_samples for r in plan.runs)
    res = compare(p.out, budgets, final_seeds(o), pilot_max)
    res["pilots"] = {
        "runs": len(plan.runs),
        "fit": sum(r.role == "fit" for r in plan.runs),
        "samples": sorted({r.budget_samples for r in plan.runs}),
        "design": plan.extra.get("design"),
    }
    res["timing"] = {"stages": st.times(), "this_invocation_s": st.clock.elapsed()}
    atomic_write_json(p.file("comparison.json"), res)
    atomic_write_text(p.file("report.md"), render(res))
    return summary(res)


def downstream_command(o: DemoOptions, p: DemoPaths, top: FinalBudget) -> list[str]:
    encs = [str(p.final / top.run_id(n, o.seed) / "encoder.pt") for n in FINALS]
    return [sys.executable, "-m", "trainer.compare_encoders", *encs, "--names", ",".join(FINALS), "--quick",
            "--scratch",  # the control: a random encoder of the same architecture
            "--seeds", str(o.downstream_seeds), "--phantoms", str(p.out / "downstream"),
            "--out", str(p.out / "downstream" / "comparison.json")]  # fmt: skip


def _run_command(cmd: list[str]) -> None:
    res = subprocess.run(cmd, cwd=REPO)
    if res.returncode != 0:
        raise StudyError(f"step failed (exit {res.returncode}): {' '.join(cmd)}")


def downstream(o: DemoOptions, p: DemoPaths, st: Stages, top: FinalBudget) -> None:
    """Fine-tune both final encoders (the quick protocol, ~1 min) when it exists and time allows.

    A command of its own (`python -m trainer.compare_encoders`): the demo prints it when it skips the
    step, and `make demo-full` runs its full protocol.
    """
    cmd = downstream_command(o, p, top)
    spent = st.clock.elapsed()
    if not (REPO / "trainer" / "compare_encoders.py").exists():
        st.clock.say(
            "downstream fine-tuning of the two encoders: trainer/compare_encoders.py is not installed here"
        )
    elif o.downstream == "yes" or (o.downstream == "auto" and spent < o.time_budget):
        st.run("downstream", lambda: _run_command(cmd))
    else:
        why = (
            "--downstream no"
            if o.downstream == "no"
            else f"{spent:.0f} s spent >= --time-budget {o.time_budget:g}"
        )
        st.clock.say(
            f"downstream comparison skipped ({why}); run it with:\n  {' '.join(cmd)}\n  (`make demo-full` does)"
        )


def run_demo(o: DemoOptions) -> int:
    """Every stage in order (finished ones skipped); prints the result table; 0 when done.

    Raises `StudyError`, `FormatError` or `LawfitError` naming what failed.
    """
    clock = Clock()
    p = DemoPaths(Path(o.out).resolve())
    if o.fresh and p.out.exists():
        shutil.rmtree(p.out)
    p.out.mkdir(parents=True, exist_ok=True)
    st = Stages(p.out, clock)
    clock.say(
        f"output in {p.out}; {len(o.domains)} domains, pilots of {o.pilot_samples} samples, finals at "
        f"{', '.join(f'{x:g}x' for x in o.scales)} with {o.final_seeds} seed(s) each"
    )
    st.run("phantoms", lambda: make_phantoms(o, p))
    st.run("ingest", lambda: ingest_phantoms(o, p))
    st.run("plan", lambda: write_pilot_plan(o, p))
    st.run("pilots", lambda: sweep(o, p, p.file("plan.json"), p.runs))
    plan = read_plan(p.file("plan.json"))
    pilot_max = max(r.budget_samples for r in plan.runs)
    budgets = final_budgets(o.scales, pilot_max, global_batch(o))
    top = budgets[-1]  # scales are sorted: the transfer matrix, figures and encoders at the largest
    st.run("fit", lambda: fit_pilots(o, p, [p.runs / r.run_id for r in plan.runs if r.role == "fit"]))
    st.run("allocate", lambda: [allocate_budget(o, p, fb) for fb in budgets])
    st.run("final_runs", lambda: final_runs(o, p, pilot_max, budgets))
    if o.report:
        st.run("report", lambda: lawfit_report(p, top))
    text = write_result(o, p, st, plan, budgets)
    print("\n" + text)
    clock.say(f"wrote {p.file('report.md')}")
    downstream(o, p, st, top)
    return 0
