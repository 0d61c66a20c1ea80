"""A sweep: the runs of one plan through one launcher, then a summary (`run_sweep`).

Resumable: a run whose log ends `completed` is skipped; an interrupted one with a checkpoint continues;
a failed one is moved aside to `<id>.failedN/` and retried from scratch (policy: resume.py). The
summary is written to `<runs_dir>/_sweep/summary.json` (unless a dry run).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from voxmix.formats.io import atomic_write_json
from voxmix.formats.plan import Plan, PlannedRun, read_plan
from voxmix.trainer.pretrain.config import ConfigError, load_config
from voxmix.trainer.pretrain.optim import deepspeed_config

from .launchers import SWEEP_DIR, Outcome, make_launcher
from .options import SweepError, SweepOptions


@dataclass(frozen=True)
class SweepResult:
    outcomes: list[Outcome]
    summary: str
    """The table printed by `python -m trainer.sweep`."""

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when no run failed, 1 otherwise (the command's exit status)."""
        return 1 if self.failed else 0


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
    global batches of the trainer, budget clash) or `FormatError` (bad plan); nothing starts before.
    """
    o = check_inputs(options)
    plan = read_plan(o.plan)
    runs = select_runs(plan, o.only)
    check_global_batch(runs, *trainer_global_batch(o), plan.source)
    if o.deepspeed and not Path(o.deepspeed).exists() and shutil.which(o.deepspeed) is None:
        raise SweepError(f"--deepspeed {o.deepspeed}: no such launcher")
    outcomes = make_launcher(o).run(runs)
    if not o.dry_run:
        atomic_write_json(o.runs_dir / SWEEP_DIR / o.summary_name, summary_json(o, outcomes))
    return SweepResult(outcomes, summary_table(outcomes))
