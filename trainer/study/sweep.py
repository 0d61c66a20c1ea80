"""A sweep: the runs of one plan through one launcher, then a summary (`run_sweep`).

Checked before anything starts: the plan (formats/plan.py), every run's trainer config (the preset, the
`--set` overrides and the run's budget, seed and evaluation points, validated by the trainer's own
config code), whole global batches, and every mixture domain against the manifest.

Resumable: a run whose log ends `completed` is skipped; an interrupted one with a checkpoint continues;
a failed one is moved aside to `<id>.failedN/` and retried from scratch; a finished or interrupted run
whose log records other settings than the plan's is stale: reported, or moved aside to `<id>.staleN/`
and rerun (`--rerun-stale`), or accepted (`--keep-stale`); a folder a live trainer holds is busy:
reported, not started (policy: resume.py). The summary is written to `<runs_dir>/_sweep/summary.json`
(unless a dry run).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from voxmix.formats.io import atomic_write_json
from voxmix.formats.manifest import read_manifest
from voxmix.formats.plan import Plan, PlannedRun, read_plan
from voxmix.trainer.pretrain.config import ConfigError, load_config
from voxmix.trainer.pretrain.optim import deepspeed_config

from .launchers import SWEEP_DIR, Launcher, Outcome, SlurmLauncher
from .local import LocalLauncher
from .options import SweepError, SweepOptions
from .resume import RunDefinition, planned_definition

LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher, "slurm": SlurmLauncher}
NOT_DONE = ("failed", "busy", "stale")


@dataclass(frozen=True)
class SweepResult:
    outcomes: list[Outcome]
    summary: str
    """The table printed by `python -m trainer.sweep`."""

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def not_done(self) -> list[Outcome]:
        """Failed runs, busy ones (another trainer holds the folder) and stale ones (not rerun)."""
        return [o for o in self.outcomes if o.status in NOT_DONE]

    @property
    def exit_code(self) -> int:
        """0 when every run is done (or submitted, or printed), 1 otherwise (the command's exit status)."""
        return 1 if self.not_done else 0


def check_inputs(o: SweepOptions) -> SweepOptions:
    """The options with absolute paths (the runs start in the repository); missing inputs raise."""
    for opt, path in (("--config", o.config), ("--manifest", o.manifest)):
        if not Path(path).is_file():
            raise SweepError(f"{opt} {path}: no such file")
    return replace(
        o,
        config=Path(o.config).resolve(),
        manifest=Path(o.manifest).resolve(),
        runs_dir=Path(o.runs_dir).resolve(),
    )


def trainer_global_batch(o: SweepOptions) -> tuple[int, str]:
    """The samples of one optimizer step of every run, and how they come about.

    Taken from the trainer itself: its config as trainer/run.py builds it (the preset and the sweep's
    `--set` overrides; the other flags the sweep passes do not touch the batch) and the DeepSpeed
    `train_batch_size` the trainer hands DeepSpeed for `gpus_per_run` ranks (`train.deepspeed` entries
    included), = data.batch_size x ranks x optim.grad_accum, what the train loop steps by.
    """
    try:
        cfg = load_config(o.config, list(o.overrides))
    except ConfigError as err:
        raise SweepError(f"--config {o.config} (with --set {list(o.overrides)}): {err}") from None
    ds = deepspeed_config(cfg, world_size=o.gpus_per_run, bf16=False)
    how = (
        f"data.batch_size {ds['train_micro_batch_size_per_gpu']} x {o.gpus_per_run} GPU(s) per run x "
        f"optim.grad_accum {ds['gradient_accumulation_steps']}, from {o.config}"
    )
    return int(ds["train_batch_size"]), how


def check_global_batch(runs: list[PlannedRun], batch: int, how: str, plan: str) -> None:
    """Refuse a plan whose budgets or evaluation points are not multiples of the trainer's global batch.

    The trainer trains whole optimizer steps (a 25-sample budget at batch 8 trains 24 and logs 24), and
    evaluates at the first step boundary at or after each point: such a run would be refused when it
    ends ("budget_samples differs from the plan's") or fitted at other sample counts than planned.
    """
    bad = []
    for r in runs:
        off = [x for x in r.eval_at if x % batch]
        if r.budget_samples % batch or off:
            what = []
            if r.budget_samples % batch:
                what.append(f"budget_samples {r.budget_samples} (trains {r.budget_samples // batch * batch})")
            if off:
                what.append(f"eval_at {off}")
            bad.append(f"  {r.run_id}: " + ", ".join(what))
    if not bad:
        return
    shown = bad[:10] + ([f"  ... and {len(bad) - 10} more"] if len(bad) > 10 else [])
    raise SweepError(
        f"{plan}: {len(bad)} run(s) are not whole optimizer steps of the trainer's global batch {batch} "
        f"({how}):\n" + "\n".join(shown) + f"\nnothing was started; plan again with `lawfit plan ... "
        f"--global-batch {batch}` (or change --gpus-per-run, data.batch_size or optim.grad_accum)"
    )


def run_config(o: SweepOptions, run: PlannedRun, plan: str) -> dict:
    """The trainer config of one run, built as trainer/run.py builds it from the sweep's command line
    (`--set` overrides first, then the run's budget, seed and evaluation points); refused here, before
    anything starts, where the trainer would refuse it at launch (a seed out of its range, say)."""
    sets = [*o.overrides, f"train.budget_samples={run.budget_samples}", f"train.seed={run.seed}"]
    if run.eval_at:
        sets.append(f"eval.at={list(run.eval_at)}")
    try:
        return load_config(o.config, sets).to_dict()
    except ConfigError as err:
        raise SweepError(
            f"{plan}: run {run.run_id!r} (its budget_samples, seed and eval_at are the trainer's "
            f"train.budget_samples, train.seed and eval.at): the trainer would refuse it: {err}; nothing was "
            "started"
        ) from None


def planned_definitions(o: SweepOptions, runs: list[PlannedRun], plan: str) -> dict[str, RunDefinition]:
    return {r.run_id: planned_definition(r, run_config(o, r, plan)) for r in runs}


def check_domains(runs: list[PlannedRun], manifest: Path, plan: str) -> None:
    """Every mixture domain of every run must be one of the manifest's, with training volumes where
    its weight is > 0: else the run would fail at launch, be retried and fail again."""
    m = read_manifest(manifest)
    known = set(m.domains())
    train = {d for d in known if m.select(domain=d, split="train")}
    bad = []
    for r in runs:
        unknown = sorted(d for d in r.mixture if d not in known)
        empty = sorted(d for d, w in r.mixture.items() if w > 0 and d in known and d not in train)
        if unknown:
            bad.append(f"  {r.run_id}: domain(s) {unknown} not in the manifest")
        if empty:
            bad.append(f"  {r.run_id}: domain(s) {empty} have weight > 0 but no 'train' volumes")
    if bad:
        shown = bad[:10] + ([f"  ... and {len(bad) - 10} more"] if len(bad) > 10 else [])
        raise SweepError(
            f"{plan}: {len(bad)} run(s) name domains that --manifest {manifest} cannot serve (it has: "
            f"{', '.join(sorted(known)) or 'nothing'}):\n"
            + "\n".join(shown)
            + "\nnothing was started; plan again with the manifest's domains, or pass the manifest the plan was made for"
        )


def select_runs(plan: Plan, only: tuple[str, ...]) -> list[PlannedRun]:
    if not only:
        return list(plan.runs)
    unknown = sorted(set(only) - {r.run_id for r in plan.runs})
    if unknown:
        raise SweepError(f"--only {unknown}: not in {plan.source}")
    return [r for r in plan.runs if r.run_id in only]


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [f"{'run':<26} {'role':<9} {'samples':>8} {'status':<10} {'tries':>5} {'time':>7}  mean loss"]
    for o in outcomes:
        loss = f"{sum(o.final_loss.values()) / len(o.final_loss):.4f}" if o.final_loss else "-"
        rows.append(
            f"{o.run.run_id:<26} {o.run.role:<9} {o.run.budget_samples:>8} {o.status:<10} "
            f"{o.attempts:>5} {o.seconds:>6.0f}s  {loss}  {o.note}".rstrip()
        )
    return "\n".join(rows)


def summary_json(o: SweepOptions, outcomes: list[Outcome]) -> dict:
    return {
        "plan": str(Path(o.plan).resolve()),
        "runs": [
            {
                "run_id": x.run.run_id,
                "role": x.run.role,
                "status": x.status,
                "attempts": x.attempts,
                "seconds": round(x.seconds, 2),
                "final_loss": x.final_loss,
                "note": x.note,
            }
            for x in outcomes
        ],
    }


def run_sweep(options: SweepOptions) -> SweepResult:
    """Run (or submit, or print) every run of the plan that is not complete.

    Raises `SweepError` (bad options, missing files, budgets or evaluation points that are not whole
    global batches of the trainer, a run config the trainer would refuse, domains the manifest lacks)
    or `FormatError` (bad plan or manifest); nothing starts before. Ctrl-C, SIGTERM and SIGHUP stop the
    runs started and then raise KeyboardInterrupt (`processes.SweepInterrupted` for the signals).
    """
    o = check_inputs(options)
    plan = read_plan(o.plan)
    runs = select_runs(plan, o.only)
    check_global_batch(runs, *trainer_global_batch(o), plan.source)
    planned = planned_definitions(o, runs, plan.source)
    check_domains(runs, o.manifest, plan.source)
    if o.deepspeed and not Path(o.deepspeed).exists() and shutil.which(o.deepspeed) is None:
        raise SweepError(f"--deepspeed {o.deepspeed}: no such launcher")
    outcomes = LAUNCHERS[o.launcher](o, planned).run(runs)
    if not o.dry_run:
        atomic_write_json(o.runs_dir / SWEEP_DIR / o.summary_name, summary_json(o, outcomes))
    return SweepResult(outcomes, summary_table(outcomes))
