"""The run log, `voxmix.runlog/1`: one JSON object per line, append-only (docs/formats.md).

The writer flushes and fsyncs every line, so a SIGKILL loses at most the line being written; the reader
skips such a truncated last line with a warning and treats any other malformed line as an error that
names the file and line.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FormatError

FORMAT = "voxmix.runlog/1"
FILENAME = "runlog.jsonl"
_EVENTS = ("start", "eval", "throughput", "end")


class RunLogError(FormatError):
    """A run log that does not follow `voxmix.runlog/1`."""


class RunLogWriter:
    """Appends events to `<run_dir>/runlog.jsonl`; never truncates an existing log (resumed runs append)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path / FILENAME if path.is_dir() or path.suffix != ".jsonl" else path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, obj: dict[str, Any]) -> None:
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


def _err(path: Path, line: int, msg: str) -> RunLogError:
    return RunLogError(f"{path}:{line}: {msg}")


def _need(obj: dict, key: str, types: type | tuple[type, ...], path: Path, line: int, event: str) -> Any:
    if key not in obj:
        raise _err(path, line, f"'{event}' event is missing field '{key}'")
    val = obj[key]
    if isinstance(val, bool) or not isinstance(val, types):
        raise _err(path, line, f"field '{key}' of '{event}' event has the wrong type ({type(val).__name__})")
    return val


def _domain_map(
    obj: dict,
    key: str,
    path: Path,
    line: int,
    event: str,
    domains: list[str],
    *,
    integer: bool,
    positive: bool,
    required: bool = True,
) -> dict[str, Any]:
    if key not in obj and not required:
        return {}
    m = _need(obj, key, dict, path, line, event)
    out = {}
    for d, v in m.items():
        if d not in domains:
            raise _err(path, line, f"field '{key}.{d}': unknown domain '{d}' (run domains: {domains})")
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _err(path, line, f"field '{key}.{d}': expected a number, got {v!r}")
        if not math.isfinite(v):
            raise _err(path, line, f"field '{key}.{d}': value is {v} (NaN or infinite)")
        if integer and float(v) != int(v):
            raise _err(path, line, f"field '{key}.{d}': expected an integer, got {v}")
        if v < 0 or (positive and v == 0):
            raise _err(
                path,
                line,
                f"field '{key}.{d}': expected a {'positive' if positive else 'non-negative'} value, got {v}",
            )
        out[d] = int(v) if integer else float(v)
    return out


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def _objects(path: Path, on_tail) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-empty line. A malformed *last* line is the tail of a writer
    killed mid-write: `on_tail(message)` is told and reading stops; any other malformed line is an error."""
    try:
        raw = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise RunLogError(f"{path}: run log not found") from None
    lines = raw.split("\n")
    # A file ending in "\n" yields a final empty string; anything else in the last slot is unterminated.
    last_unterminated = lines[-1] != ""
    if not last_unterminated:
        lines = lines[:-1]
    for i, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if i == len(lines) and (last_unterminated or i > 1):
                on_tail(f"{path}:{i}: truncated last line skipped (crash mid-write?)")
                return
            raise _err(path, i, f"malformed line: {exc}") from None
        yield i, obj


def _add_event(run: RunLog, ev: str, obj: dict, path: Path, i: int) -> None:
    """Validate one non-start event and record it on `run`."""
    if ev == "eval":
        _need(obj, "step", int, path, i, ev)
        seen = _domain_map(obj, "samples_seen", path, i, ev, run.domains, integer=True, positive=False)
        loss = _domain_map(obj, "loss", path, i, ev, run.domains, integer=False, positive=True)
        if not loss:
            raise _err(path, i, "field 'loss' is empty")
        # Optional (logs written before it existed stay valid): finite, >= 0, only for evaluated domains.
        se = _domain_map(
            obj, "loss_se", path, i, ev, run.domains, integer=False, positive=False, required=False
        )
        orphan = sorted(set(se) - set(loss))
        if orphan:
            raise _err(
                path, i, f"field 'loss_se.{orphan[0]}': no 'loss' for domain '{orphan[0]}' in this event"
            )
        run.evals.append(EvalPoint(obj["step"], {d: seen.get(d, 0) for d in run.domains}, loss, i, se))
    elif ev == "throughput":
        _need(obj, "step", int, path, i, ev)
        sps = _need(obj, "samples_per_s", (int, float), path, i, ev)
        if not (math.isfinite(sps) and sps > 0):
            raise _err(path, i, f"field 'samples_per_s': expected a positive number, got {sps}")
        obj["seconds_per_sample"] = _domain_map(
            obj, "seconds_per_sample", path, i, ev, run.domains, integer=False, positive=True
        )
        run.throughput.append(obj)
    else:  # end
        status = _need(obj, "status", str, path, i, ev)
        if status not in ("completed", "failed"):
            raise _err(path, i, f"field 'status': expected 'completed' or 'failed', got {status!r}")
        _need(obj, "step", int, path, i, ev)
        run.status = status


def read_runlog(path: str | os.PathLike) -> RunLog:
    """Read and validate one run log (strict); `path` is the file or its run directory."""
    path = _resolve(path)
    run: RunLog | None = None
    tail: list[str] = []

    def on_tail(msg: str) -> None:
        warnings.warn(msg, stacklevel=4)
        tail.append(msg)

    ended = False
    for i, obj in _objects(path, on_tail):
        ev = obj.get("event")
        if ev not in _EVENTS:
            raise _err(path, i, f"field 'event': expected one of {list(_EVENTS)}, got {ev!r}")
        if run is None:
            if ev != "start":
                raise _err(path, i, f"the first event must be 'start', got '{ev}'")
            run = _parse_start(obj, path, i)
        elif ev == "start":
            # A resumed run appends a second start: it must describe the same run.
            again = _parse_start(obj, path, i)
            if again.run_id != run.run_id or again.domains != run.domains:
                raise _err(path, i, "a second 'start' event names a different run_id or domains")
        else:
            if ended:
                run.warnings.append(f"{path}:{i}: event after 'end' (resumed run)")
            _add_event(run, ev, obj, path, i)
            ended = ev == "end"
    if run is None:
        raise RunLogError(f"{path}: empty run log (no 'start' event)")
    run.warnings.extend(tail)
    if run.status == "running":
        run.warnings.append(f"{path}: no 'end' event (run still running or killed); using its evaluations")
    elif run.status == "failed":
        run.warnings.append(f"{path}: run ended with status 'failed'; using its evaluations up to the end")
    return run


@dataclass(frozen=True)
class RunState:
    """What a resumer needs from a run folder's log, read leniently (`read_state`)."""

    status: str
    """"new" (no log), "running" (no end event: running or killed), "completed" or "failed"."""
    started: bool = False
    budget_samples: int | None = None
    last_eval_step: int = -1
    last_loss: dict[str, float] = field(default_factory=dict)


def read_state(path: str | os.PathLike) -> RunState:
    """The state of a run log for resuming it (the trainer) or skipping it (the sweep).

    Lenient where a killed writer leaves its mark and a resumed writer continues after it: a line that
    is not a JSON object is skipped anywhere, and field values are not validated (`read_runlog` does that
    for the science). The status is that of the last `end` event.
    """
    path = _resolve(path)
    if not path.exists():
        return RunState("new")
    start: dict | None = None
    last_step, last_loss, status = -1, {}, "running"
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = ev.get("event") if isinstance(ev, dict) else None
        if kind == "start":
            start = start or ev
        elif kind == "eval":
            last_step = max(last_step, int(ev.get("step", -1)))
            last_loss = ev.get("loss", {})
        elif kind == "end":
            status = "completed" if ev.get("status") == "completed" else "failed"
    budget = start.get("budget_samples") if start else None
    return RunState(
        status,
        started=start is not None,
        budget_samples=int(budget) if isinstance(budget, (int, float)) else None,
        last_eval_step=last_step,
        last_loss=dict(last_loss) if isinstance(last_loss, dict) else {},
    )


def _parse_start(obj: dict, path: Path, i: int) -> RunLog:
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise _err(path, i, f"field 'format': expected '{FORMAT}', got {fmt!r}")
    run_id = _need(obj, "run_id", str, path, i, "start")
    domains = _need(obj, "domains", list, path, i, "start")
    if not domains or not all(isinstance(d, str) and d for d in domains):
        raise _err(path, i, "field 'domains': expected a non-empty list of domain names")
    if len(set(domains)) != len(domains):
        raise _err(path, i, f"field 'domains': duplicate names in {domains}")
    mixture = _domain_map(obj, "mixture", path, i, "start", domains, integer=False, positive=False)
    budget = _need(obj, "budget_samples", int, path, i, "start")
    if budget < 0:
        raise _err(path, i, f"field 'budget_samples': expected >= 0, got {budget}")
    unique = _domain_map(obj, "unique_samples", path, i, "start", domains, integer=True, positive=False)
    seed = _need(obj, "seed", int, path, i, "start")
    config = obj.get("config", {})
    if not isinstance(config, dict):
        raise _err(path, i, "field 'config': expected an object")
    return RunLog(
        path=path,
        run_id=run_id,
        domains=list(domains),
        mixture=mixture,
        budget_samples=budget,
        unique_samples=unique,
        seed=seed,
        config=config,
    )


def find_runlogs(patterns: list[str]) -> list[Path]:
    """Expand run dirs, globs, runlog files, or parent folders (searched recursively) to runlog paths."""
    import glob

    found: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat, recursive=True)) if any(c in pat for c in "*?[") else [pat]
        if not matches:
            raise RunLogError(f"{pat}: no run matches this pattern")
        for m in matches:
            p = Path(m)
            if p.is_file():
                found.append(p)
            elif (p / FILENAME).is_file():
                found.append(p / FILENAME)
            elif p.is_dir():
                sub = sorted(p.rglob(FILENAME))
                if not sub:
                    raise RunLogError(f"{p}: no {FILENAME} in this folder or below")
                found.extend(sub)
            else:
                raise RunLogError(f"{p}: no such run directory or file")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]
