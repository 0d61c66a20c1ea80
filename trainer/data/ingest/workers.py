"""The ingest's worker pool: processes that never outlive the ingest that started them.

A SIGKILLed (or OOM-killed) parent runs no cleanup, and ProcessPoolExecutor's workers then kept
running, holding CPU and memory, until each finished its queue. Each worker now dies with its parent
(voxmix.formats.workers).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from voxmix.formats.workers import die_with_parent


def _init_worker(parent: int) -> None:
    die_with_parent(parent)
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
