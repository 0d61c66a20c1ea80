"""Worker processes that never outlive their parent, shared by lawfit's fits and ingest's pool.

A SIGKILLed (or OOM-killed) parent runs no cleanup, and ProcessPoolExecutor's workers then kept running
(ingest: holding CPU and memory until each finished its queue; lawfit: asleep on their queue forever,
seen after a killed `lawfit fit`). A worker calls `die_with_parent(parent_pid)` first: it asks the kernel
to kill it when its parent dies (Linux: prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls the
parent. Standard library only: lawfit installs without the training stack.

PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends; ProcessPoolExecutor forks from the
thread that submits, which outlives the pool. Under "forkserver" (Python 3.14's default on Linux) a
worker's parent would be the fork server, not the pool's owner: pools that use this pin "fork" on Linux.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_S = 1.0


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """In a worker process: end this process when process `parent` dies (even by SIGKILL)."""
    if not _set_pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # The parent may have died between the fork and the prctl above: then no signal comes.
    if os.getppid() != parent:
        os._exit(1)
