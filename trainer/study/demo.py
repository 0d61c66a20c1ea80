"""The whole study on phantoms, as stages over the library (`make demo`, scripts/demo.py).

phantoms -> ingest -> pilot plan -> pilot sweep (real `deepspeed` launches) -> law fit -> allocation
(budget = scale x the largest pilot) -> two final runs, proportional and transfer-aware (same seed, same
steps) -> lawfit report -> table of predicted vs measured held-out loss (report.md) -> optional
downstream fine-tuning of both encoders.

Stages hand over through files only (each read and written by its owner in voxmix.formats, or `Laws`
for laws.json), so that a rerun can skip a finished stage: each leaves a stamp in <out>/.stages/.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from voxmix.formats.allocation import Allocation, read_allocation, write_allocation
from voxmix.formats.io import atomic_write_json, atomic_write_text
from voxmix.formats.manifest import read_manifest
from voxmix.formats.plan import Plan, PlannedRun, parse_plan, read_plan, write_plan

from .compare import FINALS, compare, table
from .options import REPO, DemoOptions, StudyError, SweepOptions
from .sweep import run_sweep


class Clock:
    """The demo's log lines carry the seconds since it started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        print(f"[demo {self.elapsed():6.1f} s] {msg}", flush=True)


class Stages:
    """Stamp files: a finished stage is skipped on the next run (unless the demo starts --fresh)."""

    def __init__(self, out: Path, clock: Clock):
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock

    def run(self, name: str, fn: Callable[[], None]) -> None:
        stamp = self.dir / f"{name}.done"
        if stamp.exists():
            self.clock.say(f"{name}: done earlier ({stamp.read_text().strip()}), skipped")
            return
        t = time.monotonic()
        self.clock.say(f"{name}: start")
        fn()
        took = f"{time.monotonic() - t:.1f} s"
        atomic_write_text(stamp, took + "\n")
        self.clock.say(f"{name}: finished in {took}")


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    @property
    def phantoms(self) -> Path:
        return self.out / "phantoms"

    @property
    def manifest(self) -> Path:
        return self.out / "data" / "manifest.jsonl"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def final(self) -> Path:
        return self.out / "final"

    def file(self, name: str) -> Path:
        """plan.json, final_plan.json, laws.json, allocation.json, ... directly in the output folder."""
        return self.out / name


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide a stage's chatter (progress lines); show it only if the stage fails."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue()[-8000:])
        raise


def log_points(first: float, last: int, n: int) -> list[int]:
    """n log-spaced integer sample counts from `first` to `last` (fewer where they round together)."""
    return np.unique(np.round(np.geomspace(first, last, n)).astype(int)).tolist()


# ---- stages ------------------------------------------------------------------------------------------
def make_phantoms(o: DemoOptions, p: DemoPaths) -> None:
    from voxmix.trainer.data.phantoms import write_dataset

    with _quiet():
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


def pilot_plan(o: DemoOptions, unique: dict[str, int]) -> Plan:
    """`lawfit plan`'s design with every pilot at `o.pilot_samples` samples (pure)."""
    from voxmix.lawfit.plan import make_plan

    doms = sorted(unique)
    n_runs = len(unique) + max(2, len(unique) // 2) + 2  # lawfit plan's design (docs/lawfit.md)
    # make_plan splits pilot_fraction x target over its runs and caps the fraction at 1: plan the target
    # n_runs x pilot so that each pilot gets exactly pilot_samples; the final budget is set later.
    target = n_runs * o.pilot_samples
    plan = parse_plan(
        make_plan(doms, {d: unique[d] for d in doms}, target, 1.0, n_evals=o.evals, seed=o.seed)
    )
    if not o.min_eval:
        return plan
    # The first tens of optimizer steps are the MAE loss's plateau near 1 (warm-up), not the power law:
    # evaluate each pilot from min_eval samples on, at as many log-spaced points as planned.
    runs = [
        replace(r, eval_at=log_points(min(o.min_eval, r.budget_samples), r.budget_samples, o.evals))
        for r in plan.runs
    ]
    return replace(plan, runs=runs)


def write_pilot_plan(o: DemoOptions, p: DemoPaths) -> None:
    plan = pilot_plan(o, train_counts(p.manifest))
    write_plan(p.file("plan.json"), plan)
    print(f"wrote {p.file('plan.json')}: {len(plan.runs)} runs")
    for r in plan.runs:
        print(f"  {r.run_id:<24} {r.role:<9} {r.budget_samples:>9} samples, {len(r.eval_at)} evals")
    for w in plan.extra.get("warnings", []):
        print(f"lawfit: warning: {w}", file=sys.stderr)


def sweep(o: DemoOptions, p: DemoPaths, plan: Path, runs_dir: Path) -> None:
    """One sweep of real `deepspeed trainer/run.py` launches; a failed run stops the demo."""
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
    if res.failed:
        ids = [x.run.run_id for x in res.failed]
        raise StudyError(f"sweep of {plan}: run(s) {ids} failed; logs in {runs_dir / '_sweep'}")


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


def allocate_budget(o: DemoOptions, p: DemoPaths, budget: int) -> None:
    """`lawfit allocate laws.json --budget-samples B --seed S`, in process."""
    from voxmix.lawfit.allocate import Budget, allocate
    from voxmix.lawfit.lawsfile import Laws

    alloc = allocate(Laws.load(p.file("laws.json")), Budget(samples=budget), weights={}, seed=o.seed)
    write_allocation(p.file("allocation.json"), alloc)
    print(f"wrote {p.file('allocation.json')}: {alloc['budget']['samples']} samples")
    for d, e in alloc["domains"].items():
        print(
            f"  {d:<20} share {e['weight']:.4f}  samples {e['samples']:>10}  hub class {alloc['hubs']['class'][d]}"
        )
    for name, b in alloc["baselines"].items():
        im = b["improvement"]
        print(
            f"  vs {name:<20} improvement {100 * im['raw']:+.2f}% raw, {100 * im['reducible']:+.2f}% reducible"
        )


def final_plan(allocs: dict[str, dict[str, int]], pilot: int, seed: int, n_evals: int) -> Plan:
    """Both final runs in one plan: same budget, seed and evaluation points (all beyond the pilots; pure)."""
    budget = sum(next(iter(allocs.values())).values())
    pts = log_points(1.25 * pilot, budget, n_evals)
    runs = [
        PlannedRun(
            run_id=f"final-{name}",
            role="final",
            # samples / budget reproduces the integer counts exactly under largest-remainder rounding
            mixture={d: n / budget for d, n in s.items()},
            budget_samples=budget,
            eval_at=pts,
            seed=seed,
        )
        for name, s in allocs.items()
    ]
    return Plan(domains=sorted(next(iter(allocs.values()))), runs=runs, extra={"warnings": []})


def final_runs(o: DemoOptions, p: DemoPaths, pilot_max: int) -> None:
    alloc = read_allocation(p.file("allocation.json"))
    prop = {d: int(e["samples"]) for d, e in alloc.extra["baselines"]["proportional"]["domains"].items()}
    total = sum(prop.values())
    # The proportional baseline as an allocation file of its own, so that it can be trained like the other.
    doms = sorted(prop)
    weights = {d: prop[d] / total for d in doms}
    baseline = Allocation(domains=doms, weights=weights, samples={d: prop[d] for d in doms}, total=total)
    write_allocation(p.file("allocation_proportional.json"), baseline)
    allocs = dict(zip(FINALS, (prop, alloc.samples)))
    write_plan(p.file("final_plan.json"), final_plan(allocs, pilot_max, o.seed, o.final_evals))
    sweep(o, p, p.file("final_plan.json"), p.final)


def lawfit_report(p: DemoPaths) -> None:
    from voxmix.lawfit.lawsfile import Laws
    from voxmix.lawfit.report import write_report

    with _quiet():
        alloc = read_allocation(p.file("allocation.json")).to_json()
        write_report(Laws.load(p.file("laws.json")), alloc, p.file("report"))


def final_budget(o: DemoOptions, pilot_max: int) -> int:
    return int(round(o.scale * pilot_max / 8)) * 8  # whole global batches of the tiny preset


def write_result(o: DemoOptions, p: DemoPaths, plan: Plan, budget: int) -> str:
    """comparison.json and report.md from the final runs; returns the table printed at the end."""
    res = compare(p.out)
    atomic_write_json(p.file("comparison.json"), res)
    text = table(res)
    n_fit = sum(r.role == "fit" for r in plan.runs)
    pilot_max = max(r.budget_samples for r in plan.runs)
    md = [
        "# voxmix demo: transfer-aware vs proportional allocation (phantoms, tiny model, CPU)\n",
        f"Pilots: {len(plan.runs)} runs of {pilot_max} samples ({n_fit} fitted, the rest held "
        f"out); final budget {budget} samples ({o.scale:g}x the largest pilot), both final runs with seed "
        f"{o.seed} and the same number of steps. Losses: mean normalized-pixel MAE loss on each domain's fixed "
        "held-out crops. Gain = (proportional - transfer-aware) / proportional; reducible: divided by "
        "(proportional - E) with E the fitted irreducible loss.\n",
        text,
        "Figures and the laws' own report: [report/report.md](report/report.md). Data: `comparison.json`, "
        "`laws.json`, `allocation.json`, run logs in `runs/` and `final/`.\n",
    ]
    atomic_write_text(p.file("report.md"), "\n".join(md))
    return text


def downstream_command(o: DemoOptions, p: DemoPaths) -> list[str]:
    encs = [str(p.final / f"final-{n}" / "encoder.pt") for n in FINALS]
    return [sys.executable, "-m", "trainer.compare_encoders", *encs, "--names", ",".join(FINALS), "--quick",
            "--scratch",  # the control: a random encoder of the same architecture
            "--seeds", str(o.downstream_seeds), "--phantoms", str(p.out / "downstream"),
            "--out", str(p.out / "downstream" / "comparison.json")]  # fmt: skip


def _run_command(cmd: list[str]) -> None:
    res = subprocess.run(cmd, cwd=REPO)
    if res.returncode != 0:
        raise StudyError(f"step failed (exit {res.returncode}): {' '.join(cmd)}")


def downstream(o: DemoOptions, p: DemoPaths, st: Stages) -> None:
    """Fine-tune both final encoders (the quick protocol, ~1 min) when it exists and time allows.

    A command of its own (`python -m trainer.compare_encoders`): the demo prints it when it skips the
    step, and `make demo-full` runs its full protocol.
    """
    cmd = downstream_command(o, p)
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
        f"output in {p.out}; {len(o.domains)} domains, pilots of {o.pilot_samples} samples, final x{o.scale:g}"
    )
    st.run("phantoms", lambda: make_phantoms(o, p))
    st.run("ingest", lambda: ingest_phantoms(o, p))
    st.run("plan", lambda: write_pilot_plan(o, p))
    st.run("pilots", lambda: sweep(o, p, p.file("plan.json"), p.runs))
    plan = read_plan(p.file("plan.json"))
    pilot_max = max(r.budget_samples for r in plan.runs)
    budget = final_budget(o, pilot_max)
    st.run("fit", lambda: fit_pilots(o, p, [p.runs / r.run_id for r in plan.runs if r.role == "fit"]))
    st.run("allocate", lambda: allocate_budget(o, p, budget))
    st.run("final_runs", lambda: final_runs(o, p, pilot_max))
    if o.report:
        st.run("report", lambda: lawfit_report(p))
    text = write_result(o, p, plan, budget)
    print("\n" + text)
    clock.say(f"wrote {p.file('report.md')}")
    downstream(o, p, st)
    return 0
