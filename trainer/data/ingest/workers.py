"""The ingest's worker pool: processes that never outlive the ingest that started them.

A SIGKILLed (or OOM-killed) parent runs no cleanup, and ProcessPoolExecutor's workers then kept
running, holding CPU and memory, until each finished its queue. Each worker now asks the kernel to kill
it when its parent dies (Linux: prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls the parent.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

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


def _init_worker(parent: int) -> None:
    if not _set_pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # The parent may have died between the fork and the prctl above: then no signal comes.
    if os.getppid() != parent:
        os._exit(1)
    import torch

    torch.set_num_threads(1)  # parallelism comes from the worker processes


def make_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process. PR_SET_PDEATHSIG fires when the thread that
    forked a worker ends; the executor forks from the thread that submits, which outlives the pool.
    Linux pins "fork" (3.11's default there): under "forkserver" (3.14's) a worker's parent would be the
    fork server, not the ingest."""
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
    )
