"""The local launcher: the sweep's runs as subprocesses of this machine, in slots of GPUs or CPU cores.

Each attempt is a real `deepspeed trainer/run.py` launch under a guard (processes.py): when the sweep
stops (an error, Ctrl-C, SIGTERM, SIGHUP) it stops every attempt it started before it exits, and if it is
killed outright the guards end them. A run whose folder a live trainer holds (its lock, runlock.py) is
reported as busy, never started a second time nor moved aside.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from voxmix.formats.plan import PlannedRun
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import read_state

from .launchers import (
    SWEEP_DIR,
    Launcher,
    Outcome,
    busy,
    launch_command,
    move_aside,
    report_busy,
    report_stale,
    say,
)
from .options import REPO, SweepError
from .processes import shielded, start_guarded, stop_all, stop_signals
from .resume import Action, Verdict, settle

POLL_S = 0.5


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
    """The guard of the attempt (guard.py), leader of the process group of the launcher and its ranks."""
    run: PlannedRun
    started: float
    log: IO[str]
    log_path: Path


class LocalLauncher(Launcher):
    """Parallel guarded `deepspeed` subprocesses in slots, polled; failed runs retried per `resume.settle`."""

    def run(self, runs: list[PlannedRun]) -> list[Outcome]:
        slots = plan_slots(
            _device_count(), os.cpu_count() or 1, self.o.gpus_per_run, self.o.parallel, dict(os.environ)
        )
        outcomes, queue = self.classify(runs)
        unit = "GPU(s)" if slots.gpus else "CPU process(es), DS_ACCELERATOR=cpu"
        say(
            f"{len(queue)} of {len(runs)} runs to do, {slots.parallel} at a time, {self.o.gpus_per_run} {unit} each"
        )
        if self.o.dry_run:
            self._print_commands(queue, slots, outcomes)
        elif queue:
            (self.runs_dir / SWEEP_DIR).mkdir(parents=True, exist_ok=True)
            self._drain(queue, slots, outcomes)
        return list(outcomes.values())

    def _print_commands(self, queue: list[PlannedRun], slots: Slots, outcomes: dict[str, Outcome]) -> None:
        for r in queue:
            cmd = launch_command(r, self.o, self.runs_dir / r.run_id, slots.groups[0])
            print(("DS_ACCELERATOR=cpu " if not slots.gpus else "") + shlex.join(cmd))
            outcomes[r.run_id].status = "dry-run"

    def _drain(self, queue: list[PlannedRun], slots: Slots, outcomes: dict[str, Outcome]) -> None:
        """Start runs while slots are free; poll; settle each finished attempt (a retry goes first).

        Whatever ends this loop early (an error, Ctrl-C, SIGTERM or SIGHUP of the sweep) stops the
        attempts still running, and waits for them, before it propagates."""
        running: dict[int, _Attempt] = {}
        free = list(range(slots.parallel))
        t0 = time.monotonic()
        try:
            with stop_signals():
                while queue or running:
                    while queue and free:
                        slot = free.pop(0)
                        att = self._start(queue.pop(0), slot, slots, outcomes)
                        if att is None:
                            free.insert(0, slot)
                        else:
                            running[slot] = att
                    if not running:
                        continue
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
            with shielded():
                if running:
                    say(
                        f"stopping {len(running)} run(s): {', '.join(a.run.run_id for a in running.values())}"
                    )
                stop_all([a.proc for a in running.values()])
                for a in running.values():
                    a.log.close()
            raise

    def _start(self, r: PlannedRun, slot: int, slots: Slots, outcomes: dict[str, Outcome]) -> _Attempt | None:
        """Start an attempt of `r`, or report it (busy, stale) and return None."""
        out, o = self.runs_dir / r.run_id, outcomes[r.run_id]
        who = busy(out)  # again: a trainer may have taken the folder since the sweep began
        if who is not None:
            report_busy(o, out, who)
            return None
        action, st, changed = self.inspect(r)
        if action is Action.STALE:  # its log changed since the sweep began (another writer)
            report_stale(o, out, st, changed)
            return None
        if action is Action.SKIP:
            # Only after an attempt that exited non-zero yet logged `completed`: its other outputs
            # (encoder, checkpoint) may be partial, so the retry starts from scratch.
            action = Action.RESTART
        if action is Action.RESTART and out.exists():
            kind = "stale" if changed else "failed"
            o.note = f"earlier {kind} run moved to {move_aside(out, kind).name}; "
        cmd = launch_command(r, self.o, out, slots.groups[slot]) + (
            ["--resume"] if action is Action.RESUME else []
        )
        o.attempts += 1
        log_path = self.runs_dir / SWEEP_DIR / f"{r.run_id}.attempt{o.attempts}.log"
        log = open(log_path, "w")  # noqa: SIM115 (closed when the attempt is settled)
        resumed = ", resumed" if action is Action.RESUME else ""
        say(f"start {r.run_id} ({r.budget_samples} samples{resumed}) [slot {slot}]")
        try:
            proc = start_guarded(cmd, log=log, env=slots.env, cwd=REPO)
        except BaseException:
            log.close()
            raise
        return _Attempt(proc, r, time.monotonic(), log, log_path)

    def _settle(self, att: _Attempt, o: Outcome, t0: float) -> Verdict:
        r, rc = att.run, att.proc.returncode
        o.seconds += time.monotonic() - att.started
        run_dir = self.runs_dir / r.run_id
        st = read_state(run_dir / RUNLOG)
        verdict = settle(rc, r, st, attempts=o.attempts, retries=self.o.retries, log=str(run_dir / RUNLOG))
        who = busy(run_dir) if verdict is not Verdict.COMPLETED else None
        if who is not None:
            # Another trainer took the folder (it stopped this attempt at its lock): not a failure of the
            # run, and no retry that would move the other trainer's folder aside.
            report_busy(o, run_dir, who)
            return Verdict.FAILED
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
