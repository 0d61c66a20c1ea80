"""The demo's bookkeeping: a clock for its log lines, stage stamps (a finished stage is skipped on a
rerun), the output folder's paths, and hiding a stage's chatter unless it fails."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from voxmix.formats.io import atomic_write_text


class Clock:
    """The demo's log lines carry the seconds since it started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        print(f"[demo {self.elapsed():6.1f} s] {msg}", flush=True)


class Stages:
    """Stamp files: a finished stage is skipped on the next run (unless the demo starts --fresh)."""

    def __init__(self, out: Path, clock: Clock):
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock

    def run(self, name: str, fn: Callable[[], None]) -> None:
        stamp = self.dir / f"{name}.done"
        if stamp.exists():
            self.clock.say(f"{name}: done earlier ({stamp.read_text().strip()}), skipped")
            return
        t = time.monotonic()
        self.clock.say(f"{name}: start")
        fn()
        took = f"{time.monotonic() - t:.1f} s"
        atomic_write_text(stamp, took + "\n")
        self.clock.say(f"{name}: finished in {took}")

    def times(self) -> dict[str, float | None]:
        """Seconds each finished stage took (its stamp; across reruns), None where a stamp is unreadable."""
        out: dict[str, float | None] = {}
        for f in sorted(self.dir.glob("*.done"), key=lambda f: f.stat().st_mtime):
            try:
                out[f.stem] = float(f.read_text().split()[0])
            except (ValueError, IndexError):
                out[f.stem] = None
        return out


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    @property
    def phantoms(self) -> Path:
        return self.out / "phantoms"

    @property
    def manifest(self) -> Path:
        return self.out / "data" / "manifest.jsonl"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def final(self) -> Path:
        return self.out / "final"

    def file(self, name: str) -> Path:
        """plan.json, final_plan.json, laws.json, allocation.json, ... directly in the output folder."""
        return self.out / name


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide a stage's chatter (progress lines); show it only if the stage fails."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue()[-8000:])
        raise
