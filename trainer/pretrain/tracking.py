"""Experiment trackers beside the run log: TensorBoard and Weights & Biases (both optional, rank 0 only).

The `MetricsSink` (sink.py) is the one place the loop's events go. It writes each to the run log first and
then hands the same values to the trackers that are on, so TensorBoard and W&B show the numbers of
`<out>/runlog.jsonl`, never a second computation of them.

W&B (`train.wandb`, off by default) gets every event; the names, which the test checks event by event:

  run log event   W&B
  start           run config: the config sections, and `voxmix` = the start event's other fields
  throughput      history row: train/step, train/loss, train/lr, throughput/<field> (a per-domain field
                  as throughput/<field>/<domain>); plotted against train/step
  eval            history row: eval/loss/<domain>, eval/loss_se/<domain>, eval/samples_seen/<domain>,
                  samples_total, train/step; eval/* plotted against samples_total (a scaling curve)
  end             summary status, end_step (and error); the W&B run finishes with exit code 0 / 1

The W&B run lives under `<out>/wandb/` (W&B's own layout; an offline run is uploaded later with
`wandb sync <out>/wandb/offline-run-*`). Its id is kept in `<out>/wandb_run_id.txt`, so that `--resume`
continues the same W&B run instead of starting a second one.

Both packages are checked on every rank before any start-up cost (`check_trackers`), so a missing or
broken one stops all ranks alike with the config field named.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxmix.formats.io import atomic_write_text

WANDB_ID_FILE = "wandb_run_id.txt"
_INSTALL = "install the train extra (pip install 'voxmix[train]') or set {field}=false"


def tensorboard_writer_class() -> type:
    """torch's SummaryWriter; ValueError naming the config field when the package is missing or broken."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError(
            f"config field 'train.tensorboard' = True needs the tensorboard package ({err}); "
            + _INSTALL.format(field="train.tensorboard")
        ) from None
    return SummaryWriter


def wandb_module() -> Any:
    """The imported `wandb` package with its `wandb-core` service binary (every `wandb.init` starts it);
    ValueError naming the config field when either is missing or the import fails."""
    field = "config field 'train.wandb' = True"
    try:
        import wandb
    except ImportError as err:
        raise ValueError(
            f"{field} needs the wandb package ({err}); " + _INSTALL.format(field="train.wandb")
        ) from None
    except Exception as err:  # e.g. a protobuf or pydantic version wandb does not work with
        raise ValueError(
            f"{field}: the installed wandb package fails to import ({type(err).__name__}: {err}); "
            "reinstall it with the versions of configs/lock.txt"
        ) from None
    try:
        wandb.util.get_core_path()
    except Exception as err:
        raise ValueError(f"{field}: wandb is installed without its wandb-core service: {err}") from None
    return wandb


def check_trackers(train: Any) -> None:
    """Every rank, before any start-up cost: the packages of the trackers that are on import (`train`:
    the TrainConfig). One message lists every problem."""
    problems = []
    for on, check in ((train.tensorboard, tensorboard_writer_class), (train.wandb, wandb_module)):
        if on:
            try:
                check()
            except ValueError as err:
                problems.append(str(err))
    if problems:
        raise ValueError("\n".join(problems))


@dataclass(frozen=True, kw_only=True)
class WandbOptions:
    """Where the W&B run goes: the `train.wandb_*` fields (validated in config.py)."""

    project: str
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    mode: str | None = None
    """online / offline; None: W&B's own setting (WANDB_MODE, else online)."""

    @classmethod
    def from_config(cls, train: Any) -> WandbOptions | None:
        """The options of a TrainConfig, or None when `train.wandb` is off."""
        if not train.wandb:
            return None
        return cls(
            project=train.wandb_project,
            entity=train.wandb_entity,
            group=train.wandb_group,
            tags=tuple(train.wandb_tags or ()),
            mode=train.wandb_mode,
        )


def wandb_run_id(out: Path) -> str:
    """The W&B run id of the run folder `out`: read from `<out>/wandb_run_id.txt`, or drawn and written
    there (rank 0) the first time. A random id, not one derived from the run id or the path: a new run
    in the folder of a deleted one must not append to the old W&B run."""
    path = Path(out) / WANDB_ID_FILE
    if path.exists():
        run_id = path.read_text(encoding="utf-8").strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(6)
    atomic_write_text(path, run_id + "\n")
    return run_id


def _scalars(prefix: str, fields: dict[str, Any]) -> dict[str, float]:
    """`prefix/field` for each number, `prefix/field/key` for each number of a mapping (per domain)."""
    out: dict[str, float] = {}
    for k, v in fields.items():
        if isinstance(v, dict):
            out.update({f"{prefix}/{k}/{d}": x for d, x in v.items() if _is_number(x)})
        elif _is_number(v):
            out[f"{prefix}/{k}"] = v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class WandbWriter:
    """One W&B run fed with the run log's events (rank 0). `start` opens it; `end` or `close` finish it."""

    def __init__(self, out: Path, options: WandbOptions):
        self.out, self.options = Path(out), options
        self.run: Any = None

    def start(self, *, config: dict[str, Any], world_size: int, start: dict[str, Any]) -> None:
        """Open (or, on resume, continue) the W&B run; ValueError naming the field when W&B refuses."""
        wandb = wandb_module()
        o = self.options
        kwargs = {"mode": o.mode} if o.mode is not None else {}  # else WANDB_MODE / W&B's default
        try:
            self.run = wandb.init(
                project=o.project,
                entity=o.entity,
                group=o.group,
                tags=list(o.tags) or None,
                name=start.get("run_id"),
                id=wandb_run_id(self.out),
                resume="allow",
                dir=str(self.out),
                **kwargs,
            )
        except Exception as err:  # wandb's UsageError / CommError / AuthenticationError ...
            raise ValueError(
                f"config field 'train.wandb' = True: W&B could not start the run ({type(err).__name__}: "
                f"{err}); log in (`wandb login` or WANDB_API_KEY), or set train.wandb_mode=offline to "
                "write the run under <out>/wandb and upload it later with `wandb sync`"
            ) from None
        # A resumed run may change the fields resume_check allows (train.log_every, ...).
        self.run.config.update(
            {**config, "voxmix": {**start, "world_size": world_size}}, allow_val_change=True
        )
        # Steps of our own: a resumed run logs the steps after its checkpoint again, which W&B's
        # monotonic `_step` would drop; evaluations are plotted against samples (the scaling axis).
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("throughput/*", step_metric="train/step")
        self.run.define_metric("samples_total")
        self.run.define_metric("eval/*", step_metric="samples_total")

    def throughput(self, *, step: int, train_loss: float, lr: float, report: dict[str, Any]) -> None:
        row = {"train/step": step, "train/loss": train_loss, "train/lr": lr, **_scalars("throughput", report)}
        self.run.log(row)

    def eval(
        self,
        *,
        step: int,
        samples_total: int,
        samples_seen: dict[str, int],
        loss: dict[str, float],
        loss_se: dict[str, float] | None,
    ) -> None:
        fields = {"loss": loss, "loss_se": loss_se or {}, "samples_seen": samples_seen}
        self.run.log({"train/step": step, "samples_total": samples_total, **_scalars("eval", fields)})

    def end(self, *, status: str, step: int, error: str | None = None) -> None:
        """The `end` event: summary fields, then the W&B run finishes (exit code 1 for a failed run)."""
        if self.run is None:
            return
        self.run.summary.update({"status": status, "end_step": step, **({"error": error} if error else {})})
        run, self.run = self.run, None
        run.finish(exit_code=0 if status == "completed" else 1)

    def close(self) -> None:
        """Finish a run that saw no `end` event (an exception outside the loop's failures): failed."""
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=1)
