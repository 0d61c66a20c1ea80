"""Progress bars that read well both on a terminal and in a SLURM / nohup log (shared by ingest, phantoms,
labels and lawfit; standard library + tqdm, which lawfit already needs).

On a terminal: tqdm's own bar. On anything else (a log file, a pipe): one whole line every LOG_INTERVAL
seconds and one at the end. tqdm redraws with `\\r` whatever its output is (tqdm 4.70 has no line mode),
and in a log file those redraws run together into one line that grows for the whole job.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

LOG_INTERVAL = 30.0
"""Seconds between progress lines in a log file (a terminal redraws every 0.1 s, tqdm's default)."""


class _Lines:
    """A log file as tqdm's output: each redraw a line of its own, without the terminal's `\\r`."""

    def __init__(self, file: TextIO):
        self.file = file

    def write(self, text: str) -> None:
        for part in text.split("\r"):
            if part.strip():
                self.file.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.file.flush()


def progress(
    items: Iterable | None,
    desc: str,
    *,
    total: int | None = None,
    unit: str = "it",
    file: TextIO | None = None,
    **tqdm_kw: Any,
) -> Any:
    """tqdm over `items` (or a bar of `total` to update by hand) on stderr, as the module docstring says;
    `tqdm_kw` (e.g. disable=, leave=) pass through."""
    from tqdm import tqdm

    out = sys.stderr if file is None else file
    if getattr(out, "isatty", lambda: False)():
        return tqdm(items, total=total, desc=desc, unit=unit, file=out, dynamic_ncols=True, **tqdm_kw)
    tqdm_kw.pop("leave", None)  # a log keeps its lines: the last one says where the work ended
    # maxinterval too: tqdm's monitor thread would otherwise redraw every 10 s (its default).
    return tqdm(items, total=total, desc=desc, unit=unit, file=_Lines(out), ncols=80,
                mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, **tqdm_kw)  # fmt: skip
