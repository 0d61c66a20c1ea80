"""The sweep's child processes: each run's launcher starts under a guard and ends with the sweep.

`start_guarded` starts `guard.py -- <launcher command>` as the leader of a new process group (the
runner, `deepspeed.launcher.launch` and the ranks inherit it; guard.py says why a guard is needed and
what it does). `stop_all` ends running attempts: SIGTERM to each guard, which ends its group; SIGKILL to
the group for whatever is left after the grace period. `stop_signals` turns SIGTERM and SIGHUP into a
`SweepInterrupted` exception, as Ctrl-C is a KeyboardInterrupt, so that one `except BaseException` path
stops the children whatever ended the sweep; SIGKILL of the sweep is the guards' business.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

GUARD = Path(__file__).with_name("guard.py")
GRACE_S = 10.0
"""Seconds between SIGTERM and SIGKILL for a run's processes."""


class SweepInterrupted(KeyboardInterrupt):
    """The sweep got SIGTERM or SIGHUP (SIGINT is a plain KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def guarded_command(cmd: list[str], grace_s: float = GRACE_S) -> list[str]:
    # -I: the guard imports nothing from the repository or the environment's PYTHONPATH (stdlib only).
    return [
        sys.executable,
        "-I",
        str(GUARD),
        "--parent",
        str(os.getpid()),
        "--grace",
        str(grace_s),
        "--",
        *cmd,
    ]


def start_guarded(cmd: list[str], *, log: IO[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start `cmd` under a guard in a process group of its own (pgid = the guard's pid)."""
    return subprocess.Popen(
        guarded_command(cmd),
        stdin=subprocess.DEVNULL,  # a background group reading the terminal would be stopped (SIGTTIN)
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,  # Ctrl-C reaches the sweep only, which stops its children in order
    )


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exited(p: subprocess.Popen) -> bool:
    """Whether the guard has exited, without reaping it: until `p.wait()`, its pid, and so its process
    group id, cannot be reused, so a SIGKILL to the group cannot reach an unrelated process."""
    return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def stop_all(procs: list[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    """End every guarded attempt in `procs` (not yet reaped) and wait for it (at most grace_s + 5 s)."""
    procs = [p for p in procs if p.returncode is None]  # a reaped one's pid may be another process's now
    for p in procs:
        # To the guard, which ends its group (SIGTERM, SIGKILL after grace_s). Not Popen.terminate(): it
        # would reap an exited guard and free its pid before the SIGKILL to the group below.
        os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 5
    for p in procs:
        while not _exited(p) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Whatever is left of the group: none after a guard that finished its work; the ranks of a
        # guard that did not (killed, or stuck past the deadline, killed now).
        _killpg(p.pid, signal.SIGKILL)
        p.wait()


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `SweepInterrupted` (main thread only; elsewhere the
    block runs with the handlers it has; a signal already ignored stays so). A second signal while the
    children are being stopped is ignored: the first one's cleanup finishes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise SweepInterrupted(signum)

    # A signal the sweep was started ignoring stays ignored: `nohup` sets SIGHUP so, and the sweep must
    # then outlive its terminal.
    sigs = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP within the block (main thread only): the children's stop runs
    to its end even if the user presses Ctrl-C again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
