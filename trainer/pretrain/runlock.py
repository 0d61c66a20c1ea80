"""The run-folder lock: one trainer at a time writes a run folder.

Each rank holds an exclusive `flock` on `<out>/.voxmix-lock/rank<R>` from before the process group starts
until the process exits (the kernel drops it when the process dies, even by SIGKILL, so a lock is never
stale). A second trainer on the same folder, e.g. started by a sweep rerun while an orphaned trainer of
the first sweep still runs, finds rank R's lock taken and stops before it writes anything. Every rank
checks its own file, so all ranks of the second trainer stop alike without talking to each other.

The file holds who took it (pid, host, start time) so that the message can say which process to wait
for or stop. `holders(out)` is the sweep's view: the ranks whose lock is held now.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_DIR = ".voxmix-lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock; the message names it."""


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (since {since})"


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class RunFolderLock:
    """Rank `rank`'s lock on run folder `out`; `acquire()` raises RunFolderBusy when it is taken."""

    def __init__(self, out: str | os.PathLike, rank: int):
        self.out = Path(out)
        self.path = self.out / LOCK_DIR / f"rank{rank}"
        self.fd: int | None = None

    def acquire(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(
                f"{self.out} is in use by another trainer: {_describe(_read_info(self.path))} holds "
                f"{self.path}. Wait for it to finish or stop it, then rerun (with --resume to continue)"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holders(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{lock file name: holder info} of the ranks whose lock on `out` is held by a live process now."""
    lock_dir = Path(out) / LOCK_DIR
    held: dict[str, dict[str, Any]] = {}
    if not lock_dir.is_dir():
        return held
    for path in sorted(lock_dir.glob("rank*")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held[path.name] = _read_info(path)
        finally:
            os.close(fd)  # also drops the shared lock taken by the probe
    return held


def describe_holders(held: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name}: {_describe(info)}" for name, info in held.items())
