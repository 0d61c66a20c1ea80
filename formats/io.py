"""Atomic output: a reader never sees a half-written file, and a crash never destroys the old one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FormatError


def current_umask() -> int:
    """The process umask. Read from /proc where it is there (no change to process state); elsewhere set
    and restored at once (os.umask is the only portable way to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def temp_file_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder, with the mode a plain write would give.

    mkstemp creates it 0600 whatever the umask; renamed over `path`, that mode would make every output
    private, so colleagues on a shared cluster could not read the data or the encoder. The temporary file
    lives in the destination folder so that the rename never crosses filesystems."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, new_file_mode())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename; the file gets the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Inf: write them as null rather than emitting invalid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _finite(obj.tolist())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(_finite(obj), indent=indent, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, error: type[FormatError] = FormatError) -> Any:
    """The decoded JSON file; a missing, unreadable or invalid file raises `error` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None


def jsonl_values(
    path: str | os.PathLike, error: type[FormatError] = FormatError
) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-empty line of a JSON-lines file; invalid JSON raises
    `error` naming the file and line."""
    path = Path(path)
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}: line {no}: invalid JSON ({exc})") from None
