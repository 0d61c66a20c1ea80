"""Launchers of a sweep's runs, one interface: `Launcher.run(runs) -> outcomes`, and what they share.

`LocalLauncher` (local.py): a queue over this machine's GPUs (groups of `gpus_per_run`) or, without a GPU,
over CPU process groups (`DS_ACCELERATOR=cpu`, gloo); each run is a real `deepspeed trainer/run.py`
launch under a guard (processes.py), polled, retried per the policy of `resume.py`. `SlurmLauncher`: one
job array, one task per pending run, each task running `python -m trainer.sweep --only RUN_ID --launcher
local`, so that skipping and retrying are the same as locally.

Before anything starts, `Launcher.classify` sorts the runs: complete (skipped), stale (reported: their
folder holds a run with other settings than the plan's), busy (a live trainer holds the folder's lock:
reported, never started twice, never moved aside), or pending.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from voxmix.formats.io import atomic_write_text
from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import RunLogError, RunState, read_runlog, read_state
from voxmix.trainer.pretrain import checkpoint
from voxmix.trainer.pretrain.runlock import describe_holders, holders

from .options import REPO, SweepError, SweepOptions
from .resume import Action, RunDefinition, decide, differences, recorded_definition

SWEEP_DIR = "_sweep"


@dataclass(kw_only=True)
class Outcome:
    run: PlannedRun
    status: str = "pending"  # done (skipped) | completed | failed | busy | stale | submitted | dry-run
    attempts: int = 0
    seconds: float = 0.0
    note: str = ""
    final_loss: dict[str, float] = field(default_factory=dict)


def say(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def trainer_args(run: PlannedRun, o: SweepOptions, out: Path) -> list[str]:
    """`trainer/run.py` and its arguments for one planned run."""
    # repr() writes each weight with all its digits: the trainer sees the plan's float exactly.
    mix = ",".join(f"{d}={w!r}" for d, w in sorted(run.mixture.items()))
    args = [str(REPO / "trainer" / "run.py"), "--config", str(o.config), "--manifest", str(o.manifest)]
    args += ["--mixture", mix, "--budget-samples", str(run.budget_samples), "--out", str(out)]
    args += ["--run-id", run.run_id, "--seed", str(run.seed)]
    if run.eval_at:
        args += ["--eval-at", ",".join(map(str, run.eval_at))]
    for s in o.overrides:
        args += ["--set", s]
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(run: PlannedRun, o: SweepOptions, out: Path, gpus: list[int] | None) -> list[str]:
    """`deepspeed [--include localhost:ids | --num_gpus N] --master_port P trainer/run.py ...`."""
    cmd = [o.deepspeed]
    cmd += (
        ["--include", "localhost:" + ",".join(map(str, gpus))]
        if gpus
        else ["--num_gpus", str(o.gpus_per_run)]
    )
    return cmd + ["--master_port", str(_free_port())] + trainer_args(run, o, out)


def stale_mode(o: SweepOptions) -> str:
    return "rerun" if o.rerun_stale else "keep" if o.keep_stale else "report"


def logged_differences(log: Path, planned: RunDefinition) -> list[str]:
    """How the run logged at `log` differs from `planned` (resume.differences); a log that cannot be
    read is one difference of its own, so that the stale path (report, or --rerun-stale) handles it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last line of a killed writer: read_state's business
            recorded = recorded_definition(read_runlog(log))
    except RunLogError as err:
        return [f"log unreadable ({err})"]
    return differences(recorded, planned)


def inspect_run(
    run_dir: Path, run: PlannedRun, planned: RunDefinition, stale: str
) -> tuple[Action, RunState, list[str]]:
    """The policy's action for a run folder, the state it was decided on, and how the folder's run
    differs from the planned one (only looked at for a run that would be skipped or resumed)."""
    st = read_state(run_dir / RUNLOG)
    has_ckpt = (run_dir / checkpoint.DIRNAME / checkpoint.LATEST).exists()
    changed: list[str] = []
    if st.status == "completed" or (st.status == "running" and has_ckpt):
        changed = logged_differences(run_dir / RUNLOG, planned)
    return decide(run, st, has_checkpoint=has_ckpt, changed=changed, stale=stale), st, changed


def busy(run_dir: Path) -> str | None:
    """Who holds the run folder's lock now (a live trainer), or None."""
    held = holders(run_dir)
    return describe_holders(held) if held else None


def report_busy(o: Outcome, run_dir: Path, who: str) -> None:
    o.status = "busy"
    o.note = f"in use by {who}: not started"
    say(
        f"BUSY  {o.run.run_id}: {run_dir} is in use by another trainer ({who}); not started. Wait for it "
        "to finish or stop it, then rerun the sweep"
    )


def report_stale(o: Outcome, run_dir: Path, st: RunState, changed: list[str]) -> None:
    what = "finished" if st.status == "completed" else "interrupted"
    o.status, o.note = "stale", "differs from the plan: " + "; ".join(changed)
    keep = ", --keep-stale accepts it as it is" if st.status == "completed" else ""
    say(
        f"STALE {o.run.run_id}: {run_dir} holds a {what} run with other settings than the plan's: "
        + "; ".join(changed)
        + f". Not run: --rerun-stale moves it to {run_dir.name}.staleN/ and runs it again{keep} "
        "(or delete the folder)"
    )


def move_aside(run_dir: Path, kind: str = "failed") -> Path:
    """Keep an earlier attempt (`kind`: failed, stale) for inspection where `lawfit fit runs/` does
    not see it: `<id>.<kind>N/`, its log renamed to `runlog.<kind>.jsonl`."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.{kind}{n}").exists():
        n += 1
    dest = run_dir.with_name(f"{run_dir.name}.{kind}{n}")
    run_dir.rename(dest)
    if (dest / RUNLOG).exists():
        (dest / RUNLOG).rename(dest / f"runlog.{kind}.jsonl")
    return dest


class Launcher(ABC):
    """Runs (or submits) the planned runs of one sweep; every run gets an `Outcome`, in plan order."""

    def __init__(self, options: SweepOptions, planned: dict[str, RunDefinition]):
        self.o = options
        self.runs_dir = Path(options.runs_dir)
        self.planned = planned
        """Each run's definition (plan entry and trainer config), by run id: what a folder must hold."""

    def inspect(self, r: PlannedRun) -> tuple[Action, RunState, list[str]]:
        return inspect_run(self.runs_dir / r.run_id, r, self.planned[r.run_id], stale_mode(self.o))

    def classify(self, runs: list[PlannedRun]) -> tuple[dict[str, Outcome], list[PlannedRun]]:
        """Every run's outcome so far (done, stale, busy, or still pending) and the pending runs."""
        outcomes = {r.run_id: Outcome(run=r) for r in runs}
        pending = []
        for r in runs:
            o, run_dir = outcomes[r.run_id], self.runs_dir / r.run_id
            who = busy(run_dir)
            if who is not None:
                report_busy(o, run_dir, who)
                continue
            action, st, changed = self.inspect(r)
            if action is Action.SKIP:
                o.status, o.final_loss = "done", st.last_loss
                o.note = "completed earlier: skipped" + (
                    f" (stale, kept: {'; '.join(changed)})" if changed else ""
                )
            elif action is Action.STALE:
                report_stale(o, run_dir, st, changed)
            else:
                pending.append(r)
        return outcomes, pending

    @abstractmethod
    def run(self, runs: list[PlannedRun]) -> list[Outcome]: ...


# ---- SLURM -------------------------------------------------------------------------------------------
SBATCH = """#!/bin/bash
# Written by `python -m trainer.sweep --launcher slurm`: one array task per pending run of {plan}.
#SBATCH --job-name=voxmix-sweep
#SBATCH --array=0-{last}%{parallel}
#SBATCH --nodes=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --output={logs}/slurm-%A_%a.log
{extra}
set -euo pipefail
RUNS=({ids})
cd {repo}
exec {python} -m trainer.sweep {plan} --runs-dir {runs_dir} --only "${{RUNS[$SLURM_ARRAY_TASK_ID]}}" \\
    --launcher local --gpus-per-run {gpus} --parallel 1 --retries {retries} {passthrough}
"""


def sbatch_script(o: SweepOptions, pending: list[PlannedRun], runs_dir: Path) -> str:
    """The job array's script: each task runs the local launcher on its one run."""
    passthrough = ["--config", str(o.config), "--manifest", str(o.manifest)]
    passthrough += [x for s in o.overrides for x in ("--set", s)]
    passthrough += ["--rerun-stale"] if o.rerun_stale else ["--keep-stale"] if o.keep_stale else []
    return SBATCH.format(
        plan=shlex.quote(str(Path(o.plan).resolve())),
        last=len(pending) - 1,
        parallel=o.parallel or len(pending),
        gpus=o.gpus_per_run,
        cpus=max(4, 8 * o.gpus_per_run),
        logs=(runs_dir / SWEEP_DIR).resolve(),
        extra="\n".join(f"#SBATCH {x}" for x in o.sbatch),
        ids=" ".join(shlex.quote(r.run_id) for r in pending),
        repo=shlex.quote(str(REPO)),
        python=shlex.quote(sys.executable),
        runs_dir=shlex.quote(str(runs_dir.resolve())),
        retries=o.retries,
        passthrough=shlex.join(passthrough),
    )


class SlurmLauncher(Launcher):
    """Submits one job array for the pending runs; a rerun of the sweep shows their outcomes."""

    def run(self, runs: list[PlannedRun]) -> list[Outcome]:
        # Stale and busy runs are reported here, at submission, rather than by each array task.
        by_id, pending = self.classify(runs)
        outcomes = list(by_id.values())
        for r in pending:
            by_id[r.run_id].status = "dry-run" if self.o.dry_run else "submitted"
        if not pending:
            say("no run to submit")
            return outcomes
        text = sbatch_script(self.o, pending, self.runs_dir)
        if self.o.dry_run:
            print(text)
            return outcomes
        script = self.runs_dir.resolve() / SWEEP_DIR / "sweep_array.sbatch"
        atomic_write_text(script, text)
        if shutil.which("sbatch") is None:
            raise SweepError(f"sbatch not found on PATH: submit {script} on the cluster's login node")
        res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SweepError(f"sbatch {script} failed: {res.stderr.strip()}")
        say(
            f"submitted job array {res.stdout.strip()} ({len(pending)} runs); rerun this command to see the summary"
        )
        return outcomes
