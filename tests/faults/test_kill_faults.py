"""SIGKILL of `lawfit fit` at an arbitrary moment loses nothing (one of the cases #15 found handled
well, kept here): the previous laws.json stays byte-identical, and the fit's worker processes die with
it (they were left asleep on their queue forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.faults_helpers import REPO, alive, children, cli_env, kill_and_check_workers_die
from tests.lawfit.lawfit_helpers import make_truth
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.simulate import default_design, simulate_runs


def test_sigkill_during_fit_keeps_the_previous_laws_file(tmp_path):
    truth = make_truth(m=3)
    plan = default_design(truth, budget_per_run=2000, n_mixtures=None, n_evals=4, seed=0)
    simulate_runs(truth, plan, tmp_path / "runs", seed=0)
    out = tmp_path / "laws.json"
    truth.save(out)  # stands for the laws of an earlier fit
    before = out.read_bytes()
    exe = str(Path(sys.executable).parent / "lawfit")
    # Many bootstrap resamples: the fit is still running when it is killed.
    cmd = [
        sys.executable,
        exe,
        "fit",
        str(tmp_path / "runs"),
        "-o",
        str(out),
        "--bootstrap",
        "400",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        # Killed while its worker pool runs (the fit makes a pool per stage: wait until one is up).
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = children(proc.pid)
        assert proc.poll() is None, "the fit ended before it could be killed: " + proc.stderr.read().decode()
        assert len(workers) >= 2, "the fit's worker processes were not found"
        kill_and_check_workers_die(proc, workers, "fit")
    finally:
        proc.kill()
        proc.wait()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
    assert out.read_bytes() == before
    Laws.load(out)  # still a valid laws file
