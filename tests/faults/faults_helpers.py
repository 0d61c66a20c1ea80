"""The fault-injection suite's tools: run a command as a user would, and check that it fails cleanly.

Every test in tests/faults/ feeds one bad input or fault to a real command (a subprocess started the
way the README starts it) and checks the outcome a user sees: the exit status, a message that names the
file / field / value, no Python traceback, and no output that silently used the bad data.
docs/security.md lists every case with its message and the test that keeps it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command under test: one thread (two cores are shared with other tests), the
    CPU DeepSpeed accelerator, the repository importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_cli(
    args: list[str], *, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python <args>` (e.g. ["-m", "trainer.ingest", ...]) with captured text output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd or REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str, code: int | tuple[int, ...] = (1, 2)):
    """The command failed with exit status `code`, printed no traceback, and its stderr names each of
    `needles` (a file, a field, a value, the fix)."""
    codes = (code,) if isinstance(code, int) else code
    detail = f"exit {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"
    assert p.returncode in codes, detail
    assert "Traceback (most recent call last)" not in p.stderr, detail
    for needle in needles:
        assert needle in p.stderr, f"{needle!r} not in stderr\n{detail}"


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux: read from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def alive(pid: int) -> bool:
    """Process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_and_check_workers_die(proc: subprocess.Popen, workers: list[int], what: str) -> None:
    """SIGKILL `proc` (no cleanup runs) and assert its worker processes `workers` end within 5 s."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], f"{what} workers outlived the killed {what}"
