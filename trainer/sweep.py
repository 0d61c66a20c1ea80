"""Run the pilot runs of a `lawfit plan` file, each a real `deepspeed trainer/run.py` launch.

    python -m trainer.sweep plan.json --runs-dir runs/ --config configs/tiny.yaml --manifest data/manifest.jsonl
        [--launcher local|slurm] [--gpus-per-run N] [--parallel K] [--dry-run] [--set section.field=value ...]

local: a queue over the machine's GPUs (groups of `--gpus-per-run`) or, without a GPU, over CPU process
groups (`DS_ACCELERATOR=cpu`, gloo). slurm: a job array, one task per pending run, each task running this
module for its one run (`--only RUN_ID`), so skipping and the retry are the same as locally.

Checked before anything starts (exit 2, the reason on the console): the plan, each run's trainer config,
whole global batches, and every mixture domain against the manifest.

Resumable: a run whose `runlog.jsonl` ends `completed` is skipped; an interrupted run (no `end` event)
with a checkpoint continues with `--resume`; a failed run is moved aside to `<id>.failedN/` (its log
renamed so that `lawfit fit runs/` ignores it) and retried once from scratch, then reported. A finished
(or interrupted) run whose log records other settings than the plan's (mixture, budget, seed, evaluation
points, trainer config) is *stale*: listed with each field old -> new and not run; `--rerun-stale` moves
it aside to `<id>.staleN/` and runs it again, `--keep-stale` accepts it. A run folder that a live trainer
holds is *busy*: reported with that trainer's pid, never started twice.

Stopping the sweep (Ctrl-C, SIGTERM, SIGHUP) stops the runs it started (launcher and ranks) before it
exits; if the sweep is killed outright (SIGKILL), each run's guard ends them. The summary table is printed
and written to `<runs-dir>/_sweep/summary.json`. Exit 0 when every run is done, 1 when some failed, are
busy or stale, 2 on bad input, 128 + N when stopped by signal N (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from voxmix.trainer.cli import HelpFormatter, prog

if TYPE_CHECKING:
    from voxmix.trainer.study.options import SweepOptions

# voxmix.trainer.study (torch, DeepSpeed's config code: ~7 s cold) is imported after the arguments are
# parsed, so that `--help` and usage errors answer at once.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog("python -m trainer.sweep"), description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("plan", help="plan.json written by `lawfit plan` (voxmix.plan/1)")
    p.add_argument("--runs-dir", required=True, help="one folder per run: <runs-dir>/<run_id>/runlog.jsonl")
    p.add_argument("--config", default="configs/tiny.yaml", help="trainer preset")
    p.add_argument("--manifest", required=True, help="manifest.jsonl of the ingested data")
    p.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="trainer override (repeatable)"
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local processes, or a SLURM job array",
    )
    p.add_argument("--gpus-per-run", type=int, default=1, help="GPUs (or CPU processes) per run")
    p.add_argument("--parallel", type=int, default=0, help="runs at once (default: all GPU groups; 1 on CPU)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed run before reporting it")
    p.add_argument("--only", action="append", metavar="RUN_ID", help="run only these runs of the plan")
    p.add_argument(
        "--sbatch", action="append", metavar="OPTION", help="extra #SBATCH line, e.g. --partition=gpu"
    )
    p.add_argument(
        "--deepspeed",
        default=str(Path(sys.executable).with_name("deepspeed")),
        help="the DeepSpeed launcher (this environment's)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands (or the sbatch script) only")
    stale = p.add_mutually_exclusive_group()
    stale.add_argument(
        "--rerun-stale", action="store_true", help="move stale runs aside to <id>.staleN/ and run them again"
    )
    stale.add_argument("--keep-stale", action="store_true", help="accept stale finished runs as they are")
    return p.parse_args(argv)


def options_from_args(a: argparse.Namespace) -> SweepOptions:
    from voxmix.trainer.study.options import SweepOptions

    return SweepOptions(
        plan=Path(a.plan),
        runs_dir=Path(a.runs_dir),
        manifest=Path(a.manifest),
        config=Path(a.config),
        overrides=tuple(a.set or ()),
        launcher=a.launcher,
        gpus_per_run=a.gpus_per_run,
        parallel=a.parallel,
        retries=a.retries,
        only=tuple(a.only or ()),
        sbatch=tuple(a.sbatch or ()),
        deepspeed=a.deepspeed,
        dry_run=a.dry_run,
        rerun_stale=a.rerun_stale,
        keep_stale=a.keep_stale,
    )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from voxmix.formats.errors import FormatError
    from voxmix.trainer.study.options import SweepError
    from voxmix.trainer.study.sweep import run_sweep

    try:
        result = run_sweep(options_from_args(a))
    except (SweepError, FormatError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # the runs it had started are stopped (trainer/study/local.py)
        signum = getattr(stop, "signum", signal.SIGINT)
        print(
            f"sweep: stopped by {signal.Signals(signum).name}; the runs it had started were stopped. Rerun "
            "the same command to continue (interrupted runs resume from their last checkpoint)",
            file=sys.stderr,
        )
        return 128 + signum
    print(result.summary)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
