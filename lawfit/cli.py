"""The `lawfit` command: fit, allocate, validate, plan, report, simulate (see README and docs/lawfit.md)."""

from __future__ import annotations

import argparse
import errno
import functools
import sys
import warnings
from pathlib import Path

from voxmix.formats.errors import FormatError

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


_BAD_PATH = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in `--help`, except where there is none to show (None, a flag's False) or
    the help text states it already, "(default ...)". trainer/cli.py's HelpFormatter does the same for
    the trainer's commands; lawfit may not import the trainer."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d, text = action.default, action.help or ""
        if action.required or d is None or d is False or "(default" in text:
            return action.help
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """`--version`: voxmix's version and lawfit's scientific stack's, read from the installed metadata
    only when asked (nothing is imported; reading it costs ~0.1 s, too much for every command)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the versions")

    def __call__(self, parser, namespace, values, option_string=None):
        import platform
        from importlib import metadata

        from voxmix import __version__

        deps = ", ".join(f"{d} {metadata.version(d)}" for d in ("numpy", "scipy"))
        print(f"lawfit (voxmix {__version__}; python {platform.python_version()}, {deps})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lawfit", description="Transfer-aware scaling laws and data allocation.", formatter_class=_Help
    )
    p.add_argument("-V", "--version", action=_Version)
    # Every command's parser shows its defaults too (add_parser does not inherit formatter_class).
    sub = p.add_subparsers(
        dest="cmd",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Help),
    )

    def fit_opts(s):
        s.add_argument(
            "runs", nargs="+", help="run directories, runlog.jsonl files, globs, or parent folders"
        )
        s.add_argument("--domains", nargs="+", help="domains to model (default: all in the runs)")
        s.add_argument("--forms", nargs="+", help="candidate law forms (default: chosen from the data)")
        s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
        s.add_argument("--seed", type=int, default=0, help="bootstrap resamples and cross-validation folds")
        s.add_argument("--quiet", action="store_true", help="no progress output")

    s = sub.add_parser("fit", help="fit the laws to run logs")
    fit_opts(s)
    s.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples (0: none)")
    s.add_argument(
        "--bootstrap-method",
        choices=("runs", "parametric"),
        help="runs: resample whole runs; parametric: keep the runs, draw new per-run and per-evaluation "
        "noise (default: FitConfig's; docs/lawfit.md)",
    )
    s.add_argument(
        "--interval",
        choices=("percentile", "bc"),
        help="percentile, or bc (bias-corrected percentile) intervals (default: FitConfig's; docs/lawfit.md)",
    )
    s.add_argument("-o", "--output", required=True, help="laws.json to write")
    s.set_defaults(fn=cmd_fit)

    s = sub.add_parser("allocate", help="optimal data allocation for a budget")
    s.add_argument("laws", help="laws.json written by `lawfit fit`")
    s.add_argument("--budget-samples", type=int, help="the budget in samples (or --budget-hours)")
    s.add_argument("--budget-hours", type=float, help="uses each domain's measured seconds per sample")
    s.add_argument("--weights", nargs="+", metavar="D=W", help="objective weight per domain (default 1)")
    s.add_argument(
        "--max-epochs", type=float, help="cap: at most this many passes over a domain's unique data"
    )
    s.add_argument("--min-share", type=float, default=0.0, help="floor: each domain gets this share at least")
    s.add_argument("--seed", type=int, default=0, help="random starts of the optimizer")
    s.add_argument("-o", "--output", required=True, help="allocation.json to write")
    s.set_defaults(fn=cmd_allocate)

    s = sub.add_parser("validate", help="fit on early evaluations, predict later ones")
    fit_opts(s)
    s.add_argument(
        "--fit-max-samples", type=float, required=True, help="fit on evaluations up to this many samples"
    )
    s.add_argument("-o", "--output", help="write the scores as JSON")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("plan", help="propose pilot runs within a fraction of the target budget")
    s.add_argument("--domains", nargs="+", required=True, help="the domains to plan pilots for")
    s.add_argument("--unique", nargs="+", required=True, metavar="D=N", help="unique samples per domain")
    s.add_argument("--target-budget", type=int, required=True, help="samples of the final run")
    s.add_argument("--pilot-fraction", type=float, default=0.1, help="ignored with --pilot-samples")
    s.add_argument(
        "--design",
        choices=("pairs", "random", "pairs+loo"),
        default="pairs",
        help="pairs: singles + pairwise 50/50 mixtures + far-apart holdouts; random: singles + random "
        "mixtures; pairs+loo: pairs + leave-one-out mixtures (docs/lawfit.md)",
    )
    s.add_argument(
        "--global-batch",
        type=int,
        default=8,
        help="the trainer's samples per optimizer step (data.batch_size x GPUs x optim.grad_accum): "
        "every budget and evaluation point is a multiple of it",
    )
    s.add_argument("--pilot-samples", type=int, help="samples per run (rounded down to the global batch)")
    s.add_argument("--first-eval", type=int, help="first evaluation point (default budget/64)")
    s.add_argument("--mixtures", type=int, help="random design: mixtures (default max(2, domains/2))")
    s.add_argument("--evals", type=int, default=8, help="evaluation points per run (log-spaced)")
    s.add_argument(
        "--max-epochs", type=float, help="cap: at most this many passes over a domain's unique data"
    )
    s.add_argument(
        "--seed", type=int, default=0, help="the random design's mixtures and the runs' seeds (seed + i)"
    )
    s.add_argument("-o", "--output", required=True, help="plan.json to write")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("report", help="figures and a markdown summary")
    s.add_argument("laws", help="laws.json written by `lawfit fit`")
    s.add_argument("allocation", nargs="?", help="allocation.json written by `lawfit allocate` (optional)")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument(
        "--runs",
        nargs="+",
        metavar="DIR",
        help="run logs to draw over the fitted points; runs the laws were not fitted on are shown as held out",
    )
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("simulate", help="write run logs drawn from known laws")
    s.add_argument("--truth", required=True, help="laws file (voxmix.laws/1) holding the true laws")
    s.add_argument("--plan", help="plan.json of the runs to simulate (default: a standard design)")
    s.add_argument("--budget-per-run", type=int, default=20000, help="samples per run of the default design")
    s.add_argument(
        "--mixtures", type=int, help="random design with this many mixtures (default: the pairs design)"
    )
    s.add_argument("--evals", type=int, default=10, help="evaluation points per run of the default design")
    s.add_argument("--noise", type=float, default=0.01, help="lognormal sigma of the observed loss")
    s.add_argument(
        "--run-noise",
        type=float,
        default=0.0,
        help="lognormal sigma of one offset per run and domain, shared by the run's evaluations",
    )
    s.add_argument("--seed", type=int, default=0, help="the noise and the default design")
    s.add_argument("--overwrite", action="store_true", help="replace run folders that exist")
    s.add_argument("-o", "--output", required=True, help="folder for the run directories")
    s.set_defaults(fn=cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return args.fn(args)
    except (LawfitError, FormatError) as exc:
        print(f"lawfit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A path the system refuses (no permission, read-only, a file where a folder must be) is bad
        # input: exit 2; a disk that fails (full, I/O error) fails the run: exit 1.
        print(f"lawfit: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2 if exc.errno in _BAD_PATH else 1
    except KeyboardInterrupt:
        print("lawfit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
