"""The readers of the run log, `voxmix.runlog/1` (docs/formats.md); import them from
`voxmix.formats.runlog`, which holds the format's definitions and its writer.

`read_runlog` is strict (lawfit, the study): a malformed line is an error naming the file and line, except
a truncated *last* line (a writer killed mid-write), skipped with a warning; a log whose torn line an
older writer merged with the next event is read with a warning (the torn prefix dropped, the event after
it kept). One folder, one run:
- Two `eval` events at the same step are one evaluation logged twice (two trainers wrote the folder, or
  a re-logged evaluation): identical ones are counted once with a warning naming file, lines and step;
  different ones (loss, loss_se or samples_seen) are an error naming file, lines and values, since no
  reader can tell which one is the run's.
- A second `start` (a resumed run) must name the same run: run_id, domains, mixture, budget_samples and
  seed; any difference is an error naming both lines and the differing fields.
- After an `end` with status `failed`, events continue (the run was resumed) with one warning. After an
  `end` with status `completed` the run is over: only repeats are accepted (identical `eval` duplicates,
  the same `end`, a `start` of the same run; `throughput` events are ignored), all named in one warning;
  a new evaluation or a different `end` is an error naming both lines.

`read_state` is lenient (the trainer's and the sweep's resume decisions): see its docstring.
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

from .runlog import _EVENTS, FILENAME, FORMAT, EvalPoint, RunLog, RunLogError, RunState


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


def _after_torn_prefix(text: str) -> tuple[int, dict] | None:
    """(bytes dropped, event) of a line where a killed writer's torn line was merged with the next event
    by an older writer that appended after it; None when `text` is not such a line."""
    k = text.rfind('{"event":')
    if k <= 0:
        return None
    try:
        obj = json.loads(text[k:])
    except ValueError:
        return None
    return (len(text[:k].encode("utf-8")), obj) if isinstance(obj, dict) else None


def _objects(path: Path, warn) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-empty line. A malformed *last* line is the tail of a writer
    killed mid-write: `warn(message)` is told and reading stops; a torn line merged with the next event is
    read as that event, with a warning; any other malformed line is an error."""
    try:
        raw = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise RunLogError(f"{path}: run log not found") from None
    except OSError as exc:
        raise RunLogError(f"{path}: cannot read the run log: {exc.strerror}") from None
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
            merged = _after_torn_prefix(text)
            if merged is not None:
                warn(
                    f"{path}:{i}: dropped {merged[0]} bytes of a torn line (a writer killed mid-write, "
                    "then resumed) before the event on this line"
                )
                obj = merged[1]
            elif i == len(lines) and (last_unterminated or i > 1):
                warn(f"{path}:{i}: truncated last line skipped (crash mid-write?)")
                return
            else:
                raise _err(path, i, f"malformed line: {exc}") from None
        yield i, obj


def _parse_eval(obj: dict, domains: list[str], path: Path, i: int) -> EvalPoint:
    ev = "eval"
    _need(obj, "step", int, path, i, ev)
    seen = _domain_map(obj, "samples_seen", path, i, ev, domains, integer=True, positive=False)
    loss = _domain_map(obj, "loss", path, i, ev, domains, integer=False, positive=True)
    if not loss:
        raise _err(path, i, "field 'loss' is empty")
    # Optional (logs written before it existed stay valid): finite, >= 0, only for evaluated domains.
    se = _domain_map(obj, "loss_se", path, i, ev, domains, integer=False, positive=False, required=False)
    orphan = sorted(set(se) - set(loss))
    if orphan:
        raise _err(path, i, f"field 'loss_se.{orphan[0]}': no 'loss' for domain '{orphan[0]}' in this event")
    return EvalPoint(obj["step"], {d: seen.get(d, 0) for d in domains}, loss, i, se)


def _parse_throughput(obj: dict, domains: list[str], path: Path, i: int) -> dict:
    ev = "throughput"
    _need(obj, "step", int, path, i, ev)
    sps = _need(obj, "samples_per_s", (int, float), path, i, ev)
    if not (math.isfinite(sps) and sps > 0):
        raise _err(path, i, f"field 'samples_per_s': expected a positive number, got {sps}")
    obj["seconds_per_sample"] = _domain_map(
        obj, "seconds_per_sample", path, i, ev, domains, integer=False, positive=True
    )
    return obj


def _parse_end(obj: dict, path: Path, i: int) -> tuple[str, int]:
    status = _need(obj, "status", str, path, i, "end")
    if status not in ("completed", "failed"):
        raise _err(path, i, f"field 'status': expected 'completed' or 'failed', got {status!r}")
    return status, _need(obj, "step", int, path, i, "end")


_ONE_RUN = (
    "a run folder holds one run (two trainers wrote this one?): keep one run's log, or rerun the run in "
    "a new folder"
)


def _same_run(run: RunLog, again: RunLog, first: int, i: int) -> None:
    """A second `start` (a resumed run) must describe the run of the first one."""
    mix = lambda r: {d: r.mixture.get(d, 0.0) for d in r.domains}  # noqa: E731
    pairs = {
        "run_id": (run.run_id, again.run_id),
        "domains": (run.domains, again.domains),
        "mixture": (mix(run), mix(again)),
        "budget_samples": (run.budget_samples, again.budget_samples),
        "seed": (run.seed, again.seed),
    }
    diff = [f"{k} {a!r} at line {first}, {b!r} here" for k, (a, b) in pairs.items() if a != b]
    if diff:
        raise _err(run.path, i, "this 'start' event names another run: " + "; ".join(diff) + f"; {_ONE_RUN}")


def _check_repeat(first: EvalPoint, again: EvalPoint, path: Path) -> None:
    """Two evals at one step must be one evaluation logged twice: identical values, else an error."""
    for name in ("loss", "loss_se", "samples_seen"):
        a, b = getattr(first, name), getattr(again, name)
        if a != b:
            raise RunLogError(
                f"{path}: lines {first.line} and {again.line}: two 'eval' events at step {first.step} "
                f"disagree: {name} {a} vs {b}; {_ONE_RUN}"
            )


@dataclass
class _Reading:
    """What `read_runlog` tracks between events besides the run itself."""

    run: RunLog
    first_start: int
    by_step: dict[int, EvalPoint] = field(default_factory=dict)
    ended: tuple[int, str, int] | None = None
    """(line, status, step) of the `end` event in force; None after a resume or before any."""
    repeats: list[str] = field(default_factory=list)
    """Steps logged twice with identical values (each counted once)."""
    after_end: list[int] = field(default_factory=list)
    """Lines after a `completed` end (accepted only as repeats)."""

    def event(self, ev: str, obj: dict, path: Path, i: int) -> None:
        run, ended = self.run, self.ended
        if ev == "start":
            return _same_run(run, _parse_start(obj, path, i), self.first_start, i)
        if ended is not None and ended[1] == "failed":  # a failed run, resumed
            run.warnings.append(f"{path}:{i}: events after the 'failed' end at line {ended[0]} (resumed run)")
            self.ended, ended, run.status = None, None, "running"
        if ended is not None:
            self.after_end.append(i)
        if ev == "eval":
            point = _parse_eval(obj, run.domains, path, i)
            first = self.by_step.get(point.step)
            if first is not None:
                _check_repeat(first, point, path)
                self.repeats.append(f"step {point.step} (lines {first.line}, {i})")
            elif ended is not None:
                raise _err(
                    path,
                    i,
                    f"'eval' at step {point.step} after line {ended[0]} ended the run "
                    f"'completed' at step {ended[2]}: a completed run does not continue; {_ONE_RUN}",
                )
            else:
                self.by_step[point.step] = point
                run.evals.append(point)
        elif ev == "throughput":
            t = _parse_throughput(obj, run.domains, path, i)
            if ended is None:  # after a completed end: another writer's timing, not this run's
                run.throughput.append(t)
        else:
            status, step = _parse_end(obj, path, i)
            if ended is not None and (status, step) != (ended[1], ended[2]):
                raise _err(
                    path,
                    i,
                    f"'end' with status {status!r} at step {step} after line {ended[0]} ended "
                    f"the run 'completed' at step {ended[2]}; {_ONE_RUN}",
                )
            if ended is None:
                self.ended, run.status = (i, status, step), status

    def finish(self, path: Path) -> None:
        """Add the warnings gathered over the log (one each, however many events)."""
        if self.repeats:
            self.run.warnings.append(
                f"{path}: {len(self.repeats)} 'eval' event(s) repeat an earlier one with identical values "
                f"(two trainers wrote this folder, or an evaluation was logged twice), each counted once: "
                + ", ".join(self.repeats)
            )
        if self.after_end:
            lines = self.after_end
            self.run.warnings.append(
                f"{path}: {len(lines)} event(s) after the 'completed' end at line {self.ended[0]} (lines "
                f"{lines[0]}-{lines[-1]}) only repeat the run; not used"
            )


def read_runlog(path: str | os.PathLike) -> RunLog:
    """Read and validate one run log (strict); `path` is the file or its run directory. See the module
    docstring for duplicated evaluations, repeated `start` events and events after `end`."""
    path = _resolve(path)
    state: _Reading | None = None
    tail: list[str] = []

    def warn(msg: str) -> None:
        warnings.warn(msg, stacklevel=4)
        tail.append(msg)

    for i, obj in _objects(path, warn):
        ev = obj.get("event")
        if ev not in _EVENTS:
            raise _err(path, i, f"field 'event': expected one of {list(_EVENTS)}, got {ev!r}")
        if state is None:
            if ev != "start":
                raise _err(path, i, f"the first event must be 'start', got '{ev}'")
            state = _Reading(_parse_start(obj, path, i), i)
        else:
            state.event(ev, obj, path, i)
    if state is None:
        raise RunLogError(f"{path}: empty run log (no 'start' event)")
    state.finish(path)
    run = state.run
    run.warnings.extend(tail)
    if run.status == "running":
        run.warnings.append(f"{path}: no 'end' event (run still running or killed); using its evaluations")
    elif run.status == "failed":
        run.warnings.append(f"{path}: run ended with status 'failed'; using its evaluations up to the end")
    return run


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


def read_state(path: str | os.PathLike) -> RunState:
    """The state of a run log for resuming it (the trainer) or skipping it (the sweep).

    Lenient where a killed writer leaves its mark and a resumed writer continues after it: a line that
    is not a JSON object is skipped anywhere, and field values are not validated (`read_runlog` does that
    for the science; a `step` or `budget_samples` that is not an integer is ignored, not a crash). The
    status is that of the last `end` event; `start` is the first `start` event, as written.
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
            merged = _after_torn_prefix(line)  # an older writer's merge: the event after the torn part
            if merged is None:
                continue
            ev = merged[1]
        kind = ev.get("event") if isinstance(ev, dict) else None
        if kind == "start":
            start = start or ev
        elif kind == "eval":
            step = _as_int(ev.get("step"))
            last_step = last_step if step is None else max(last_step, step)
            last_loss = ev.get("loss", {})
        elif kind == "end":
            status = "completed" if ev.get("status") == "completed" else "failed"
    budget = start.get("budget_samples") if start else None
    return RunState(
        status,
        started=start is not None,
        budget_samples=_as_int(budget),
        last_eval_step=last_step,
        last_loss=dict(last_loss) if isinstance(last_loss, dict) else {},
        start=start,
    )


def _as_int(v: Any) -> int | None:
    """`v` as an integer when it is one (JSON may spell 96 as 96.0 or 9.6e1), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v) if isinstance(v, int) or (math.isfinite(v) and v.is_integer()) else None
