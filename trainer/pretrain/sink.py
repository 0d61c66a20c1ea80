"""Where the training loop's numbers go: the run log and TensorBoard (rank 0 only) and the console.

The loop hands every event to one `MetricsSink` on every rank; the sink decides what a rank writes. Only
rank 0 writes files: `<out>/runlog.jsonl` (voxmix.runlog/1, appended across resumes), `<out>/config.json`
and, with `train.tensorboard`, `<out>/tb/`. Console lines are printed by rank 0 only.
"""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxmix.formats.io import atomic_write_json
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import RunLogWriter, read_state
from voxmix.trainer.pretrain.metrics import domain_counts
from voxmix.trainer.pretrain.state import every

# Throughput fields mirrored to TensorBoard (the run log gets them all).
TB_THROUGHPUT = ("samples_per_s", "data_wait_frac", "tflops_per_device", "mfu")


def tensorboard_writer_class() -> type:
    """torch's SummaryWriter; ValueError naming the config field when the optional package is missing.

    Called on every rank before any start-up cost, so a missing package stops all ranks alike.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("config field 'train.tensorboard' = True needs the tensorboard package") from None
    return SummaryWriter


def console(rank: int, msg: str) -> None:
    """A timestamped progress line on stdout, from rank 0 only."""
    if rank == 0:
        print(f"[voxmix {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class MetricsSink:
    """Run log writer (rank 0), optional TensorBoard writer (rank 0), console lines (rank 0).

    On resume it reads the existing run log once: evaluations already logged by the killed run are
    re-done (the loop replays from the checkpoint) but not logged twice, and a run whose log says
    `completed` is not started again.
    """

    out: Path
    _: KW_ONLY
    rank: int
    domains: list[str]
    schedule: np.ndarray
    """Domain id of every global sample position (counts per domain between two positions)."""
    log_every: int
    tensorboard: bool

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.writer = RunLogWriter(self.out / RUNLOG) if self.rank == 0 else None
        logged = read_state(self.out / RUNLOG)  # every rank: `completed` decides whether all ranks train
        self.started = logged.started
        self.last_logged_eval = logged.last_eval_step
        self.completed = logged.status == "completed"
        self.tb: Any = None

    def log(self, msg: str) -> None:
        console(self.rank, msg)

    def due(self, step: int, *, final: bool = False) -> bool:
        """A `throughput` event after optimizer step `step`: every `train.log_every` steps and at the end."""
        return every(step, self.log_every, final=final)

    def samples_seen(self, position: int) -> dict[str, int]:
        """Global training samples per domain before sequence position `position` (no communication)."""
        return dict(zip(self.domains, domain_counts(self.schedule, 0, position, len(self.domains))))

    def begin(self, *, config: dict[str, Any], world_size: int, start: dict[str, Any]) -> None:
        """Rank 0: open TensorBoard, write config.json, and the `start` event unless the log has one."""
        if self.rank != 0:
            return
        if self.tensorboard:
            self.tb = tensorboard_writer_class()(str(self.out / "tb"))
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", {"config": config, "world_size": world_size})
        if not self.started:
            self.writer.start(config=config, world_size=world_size, **start)

    def throughput(
        self, *, step: int, total_steps: int, train_loss: float, lr: float, report: dict[str, Any]
    ) -> None:
        """One `throughput` event (all report fields), TensorBoard scalars and a console line."""
        if self.rank == 0:
            self.writer.throughput(step=step, train_loss=train_loss, lr=lr, **report)
            if self.tb is not None:
                self.tb.add_scalar("train/loss", train_loss, step)
                for k in TB_THROUGHPUT:
                    if k in report:
                        self.tb.add_scalar(f"throughput/{k}", report[k], step)
        self.log(
            f"step {step}/{total_steps} loss {train_loss:.4f} "
            f"{report['samples_per_s']:.1f} samples/s, data wait {100 * report['data_wait_frac']:.0f}%"
        )

    def eval(
        self, *, step: int, position: int, loss: dict[str, float], loss_se: dict[str, float] | None = None
    ) -> None:
        """One `eval` event unless a previous attempt of the run logged this step already; a console line.

        `loss_se`: the standard error of each domain's loss over its evaluation crops (optional).
        """
        se = loss_se or {}
        if self.rank == 0 and step > self.last_logged_eval:
            if self.tb is not None:
                for d, v in loss.items():
                    self.tb.add_scalar(f"eval_loss/{d}", v, position)
            self.writer.eval(
                step=step,
                samples_seen=self.samples_seen(position),
                loss=loss,
                loss_se=loss_se,
                samples_total=position,
            )
        self.log(
            f"step {step} eval at {position} samples: "
            + ", ".join(f"{d} {v:.4f}" + (f" ±{se[d]:.4f}" if d in se else "") for d, v in loss.items())
        )

    def completed_run(self, step: int) -> None:
        """The `end` event of a completed run (TensorBoard is closed first, as before the split)."""
        self.close()
        if self.writer is not None:
            self.writer.end(status="completed", step=step)

    def failed(self, step: int, error: str) -> None:
        """The `end` event of a failed run, when this rank writes a run log that exists already."""
        if self.writer is not None and self.writer.path.exists():
            self.writer.end(status="failed", step=step, error=error[:500])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
