"""Fits in parallel: a process pool (fork where available) over independent jobs, with one BLAS thread
per worker and a progress bar on stderr."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Protocol


class _Opts(Protocol):
    workers: int
    progress: bool


def _pool(cfg: _Opts, n_jobs: int):
    workers = cfg.workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, n_jobs))
    if workers == 1:
        return None
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
    )


def _init_worker(parent: int) -> None:
    """Die with the parent (a killed `lawfit fit` left its workers asleep on their queue forever), and
    one BLAS thread: the fits multiply small matrices (points x parameters), and a multi-threaded BLAS in
    every worker only spins and oversubscribes the cores (measured: 12x slower bootstrap on 2 cores)."""
    from threadpoolctl import threadpool_limits

    from voxmix.formats.workers import die_with_parent

    die_with_parent(parent)

    threadpool_limits(1)


def _progress(total: int, desc: str, cfg: _Opts):
    from voxmix.formats.progress import progress  # whole lines in a SLURM log, tqdm's bar on a terminal

    return progress(None, desc, total=total, unit="fit", disable=not cfg.progress or total <= 1, leave=False)


def map_jobs(fn, jobs: list, cfg: _Opts, desc: str) -> list:
    """[fn(*job) for job in jobs], in cfg.workers processes (0: one per core)."""
    out = [None] * len(jobs)
    pool = _pool(cfg, len(jobs))
    with _progress(len(jobs), desc, cfg) as bar:
        if pool is None:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                for a, job in enumerate(jobs):
                    out[a] = fn(*job)
                    bar.update()
        else:
            with pool:
                futs = {pool.submit(fn, *job): a for a, job in enumerate(jobs)}
                for fut in as_completed(futs):
                    out[futs[fut]] = fut.result()
                    bar.update()
    return out
