"""The run log, `voxmix.runlog/1`: one JSON object per line, append-only (docs/formats.md).

This module holds the format's definitions (its name, the events, the error, the typed results) and its
writer; the readers are in `runlog_read` (`read_runlog` strict, for the science; `read_state` lenient,
for resuming; `find_runlogs`) and are imported from here, like every other name of the format.

The writer flushes and fsyncs every line, so a SIGKILL loses at most the line being written; the reader
skips such a truncated last line with a warning. A writer that resumes a log cuts such a torn tail
before its first append (so that it never merges with the next event).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FormatError

if TYPE_CHECKING:  # for type checkers; at run time `__getattr__` (below) imports the readers
    from .runlog_read import find_runlogs, read_runlog, read_state

__all__ = [
    "FILENAME",
    "FORMAT",
    "EvalPoint",
    "RunLog",
    "RunLogError",
    "RunLogWriter",
    "RunState",
    "find_runlogs",
    "read_runlog",
    "read_state",
]

FORMAT = "voxmix.runlog/1"
FILENAME = "runlog.jsonl"
_EVENTS = ("start", "eval", "throughput", "end")


class RunLogError(FormatError):
    """A run log that does not follow `voxmix.runlog/1`."""


def _repair_torn_tail(path: Path) -> None:
    """End `path` on a newline before appending to it. An unterminated last line is what a writer killed
    mid-write leaves; appended to as is, it would merge with the next event into one invalid line. It is
    cut (it was never a complete record), or, if it is a complete JSON object that lost only its newline,
    kept and terminated. Either way a warning names the file."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        keep, end = 0, size
        while end > 0:  # the last newline, read backwards in blocks (logs can be large)
            start = max(0, end - (1 << 16))
            k = os.pread(fd, end - start, start).rfind(b"\n")
            if k >= 0:
                keep = start + k + 1
                break
            end = start
        tail = os.pread(fd, size - keep, keep)
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            os.pwrite(fd, b"\n", size)
            msg = f"{path}: the last line had no newline (a writer killed after writing it); added one"
        else:
            os.ftruncate(fd, keep)
            msg = (
                f"{path}: cut {size - keep} bytes of a torn last line (a writer killed mid-write; never a "
                "complete record) before appending"
            )
        os.fsync(fd)
    finally:
        os.close(fd)
    warnings.warn(msg, stacklevel=4)


class RunLogWriter:
    """Appends events to `<run_dir>/runlog.jsonl`; never truncates an existing log (resumed runs append)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path / FILENAME if path.is_dir() or path.suffix != ".jsonl" else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tail_checked = False

    def _append(self, obj: dict[str, Any]) -> None:
        if not self._tail_checked:
            _repair_torn_tail(self.path)
            self._tail_checked = True
        line = json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n"
        # One write() of a whole line on an O_APPEND descriptor, then fsync: a crash leaves either the
        # full line or a truncated last line, which readers skip.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def start(
        self,
        *,
        run_id: str,
        domains: list[str],
        mixture: dict[str, float],
        budget_samples: int,
        unique_samples: dict[str, int],
        seed: int,
        config: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        self._append(
            {
                "event": "start",
                "format": FORMAT,
                "run_id": run_id,
                "domains": list(domains),
                "mixture": {d: float(w) for d, w in mixture.items()},
                "budget_samples": int(budget_samples),
                "unique_samples": {d: int(u) for d, u in unique_samples.items()},
                "seed": int(seed),
                "config": config or {},
                **extra,
            }
        )

    def eval(
        self,
        *,
        step: int,
        samples_seen: dict[str, int],
        loss: dict[str, float],
        loss_se: dict[str, float] | None = None,
        **extra: Any,
    ) -> None:
        """One `eval` event; `loss_se` (optional, omitted when None or empty) is the standard error of each
        domain's loss over its evaluation crops, for domains that have a loss."""
        bad = {d: v for d, v in loss.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"{self.path}: refusing to log non-finite or non-positive eval loss {bad}")
        se = {d: float(v) for d, v in (loss_se or {}).items()}
        bad = {d: v for d, v in se.items() if not (math.isfinite(v) and v >= 0) or d not in loss}
        if bad:
            raise ValueError(
                f"{self.path}: refusing to log eval loss_se {bad}: must be finite, >= 0, for a domain with a loss"
            )
        obj = {
            "event": "eval",
            "step": int(step),
            "samples_seen": {d: int(n) for d, n in samples_seen.items()},
            "loss": {d: float(v) for d, v in loss.items()},
        }
        if se:
            obj["loss_se"] = se
        self._append({**obj, **extra})

    def throughput(
        self, *, step: int, samples_per_s: float, seconds_per_sample: dict[str, float], **extra: Any
    ) -> None:
        self._append(
            {
                "event": "throughput",
                "step": int(step),
                "samples_per_s": float(samples_per_s),
                "seconds_per_sample": {d: float(s) for d, s in seconds_per_sample.items()},
                **extra,
            }
        )

    def end(self, *, status: str, step: int, **extra: Any) -> None:
        if status not in ("completed", "failed"):
            raise ValueError(f"end status must be 'completed' or 'failed', got {status!r}")
        self._append({"event": "end", "status": status, "step": int(step), **extra})


@dataclass(frozen=True)
class EvalPoint:
    step: int
    samples_seen: dict[str, int]
    loss: dict[str, float]
    line: int
    loss_se: dict[str, float] = field(default_factory=dict)
    """Standard error of each domain's loss over its evaluation crops; empty when the log has none."""


@dataclass
class RunLog:
    path: Path
    run_id: str
    domains: list[str]
    mixture: dict[str, float]
    budget_samples: int
    unique_samples: dict[str, int]
    seed: int
    config: dict[str, Any]
    evals: list[EvalPoint] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"  # "completed" | "failed" | "running" (no end event: still running or killed)
    warnings: list[str] = field(default_factory=list)

    def seconds_per_sample(self) -> dict[str, float]:
        """Median measured cost per sample of each domain over this run's throughput events."""
        acc: dict[str, list[float]] = {}
        for ev in self.throughput:
            for d, s in ev["seconds_per_sample"].items():
                acc.setdefault(d, []).append(s)
        return {d: float(sorted(v)[len(v) // 2]) for d, v in acc.items()}


@dataclass(frozen=True)
class RunState:
    """What a resumer needs from a run folder's log, read leniently (`read_state`)."""

    status: str
    """"new" (no log), "running" (no end event: running or killed), "completed" or "failed"."""
    started: bool = False
    budget_samples: int | None = None
    last_eval_step: int = -1
    last_loss: dict[str, float] = field(default_factory=dict)
    start: dict[str, Any] | None = None
    """The first `start` event as written (unvalidated), None without one: what the run started with,
    which `--resume` compares the run's settings against."""


_READERS = ("find_runlogs", "read_runlog", "read_state")


def __getattr__(name: str) -> Any:
    # The readers import this module's definitions, so this module cannot import them at its top (a
    # cycle that fails for whichever module is imported first); they are fetched on first use instead.
    if name in _READERS:
        from . import runlog_read

        return getattr(runlog_read, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
