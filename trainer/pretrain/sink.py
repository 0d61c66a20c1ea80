"""Where the training loop's numbers go: the run log, the trackers (rank 0 only) and the console.

The loop hands every event to one `MetricsSink` on every rank; the sink decides what a rank writes. Only
rank 0 writes files: `<out>/runlog.jsonl` (voxmix.runlog/1, appended across resumes), `<out>/config.json`,
with `train.tensorboard` `<out>/tb/`, with `train.wandb` a W&B run under `<out>/wandb/` (tracking.py: each
tracker gets the values just written to the run log). Console lines are printed by rank 0 only; the
throughput line carries the attempt's elapsed time and an ETA (`Progress`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxmix.formats.io import atomic_write_json
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import RunLogWriter, read_state
from voxmix.trainer.pretrain.metrics import domain_counts
from voxmix.trainer.pretrain.state import every
from voxmix.trainer.pretrain.tracking import WandbOptions, WandbWriter, tensorboard_writer_class

__all__ = ["MetricsSink", "Progress", "console", "format_duration", "tensorboard_writer_class"]

# Throughput fields mirrored to TensorBoard (the run log and W&B get them all).
TB_THROUGHPUT = ("samples_per_s", "data_wait_frac", "tflops_per_device", "mfu")


def console(rank: int, msg: str) -> None:
    """A timestamped progress line on stdout, from rank 0 only."""
    if rank == 0:
        print(f"[voxmix {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h03m`, `1d04h`: the two leading units, short enough for a log line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
    """Elapsed time of this attempt and the ETA of the steps left at the recent rate (console lines).

    The rate is measured over the last `recent` log intervals, evaluations and saves included (the rest of
    the run has them too): the ETA follows a change of speed within a few lines, and the one slow
    interval of an evaluation does not swing it. Times are `time.monotonic()` seconds.
    """

    def __init__(self, started: float, *, recent: int = 5):
        self.started = started
        self.points: deque[tuple[float, int]] = deque(maxlen=recent + 1)
        """(time, optimizer step) at the start of training and at the last log lines."""

    def mark(self, now: float, step: int) -> None:
        self.points.append((now, step))

    def eta(self, step: int, total: int) -> float | None:
        """Seconds to step `total` at the rate between the oldest and newest marks; None: no rate yet."""
        if len(self.points) < 2:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return max(0, total - step) * (t1 - t0) / (s1 - s0)

    def line(self, now: float, step: int, total: int) -> str:
        """Mark `step` at `now`; `elapsed 3m05s, ETA 12m40s` (`ETA ?` until two marks give a rate)."""
        self.mark(now, step)
        eta = self.eta(step, total)
        return f"elapsed {format_duration(now - self.started)}, ETA " + (
            "?" if eta is None else format_duration(eta)
        )


@dataclass
class MetricsSink:
    """Run log writer, optional TensorBoard and W&B writers (rank 0), console lines (rank 0).

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
    wandb: WandbOptions | None = None
    """W&B run settings (`WandbOptions.from_config(cfg.train)`); None: no W&B."""
    started_at: float | None = None
    """`time.monotonic()` when this attempt started (the elapsed time of the console lines); None: now."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.writer = RunLogWriter(self.out / RUNLOG) if self.rank == 0 else None
        logged = read_state(self.out / RUNLOG)  # every rank: `completed` decides whether all ranks train
        self.started = logged.started
        self.last_logged_eval = logged.last_eval_step
        self.completed = logged.status == "completed"
        self.tb: Any = None
        self.wb: WandbWriter | None = None
        self.progress = Progress(time.monotonic() if self.started_at is None else self.started_at)

    def log(self, msg: str) -> None:
        console(self.rank, msg)

    def due(self, step: int, *, final: bool = False) -> bool:
        """A `throughput` event after optimizer step `step`: every `train.log_every` steps and at the end."""
        return every(step, self.log_every, final=final)

    def samples_seen(self, position: int) -> dict[str, int]:
        """Global training samples per domain before sequence position `position` (no communication)."""
        return dict(zip(self.domains, domain_counts(self.schedule, 0, position, len(self.domains))))

    def begin(self, *, config: dict[str, Any], world_size: int, start: dict[str, Any], step: int = 0) -> None:
        """Rank 0: open the trackers, write config.json, and the `start` event unless the log has one.

        `step`: the optimizer step training starts from (the checkpoint's on resume; the ETA's first
        mark). The trackers open first: one that fails (W&B cannot log in) leaves no run log behind,
        so the same command can be run again without --resume."""
        if self.rank == 0:
            if self.tensorboard:
                self.tb = tensorboard_writer_class()(str(self.out / "tb"))
            if self.wandb is not None:
                self.wb = WandbWriter(self.out, self.wandb)
                self.wb.start(config=config, world_size=world_size, start=start)
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", {"config": config, "world_size": world_size})
            if not self.started:
                self.writer.start(config=config, world_size=world_size, **start)
        self.progress.mark(time.monotonic(), step)  # after W&B's start-up (seconds), not a step's time

    def throughput(
        self, *, step: int, total_steps: int, train_loss: float, lr: float, report: dict[str, Any]
    ) -> None:
        """One `throughput` event (all report fields), the trackers' copies and a console line."""
        if self.rank == 0:
            self.writer.throughput(step=step, train_loss=train_loss, lr=lr, **report)
            if self.tb is not None:
                self.tb.add_scalar("train/loss", train_loss, step)
                self.tb.add_scalar("train/lr", lr, step)
                for k in TB_THROUGHPUT:
                    if k in report:
                        self.tb.add_scalar(f"throughput/{k}", report[k], step)
            if self.wb is not None:
                self.wb.throughput(step=step, train_loss=train_loss, lr=lr, report=report)
        self.log(
            f"step {step}/{total_steps} loss {train_loss:.4f} "
            f"{report['samples_per_s']:.1f} samples/s, data wait {100 * report['data_wait_frac']:.0f}%, "
            + self.progress.line(time.monotonic(), step, total_steps)
        )

    def eval(
        self, *, step: int, position: int, loss: dict[str, float], loss_se: dict[str, float] | None = None
    ) -> None:
        """One `eval` event unless a previous attempt of the run logged this step already; a console line.

        `loss_se`: the standard error of each domain's loss over its evaluation crops (optional).
        """
        se = loss_se or {}
        if self.rank == 0 and step > self.last_logged_eval:
            seen = self.samples_seen(position)
            self.writer.eval(step=step, samples_seen=seen, loss=loss, loss_se=loss_se, samples_total=position)
            if self.tb is not None:
                for d, v in loss.items():
                    self.tb.add_scalar(f"eval_loss/{d}", v, position)
            if self.wb is not None:
                self.wb.eval(step=step, samples_total=position, samples_seen=seen, loss=loss, loss_se=loss_se)
        self.log(
            f"step {step} eval at {position} samples: "
            + ", ".join(f"{d} {v:.4f}" + (f" ±{se[d]:.4f}" if d in se else "") for d, v in loss.items())
        )

    def completed_run(self, step: int) -> None:
        """The `end` event of a completed run: TensorBoard is closed first (as before the split), W&B
        finishes after the run log's event (a W&B failure must not leave a completed run unfinished)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.writer is not None:
            self.writer.end(status="completed", step=step)
        if self.wb is not None:
            self.wb.end(status="completed", step=step)
        self.close()

    def failed(self, step: int, error: str) -> None:
        """The `end` event of a failed run, when this rank writes a run log that exists already."""
        if self.writer is not None and self.writer.path.exists():
            self.writer.end(status="failed", step=step, error=error[:500])
        if self.wb is not None:
            self.wb.end(status="failed", step=step, error=error[:500])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wb is not None:
            self.wb.close()  # finishes a W&B run that saw no end event as failed
            self.wb = None
