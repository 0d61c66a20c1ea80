"""The `lawfit` command: fit, allocate, validate, plan, report, simulate (see README and docs/lawfit.md).
The commands themselves are in lawfit/commands.py."""

from __future__ import annotations

import argparse
import errno
import functools
import sys
import warnings

from voxmix.formats.errors import FormatError

from .commands import cmd_allocate, cmd_fit, cmd_plan, cmd_report, cmd_simulate, cmd_validate
from .errors import LawfitError

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
