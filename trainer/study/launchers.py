"""Launchers of a sweep's runs, one interface: `Launcher.run(runs) -> outcomes`.

`LocalLauncher`: a queue over this machine's GPUs (groups of `gpus_per_run`) or, without a GPU, over CPU
process groups (`DS_ACCELERATOR=cpu`, gloo); each run is a real `deepspeed trainer/run.py` launch, polled,
retried per the policy of `resume.py`. `SlurmLauncher`: one job array, one task per pending run, each
task running `python -m trainer.sweep --only RUN_ID --launcher local`, so that skipping and retrying are
the same as locally.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from voxmix.formats.io import atomic_write_text
from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import RunState, read_state
from voxmix.trainer.pretrain import checkpoint

from .options import REPO, SweepError, SweepOptions
from .resume import Action, Verdict, decide, settle

SWEEP_DIR = "_sweep"
POLL_S = 0.5


@dataclass(kw_only=True)
class Outcome:
    run: PlannedRun
    status: str = "pending"  # done (skipped) | completed | failed | submitted | dry-run
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


def run_state(run_dir: Path, run: PlannedRun) -> tuple[Action, RunState]:
    """The policy's action for a run folder, and the state it was decided on."""
    st = read_state(run_dir / RUNLOG)
    has_ckpt = (run_dir / checkpoint.DIRNAME / checkpoint.LATEST).exists()
    return decide(run, st, has_checkpoint=has_ckpt, log=str(run_dir / RUNLOG)), st


def move_aside(run_dir: Path) -> Path:
    """Keep a failed attempt for inspection where `lawfit fit runs/` does not see it."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.failed{n}").exists():
        n += 1
    dest = run_dir.with_name(f"{run_dir.name}.failed{n}")
    run_dir.rename(dest)
    if (dest / RUNLOG).exists():
        (dest / RUNLOG).rename(dest / "runlog.failed.jsonl")
    return dest


class Launcher(ABC):
    """Runs (or submits) the planned runs of one sweep; every run gets an `Outcome`, in plan order."""

    def __init__(self, options: SweepOptions):
        self.o = options
        self.runs_dir = Path(options.runs_dir)

    @abstractmethod
    def run(self, runs: list[PlannedRun]) -> list[Outcome]: ...


# ---- local -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slots:
    """Where the runs go: `groups[i]` are slot i's GPU ids (None on CPU), and the runs' environment."""

    gpus: int
    groups: list[list[int] | None]
    env: dict[str, str]

    @property
    def parallel(self) -> int:
        return len(self.groups)


def plan_slots(gpus: int, cpus: int, gpus_per_run: int, parallel: int, environ: dict[str, str]) -> Slots:
    """Slots over `gpus` visible GPUs, or CPU process groups when there is none (pure)."""
    if gpus and gpus_per_run > gpus:
        raise SweepError(f"--gpus-per-run {gpus_per_run}: only {gpus} GPU(s) visible")
    slots_max = gpus // gpus_per_run if gpus else max(1, cpus // gpus_per_run)
    n = min(parallel or (slots_max if gpus else 1), slots_max)
    groups = [list(range(i * gpus_per_run, (i + 1) * gpus_per_run)) if gpus else None for i in range(n)]
    env = dict(environ)
    if not gpus:
        env["DS_ACCELERATOR"] = "cpu"
        if n > 1 and "OMP_NUM_THREADS" not in env:
            # The trainer splits the cores between the ranks of one run; here runs also share them.
            env["OMP_NUM_THREADS"] = str(max(1, cpus // (n * gpus_per_run)))
    return Slots(gpus, groups, env)


def _device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class _Attempt:
    proc: subprocess.Popen
    run: PlannedRun
    started: float
    log: IO[str]
    log_path: Path


def _stop(attempts: list[_Attempt], grace_s: float = 10.0) -> None:
    """Stop the runs still going when the sweep itself stops (an error, Ctrl-C): run in process (the
    demo), the sweep must not leave trainers behind. The deepspeed launcher passes SIGTERM to its ranks."""
    for att in attempts:
        att.proc.terminate()
    for att in attempts:
        try:
            att.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            att.proc.kill()
        att.log.close()


class LocalLauncher(Launcher):
    """Parallel `deepspeed` subprocesses in slots, polled; failed runs retried per `resume.settle`."""

    def run(self, runs: list[PlannedRun]) -> list[Outcome]:
        slots = plan_slots(
            _device_count(), os.cpu_count() or 1, self.o.gpus_per_run, self.o.parallel, dict(os.environ)
        )
        (self.runs_dir / SWEEP_DIR).mkdir(parents=True, exist_ok=True)
        outcomes = {r.run_id: Outcome(run=r) for r in runs}
        queue: list[PlannedRun] = []
        for r in runs:
            action, st = run_state(self.runs_dir / r.run_id, r)
            if action is Action.SKIP:
                o = outcomes[r.run_id]
                o.status, o.final_loss, o.note = "done", st.last_loss, "completed earlier: skipped"
            else:
                queue.append(r)
        unit = "GPU(s)" if slots.gpus else "CPU process(es), DS_ACCELERATOR=cpu"
        say(
            f"{len(queue)} of {len(runs)} runs to do, {slots.parallel} at a time, {self.o.gpus_per_run} {unit} each"
        )
        if self.o.dry_run:
            self._print_commands(queue, slots, outcomes)
        else:
            self._drain(queue, slots, outcomes)
        return list(outcomes.values())

    def _print_commands(self, queue: list[PlannedRun], slots: Slots, outcomes: dict[str, Outcome]) -> None:
        for r in queue:
            cmd = launch_command(r, self.o, self.runs_dir / r.run_id, slots.groups[0])
            print(("DS_ACCELERATOR=cpu " if not slots.gpus else "") + shlex.join(cmd))
            outcomes[r.run_id].status = "dry-run"

    def _drain(self, queue: list[PlannedRun], slots: Slots, outcomes: dict[str, Outcome]) -> None:
        """Start runs while slots are free; poll; settle each finished attempt (a retry goes first)."""
        running: dict[int, _Attempt] = {}
        free = list(range(slots.parallel))
        t0 = time.monotonic()
        try:
            while queue or running:
                while queue and free:
                    slot = free.pop(0)
                    running[slot] = self._start(queue.pop(0), slot, slots, outcomes)
                time.sleep(POLL_S)
                for slot, att in list(running.items()):
                    if att.proc.poll() is None:
                        continue
                    att.log.close()
                    del running[slot]
                    free.append(slot)
                    if self._settle(att, outcomes[att.run.run_id], t0) is Verdict.RETRY:
                        queue.insert(0, att.run)
        except BaseException:
            _stop(list(running.values()))
            raise

    def _start(self, r: PlannedRun, slot: int, slots: Slots, outcomes: dict[str, Outcome]) -> _Attempt:
        out, o = self.runs_dir / r.run_id, outcomes[r.run_id]
        action, _ = run_state(out, r)
        if action is Action.SKIP:
            # Only after an attempt that exited non-zero yet logged `completed`: its other outputs
            # (encoder, checkpoint) may be partial, so the retry starts from scratch.
            action = Action.RESTART
        if action is Action.RESTART:
            o.note = f"earlier attempt moved to {move_aside(out).name}; "
        cmd = launch_command(r, self.o, out, slots.groups[slot]) + (
            ["--resume"] if action is Action.RESUME else []
        )
        o.attempts += 1
        log_path = self.runs_dir / SWEEP_DIR / f"{r.run_id}.attempt{o.attempts}.log"
        log = open(log_path, "w")  # noqa: SIM115 (closed when the attempt is settled)
        resumed = ", resumed" if action is Action.RESUME else ""
        say(f"start {r.run_id} ({r.budget_samples} samples{resumed}) [slot {slot}]")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=slots.env, cwd=REPO)
        return _Attempt(proc, r, time.monotonic(), log, log_path)

    def _settle(self, att: _Attempt, o: Outcome, t0: float) -> Verdict:
        r, rc = att.run, att.proc.returncode
        o.seconds += time.monotonic() - att.started
        run_dir = self.runs_dir / r.run_id
        st = read_state(run_dir / RUNLOG)
        verdict = settle(rc, r, st, attempts=o.attempts, retries=self.o.retries, log=str(run_dir / RUNLOG))
        if verdict is Verdict.COMPLETED:
            o.status, o.final_loss = "completed", st.last_loss
            say(f"done  {r.run_id} in {o.seconds:.0f} s (elapsed {time.monotonic() - t0:.0f} s)")
        elif verdict is Verdict.RETRY:
            say(f"FAIL  {r.run_id} (exit {rc}; {att.log_path}): retrying")
        else:
            o.status = "failed"
            o.note += f"exit {rc} after {o.attempts} attempts; see {att.log_path}"
            say(f"FAIL  {r.run_id} (exit {rc}; {att.log_path}): giving up")
        return verdict


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
        pending = [r for r in runs if run_state(self.runs_dir / r.run_id, r)[0] is not Action.SKIP]
        outcomes = [Outcome(run=r, status="done" if r not in pending else "submitted") for r in runs]
        if not pending:
            say("every run is complete: nothing to submit")
            return outcomes
        text = sbatch_script(self.o, pending, self.runs_dir)
        if self.o.dry_run:
            print(text)
            for o in outcomes:
                o.status = "dry-run" if o.status == "submitted" else o.status
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


LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher, "slurm": SlurmLauncher}


def make_launcher(options: SweepOptions) -> Launcher:
    return LAUNCHERS[options.launcher](options)
