"""The guard between the sweep and one run's launcher: the run's processes never outlive the sweep.

    python -I trainer/study/guard.py --parent PID -- deepspeed ... trainer/run.py ...

Why a guard: the `deepspeed` runner does not pass SIGTERM on to `deepspeed.launcher.launch` on one node
(only its multi-node pdsh mode installs a handler), so stopping the runner left the launcher and its
ranks training; and nothing at all ends them when the sweep is killed by SIGKILL. The sweep starts this
guard as the leader of a new process group; the runner, the launcher and the ranks inherit the group.
The guard ends the whole group (SIGTERM, then SIGKILL after a grace period) when:
- it gets SIGTERM, SIGINT or SIGHUP (the sweep is stopping: Ctrl-C, an error, its own SIGTERM);
- the sweep dies, even by SIGKILL: the kernel sends the guard SIGTERM (Linux `PR_SET_PDEATHSIG`), and
  elsewhere the guard sees its parent change within a poll;
- the runner exits while other processes of the group still run (strays of a crashed launcher).
It is a subreaper (Linux), so ranks orphaned by a dead launcher are its children: it exits only when
every process it started is gone, then with the runner's exit status (128 + N for signal N).

Standard library only, run with `python -I`: it starts in milliseconds and imports nothing of voxmix
(whose package would pull in torch).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False  # not Linux: the parent poll below still notices a dead sweep


def _say(msg: str) -> None:
    print(f"[sweep guard {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Guard:
    def __init__(self, parent: int, grace_s: float):
        self.parent = parent
        self.grace_s = grace_s
        self.stop_reason: str | None = None
        self.term_sent: float | None = None
        self.killed = False

    def on_signal(self, signum: int, _frame: object) -> None:
        # Also reached by the guard's own killpg(SIGTERM) below: it is in the group it ends.
        self.stop_reason = self.stop_reason or f"got {signal.Signals(signum).name}"

    def end_group(self) -> None:
        """SIGTERM to the group once, SIGKILL after the grace period (which also ends the guard)."""
        now = time.monotonic()
        if self.term_sent is None:
            self.term_sent = now
            _say(f"{self.stop_reason}: stopping the run's processes (group {os.getpgrp()})")
            self._killpg(signal.SIGTERM)
        elif not self.killed and now - self.term_sent > self.grace_s:
            self.killed = True
            _say(f"still running {self.grace_s:.0f} s after SIGTERM: SIGKILL")
            self._killpg(signal.SIGKILL)

    @staticmethod
    def _killpg(sig: int) -> None:
        try:
            os.killpg(os.getpgrp(), sig)
        except ProcessLookupError:
            pass

    def run(self, cmd: list[str]) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() != self.parent:  # the sweep died before the prctl above took effect
            self.stop_reason = "the sweep is gone"
        try:
            child = subprocess.Popen(cmd)
        except OSError as err:
            _say(f"cannot start {cmd[0]}: {err}")
            return 127
        rc: int | None = None
        while True:
            try:  # reap every exited process: the runner, and ranks orphaned to this subreaper
                while True:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        break
                    if pid == child.pid:
                        rc = os.waitstatus_to_exitcode(status)
                        child.returncode = rc  # reaped here, not by Popen
            except ChildProcessError:
                break  # every process started here is gone
            if self.stop_reason is None and os.getppid() != self.parent:
                self.stop_reason = "the sweep is gone"
            if self.stop_reason is None and rc is not None:
                self.stop_reason = f"the launcher exited ({rc}) and left processes behind"
            if self.stop_reason is not None:
                self.end_group()
            time.sleep(POLL_S)
        if rc is None:
            rc = 128 + signal.SIGTERM
        return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="guard.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--parent", type=int, required=True, help="pid of the sweep")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the launcher's command line")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command after --")
    return Guard(a.parent, a.grace).run(cmd)


if __name__ == "__main__":
    sys.exit(main())
