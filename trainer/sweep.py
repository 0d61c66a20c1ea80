"""Run the pilot runs of a `lawfit plan` file, each a real `deepspeed trainer/run.py` launch.

    python -m trainer.sweep plan.json --runs-dir runs/ --config configs/tiny.yaml --manifest data/manifest.jsonl
        [--launcher local|slurm] [--gpus-per-run N] [--parallel K] [--dry-run] [--set section.field=value ...]

local: a queue over the machine's GPUs (groups of `--gpus-per-run`) or, without a GPU, over CPU process
groups (`DS_ACCELERATOR=cpu`, gloo). slurm: a job array, one task per pending run, each task running this
module for its one run (`--only RUN_ID`), so skipping and the retry are the same as locally.

Resumable: a run whose `runlog.jsonl` ends `completed` is skipped; an interrupted run (no `end` event)
with a checkpoint continues with `--resume`; a failed run is moved aside to `<id>.failedN/` (its log
renamed so that `lawfit fit runs/` ignores it) and retried once from scratch, then reported. The summary
table is printed and written to `<runs-dir>/_sweep/summary.json`. Exit 0 when every run completed, 1 when
some failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from voxmix.formats.errors import FormatError
from voxmix.formats.io import atomic_write_json, atomic_write_text
from voxmix.formats.plan import PlannedRun, read_plan
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import read_state

REPO = Path(__file__).resolve().parents[1]


class SweepError(ValueError):
    """Bad input (plan, options): the message names the file and field."""


@dataclass(kw_only=True)
class Outcome:
    run: PlannedRun
    status: str = "pending"  # done (skipped) | completed | failed | dry-run
    attempts: int = 0
    seconds: float = 0.0
    note: str = ""
    final_loss: dict[str, float] = field(default_factory=dict)


def run_state(run_dir: Path, run: PlannedRun) -> tuple[str, dict[str, float]]:
    """('done' | 'interrupted' | 'failed' | 'new', last eval losses) of a run folder."""
    st = read_state(run_dir / RUNLOG)
    if st.started and st.budget_samples != run.budget_samples:
        raise SweepError(
            f"{run_dir / RUNLOG}: budget_samples {st.budget_samples} differs from the plan's "
            f"{run.budget_samples} for run {run.run_id!r}: remove the folder or use another --runs-dir"
        )
    kind = {"new": "new", "running": "interrupted", "completed": "done", "failed": "failed"}[st.status]
    return kind, st.last_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trainer_args(run: PlannedRun, a, out: Path) -> list[str]:
    mix = ",".join(f"{d}={w!r}" for d, w in sorted(run.mixture.items()))
    args = [str(REPO / "trainer" / "run.py"), "--config", a.config, "--manifest", a.manifest]
    args += ["--mixture", mix, "--budget-samples", str(run.budget_samples), "--out", str(out)]
    args += ["--run-id", run.run_id, "--seed", str(run.seed)]
    if run.eval_at:
        args += ["--eval-at", ",".join(map(str, run.eval_at))]
    for s in a.set or []:
        args += ["--set", s]
    return args


def launch_command(run: PlannedRun, a, out: Path, gpus: list[int] | None) -> list[str]:
    """`deepspeed [--include localhost:ids | --num_gpus N] --master_port P trainer/run.py ...`."""
    cmd = [a.deepspeed]
    cmd += (
        ["--include", "localhost:" + ",".join(map(str, gpus))]
        if gpus
        else ["--num_gpus", str(a.gpus_per_run)]
    )
    return cmd + ["--master_port", str(_free_port())] + trainer_args(run, a, out)


def _move_aside(run_dir: Path) -> Path:
    """Keep a failed attempt for inspection where `lawfit fit runs/` does not see it."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.failed{n}").exists():
        n += 1
    dest = run_dir.with_name(f"{run_dir.name}.failed{n}")
    run_dir.rename(dest)
    if (dest / RUNLOG).exists():
        (dest / RUNLOG).rename(dest / "runlog.failed.jsonl")
    return dest


def run_local(runs: list[PlannedRun], a, runs_dir: Path) -> list[Outcome]:
    n_dev = _device_count()
    if n_dev and a.gpus_per_run > n_dev:
        raise SweepError(f"--gpus-per-run {a.gpus_per_run}: only {n_dev} GPU(s) visible")
    slots_max = n_dev // a.gpus_per_run if n_dev else max(1, (os.cpu_count() or 1) // a.gpus_per_run)
    parallel = min(a.parallel or (slots_max if n_dev else 1), slots_max)
    groups = [
        list(range(i * a.gpus_per_run, (i + 1) * a.gpus_per_run)) if n_dev else None for i in range(parallel)
    ]
    env = dict(os.environ)
    if not n_dev:
        env["DS_ACCELERATOR"] = "cpu"
        if parallel > 1 and "OMP_NUM_THREADS" not in env:
            # The trainer splits the cores between the ranks of one run; here runs also share them.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (parallel * a.gpus_per_run)))
    logs = runs_dir / "_sweep"
    logs.mkdir(parents=True, exist_ok=True)
    outcomes = {r.run_id: Outcome(run=r) for r in runs}
    queue: list[PlannedRun] = []
    for r in runs:
        state, loss = run_state(runs_dir / r.run_id, r)
        if state == "done":
            outcomes[r.run_id].status, outcomes[r.run_id].final_loss = "done", loss
            outcomes[r.run_id].note = "completed earlier: skipped"
        else:
            queue.append(r)
    unit = "GPU(s)" if n_dev else "CPU process(es), DS_ACCELERATOR=cpu"
    _say(f"{len(queue)} of {len(runs)} runs to do, {parallel} at a time, {a.gpus_per_run} {unit} each")
    if a.dry_run:
        for r in queue:
            cmd = launch_command(r, a, runs_dir / r.run_id, groups[0])
            print(("DS_ACCELERATOR=cpu " if not n_dev else "") + shlex.join(cmd))
            outcomes[r.run_id].status = "dry-run"
        return list(outcomes.values())
    running: dict[int, tuple[subprocess.Popen, PlannedRun, float, object]] = {}
    free = list(range(parallel))
    t0 = time.monotonic()
    while queue or running:
        while queue and free:
            r, slot = queue.pop(0), free.pop(0)
            out, o = runs_dir / r.run_id, outcomes[r.run_id]
            state, _ = run_state(out, r)
            resume = state == "interrupted" and (out / "checkpoints" / "latest.json").exists()
            if state in ("failed", "interrupted") and not resume:
                o.note = f"earlier attempt moved to {_move_aside(out).name}; "
            cmd = launch_command(r, a, out, groups[slot]) + (["--resume"] if resume else [])
            o.attempts += 1
            log = open(logs / f"{r.run_id}.attempt{o.attempts}.log", "w")  # noqa: SIM115 (closed below)
            _say(
                f"start {r.run_id} ({r.budget_samples} samples{', resumed' if resume else ''}) [slot {slot}]"
            )
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            running[slot] = (p, r, time.monotonic(), log)
        time.sleep(0.5)
        for slot, (p, r, started, log) in list(running.items()):
            if p.poll() is None:
                continue
            log.close()
            del running[slot]
            free.append(slot)
            o = outcomes[r.run_id]
            o.seconds += time.monotonic() - started
            state, loss = run_state(runs_dir / r.run_id, r)
            if p.returncode == 0 and state == "done":
                o.status, o.final_loss = "completed", loss
                _say(f"done  {r.run_id} in {o.seconds:.0f} s (elapsed {time.monotonic() - t0:.0f} s)")
            elif o.attempts <= a.retries:
                _say(f"FAIL  {r.run_id} (exit {p.returncode}; {log.name}): retrying")
                queue.insert(0, r)
            else:
                o.status = "failed"
                o.note += f"exit {p.returncode} after {o.attempts} attempts; see {log.name}"
                _say(f"FAIL  {r.run_id} (exit {p.returncode}; {log.name}): giving up")
    return list(outcomes.values())


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


def run_slurm(runs: list[PlannedRun], a, runs_dir: Path) -> list[Outcome]:
    pending = [r for r in runs if run_state(runs_dir / r.run_id, r)[0] != "done"]
    outcomes = [Outcome(run=r, status="done" if r not in pending else "submitted") for r in runs]
    if not pending:
        _say("every run is complete: nothing to submit")
        return outcomes
    logs = (runs_dir / "_sweep").resolve()
    passthrough = ["--config", a.config, "--manifest", a.manifest] + [
        x for s in a.set or [] for x in ("--set", s)
    ]
    text = SBATCH.format(
        plan=shlex.quote(str(Path(a.plan).resolve())),
        last=len(pending) - 1,
        parallel=a.parallel or len(pending),
        gpus=a.gpus_per_run,
        cpus=max(4, 8 * a.gpus_per_run),
        logs=logs,
        extra="\n".join(f"#SBATCH {x}" for x in a.sbatch or []),
        ids=" ".join(shlex.quote(r.run_id) for r in pending),
        repo=shlex.quote(str(REPO)),
        python=shlex.quote(sys.executable),
        runs_dir=shlex.quote(str(runs_dir.resolve())),
        retries=a.retries,
        passthrough=shlex.join(passthrough),
    )
    if a.dry_run:
        print(text)
        for o in outcomes:
            o.status = "dry-run" if o.status == "submitted" else o.status
        return outcomes
    logs.mkdir(parents=True, exist_ok=True)
    script = logs / "sweep_array.sbatch"
    atomic_write_text(script, text)
    if shutil.which("sbatch") is None:
        raise SweepError(f"sbatch not found on PATH: submit {script} on the cluster's login node")
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SweepError(f"sbatch {script} failed: {res.stderr.strip()}")
    _say(
        f"submitted job array {res.stdout.strip()} ({len(pending)} runs); rerun this command to see the summary"
    )
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    rows = [f"{'run':<26} {'role':<9} {'samples':>8} {'status':<10} {'tries':>5} {'time':>7}  mean loss"]
    for o in outcomes:
        loss = f"{sum(o.final_loss.values()) / len(o.final_loss):.4f}" if o.final_loss else "-"
        rows.append(
            f"{o.run.run_id:<26} {o.run.role:<9} {o.run.budget_samples:>8} {o.status:<10} "
            f"{o.attempts:>5} {o.seconds:>6.0f}s  {loss}  {o.note}".rstrip()
        )
    return "\n".join(rows)


def _say(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("plan", help="plan.json written by `lawfit plan` (voxmix.plan/1)")
    p.add_argument("--runs-dir", required=True, help="one folder per run: <runs-dir>/<run_id>/runlog.jsonl")
    p.add_argument("--config", default="configs/tiny.yaml", help="trainer preset (default configs/tiny.yaml)")
    p.add_argument("--manifest", required=True, help="manifest.jsonl of the ingested data")
    p.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="trainer override (repeatable)"
    )
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--gpus-per-run", type=int, default=1, help="GPUs (or CPU processes) per run")
    p.add_argument("--parallel", type=int, default=0, help="runs at once (default: all GPU groups; 1 on CPU)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed run before reporting it")
    p.add_argument("--only", action="append", metavar="RUN_ID", help="run only these runs of the plan")
    p.add_argument(
        "--sbatch", action="append", metavar="OPTION", help="extra #SBATCH line, e.g. --partition=gpu"
    )
    p.add_argument("--deepspeed", default=str(Path(sys.executable).with_name("deepspeed")))
    p.add_argument("--dry-run", action="store_true", help="print the commands (or the sbatch script) only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        if a.gpus_per_run < 1 or a.parallel < 0 or a.retries < 0:
            raise SweepError("--gpus-per-run must be >= 1, --parallel and --retries >= 0")
        for opt, path in (("--config", a.config), ("--manifest", a.manifest)):
            if not Path(path).is_file():
                raise SweepError(f"{opt} {path}: no such file")
        a.config, a.manifest = str(Path(a.config).resolve()), str(Path(a.manifest).resolve())
        runs = read_plan(a.plan).runs
        if a.only:
            unknown = sorted(set(a.only) - {r.run_id for r in runs})
            if unknown:
                raise SweepError(f"--only {unknown}: not in {a.plan}")
            runs = [r for r in runs if r.run_id in a.only]
        runs_dir = Path(a.runs_dir).resolve()
        if a.deepspeed and not Path(a.deepspeed).exists() and shutil.which(a.deepspeed) is None:
            raise SweepError(f"--deepspeed {a.deepspeed}: no such launcher")
        outcomes = (run_slurm if a.launcher == "slurm" else run_local)(runs, a, runs_dir)
    except (SweepError, FormatError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    print(summary(outcomes))
    if not a.dry_run:
        atomic_write_json(
            runs_dir / "_sweep" / ("summary.json" if not a.only else f"summary.{'+'.join(a.only)}.json"),
            {
                "plan": str(Path(a.plan).resolve()),
                "runs": [
                    {
                        "run_id": o.run.run_id,
                        "role": o.run.role,
                        "status": o.status,
                        "attempts": o.attempts,
                        "seconds": round(o.seconds, 2),
                        "final_loss": o.final_loss,
                        "note": o.note,
                    }
                    for o in outcomes
                ],
            },
        )
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
