"""What each `lawfit` command does (lawfit/cli.py parses the arguments and maps errors to exit codes).

Each `cmd_*` takes the parsed arguments and returns the exit code; bad input raises LawfitError (or a
FormatError from the readers), which the CLI prints. Heavy modules are imported inside the commands:
`lawfit --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import LawfitError


def _pairs(items: list[str] | None, opt: str, conv=float) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise LawfitError(f"{opt} {it!r}: expected DOMAIN=VALUE")
        k, v = it.split("=", 1)
        try:
            out[k] = conv(v)
        except ValueError:
            raise LawfitError(f"{opt} {it!r}: {v!r} is not a valid number") from None
    return out


def _output_file(path: str, example: str) -> None:
    """Refuse, before any work, an output file that names a folder or lies under a file."""
    if Path(path).is_dir():
        raise LawfitError(
            f"-o/--output {path}: is a folder; name the file to write (e.g. {Path(path) / example})"
        )
    _under_folders(path)


def _output_dir(path: str) -> None:
    """Refuse, before any work, an output folder that names a file or lies under a file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise LawfitError(f"-o/--output {path}: is a file, not a folder; name a folder to write into")
    _under_folders(path)


def _under_folders(path: str) -> None:
    for q in Path(path).parents:  # nearest first: the first that exists must be a folder
        if q.exists():
            if not q.is_dir():
                raise LawfitError(f"-o/--output {path}: {q} is a file, not a folder")
            return


def _fit_config(a):
    from .fit import FitConfig

    chosen = {k: getattr(a, k, None) for k in ("bootstrap_method", "interval")}
    return FitConfig(
        bootstrap=getattr(a, "bootstrap", 0),
        **{k: v for k, v in chosen.items() if v},
        seed=a.seed,
        workers=a.workers,
        forms=tuple(a.forms) if a.forms else None,
        progress=not a.quiet,
    )


def _dataset(a):
    from .dataset import build_dataset, load_runs

    ds = build_dataset(load_runs(a.runs), a.domains)
    for w in ds.warnings:
        print(f"lawfit: warning: {w}", file=sys.stderr)
    return ds


def cmd_fit(a) -> int:
    from .study import fit_laws

    _output_file(a.output, "laws.json")
    laws = fit_laws(_dataset(a), _fit_config(a))
    laws.save(a.output)
    sel = laws.fit["selection"]
    print(f"wrote {a.output}: form {laws.form} ({sel['method']})")
    for d in laws.domains:
        t = laws.targets[d]
        rm = laws.fit["per_target"][d]["rmse_log"]
        ok = laws.fit["identifiability"][d]["ok"]
        print(
            f"  {d}: E={t.E:.4g} A={t.A:.4g} alpha={t.alpha:.3f} d0={t.d0:.4g} rmse(log)={rm:.4f} "
            f"noise(log)={laws.fit['noise'][d]['sigma_log']:.4f}{'' if ok else '  NOT fully identified'}"
        )
    return 0


def cmd_allocate(a) -> int:
    from voxmix.formats.allocation import write_allocation

    from .allocate import Budget, allocate
    from .lawsfile import Laws

    if a.budget_samples is not None and a.budget_hours is not None:
        raise LawfitError("give one budget: --budget-samples or --budget-hours, not both")
    _output_file(a.output, "allocation.json")
    budget = Budget(
        samples=a.budget_samples, seconds=None if a.budget_hours is None else a.budget_hours * 3600.0
    )
    laws = Laws.load(a.laws)
    alloc = allocate(
        laws,
        budget,
        weights=_pairs(a.weights, "--weights"),
        max_epochs=a.max_epochs,
        min_share=a.min_share,
        seed=a.seed,
    )
    write_allocation(a.output, alloc)
    print(f"wrote {a.output}: {alloc['budget']['samples']} samples")
    for d, e in alloc["domains"].items():
        print(
            f"  {d:<20} share {e['weight']:.4f}  samples {e['samples']:>10}  "
            f"predicted loss {alloc['predicted_loss'][d]:.4f}  hub class {alloc['hubs']['class'][d]}"
        )
    for name, b in alloc["baselines"].items():
        im = b["improvement"]
        iv = im.get("raw_interval")
        ivs = f" (bootstrap interval {100 * iv[0]:+.2f}% to {100 * iv[1]:+.2f}%)" if iv else ""
        print(
            f"  vs {name:<20} improvement {100 * im['raw']:+.2f}% raw{ivs}, "
            f"{100 * im['reducible']:+.2f}% reducible"
        )
    k = alloc["objective"]["kkt"]
    print(
        f"  optimality (KKT) {'satisfied' if k['satisfied'] else 'NOT satisfied'}: "
        f"relative violation {k['relative_violation']:.1e}"
    )
    return 0


def cmd_validate(a) -> int:
    from voxmix.formats.io import atomic_write_json

    from .validate import format_table, validate

    if a.output:
        _output_file(a.output, "scores.json")
    res = validate(_dataset(a), a.fit_max_samples, _fit_config(a))
    print(format_table(res))
    if a.output:
        atomic_write_json(a.output, res)
    return 0


def cmd_plan(a) -> int:
    from voxmix.formats.plan import write_plan

    from .plan import make_plan

    _output_file(a.output, "plan.json")
    plan = make_plan(
        a.domains,
        _pairs(a.unique, "--unique", int),
        a.target_budget,
        a.pilot_fraction,
        design=a.design,
        global_batch=a.global_batch,
        pilot_samples=a.pilot_samples,
        first_eval=a.first_eval,
        n_mixtures=a.mixtures,
        n_evals=a.evals,
        seed=a.seed,
        max_epochs=a.max_epochs,
    )
    write_plan(a.output, plan)
    print(
        f"wrote {a.output}: design {plan['design']}, {len(plan['runs'])} runs, {plan['pilot_samples']} "
        f"pilot samples ({100 * plan['pilot_samples'] / plan['target_budget']:.1f}% of the target budget), "
        f"global batch {plan['global_batch']}"
    )
    for r in plan["runs"]:
        print(
            f"  {r['run_id']:<24} {r['role']:<9} {r['budget_samples']:>9} samples, {len(r['eval_at'])} evals"
        )
    for w in plan["warnings"]:
        print(f"lawfit: warning: {w}", file=sys.stderr)
    return 0


def cmd_report(a) -> int:
    from voxmix.formats.allocation import read_allocation

    from .lawsfile import Laws
    from .report import write_report

    _output_dir(a.output)
    laws = Laws.load(a.laws)
    alloc = read_allocation(a.allocation) if a.allocation else None
    holdout = None
    if a.runs:
        from .dataset import build_dataset, load_runs

        holdout = build_dataset(load_runs(a.runs))  # every domain of the runs; report maps them to the laws'
        for w in holdout.warnings:
            print(f"lawfit: warning: {w}", file=sys.stderr)
    files = write_report(laws, alloc, a.output, holdout=holdout)
    print(f"wrote {len(files)} files to {a.output}: " + ", ".join(p.name for p in files))
    return 0


def cmd_simulate(a) -> int:
    from voxmix.formats.plan import plan_json, read_plan

    from .lawsfile import Laws
    from .simulate import default_design, simulate_runs

    _output_dir(a.output)
    laws = Laws.load(a.truth)
    if a.plan:
        plan = plan_json(read_plan(a.plan))
    else:
        plan = default_design(
            laws, budget_per_run=a.budget_per_run, n_mixtures=a.mixtures, n_evals=a.evals, seed=a.seed
        )
    paths = simulate_runs(
        laws,
        plan,
        a.output,
        noise=a.noise,
        run_noise=a.run_noise,
        seed=a.seed,
        overwrite=a.overwrite,
        where=a.plan or "the default design",
    )
    print(f"wrote {len(paths)} simulated runs to {a.output}")
    return 0
