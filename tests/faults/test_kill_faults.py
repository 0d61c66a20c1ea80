"""SIGKILL of `lawfit fit` at an arbitrary moment loses nothing (one of the cases #15 found handled
well, kept here): the previous laws.json stays byte-identical or is replaced whole by a valid one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.faults_helpers import REPO, cli_env
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
    try:
        time.sleep(4.0)
        assert proc.poll() is None, "the fit ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    assert out.read_bytes() == before
    Laws.load(out)  # still a valid laws file
