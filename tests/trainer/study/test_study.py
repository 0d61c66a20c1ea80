"""The whole study, shrunk (2 phantom domains, tiny model, pilots of 96 samples), through scripts/demo.py:
real phantoms, ingest, lawfit's plan/fit/allocate/report, and sweeps launching `deepspeed trainer/run.py`
on CPU (voxmix.trainer.study); then `python -m trainer.sweep` on its own. Checks that the artefacts agree
with each other, recomputed here from the files, not from the demo's own numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voxmix.formats.allocation import read_allocation
from voxmix.formats.runlog import read_runlog
from voxmix.lawfit.lawsfile import Laws

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable
DOMAINS = ["ct_abdomen", "mri_brain"]
PILOT = 96


def _run(cmd, **kw):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "demo"
    cmd = [PY, "scripts/demo.py", "--out", str(out), "--domains", *DOMAINS, "--per-domain", "5",
           "--size", "40", "--pilot-samples", str(PILOT), "--evals", "4", "--final-evals", "3",
           "--bootstrap", "3", "--workers", "1", "--no-report", "--downstream", "no", "--min-eval", "0"]  # fmt: skip
    res = _run(cmd, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, cmd, res.stdout


def test_artefacts_agree(study):
    out, _, stdout = study
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(plan["domains"]) == DOMAINS
    assert {r["budget_samples"] for r in plan["runs"]} == {PILOT}
    # every pilot ran to completion with the plan's mixture and evaluated every domain
    for r in plan["runs"]:
        log = read_runlog(out / "runs" / r["run_id"])
        assert log.status == "completed"
        assert sorted(log.domains) == DOMAINS
        assert sum(log.evals[-1].samples_seen.values()) == PILOT
    # the laws validate (Laws.load checks the format) and predict finite positive losses
    laws = Laws.load(out / "laws.json")
    assert laws.domains == DOMAINS
    assert np.all(np.isfinite(laws.predict(np.full((1, 2), 100.0)))) and laws.form in (
        "no_transfer",
        "transfer",
        "transfer_repetition",
    )
    # the allocation sums to the budget, 4x the largest pilot, and the trainer's reader accepts it
    alloc = json.loads((out / "allocation.json").read_text())
    assert alloc["budget"]["samples"] == 4 * PILOT
    assert sum(e["samples"] for e in alloc["domains"].values()) == 4 * PILOT
    assert read_allocation(out / "allocation.json").total == 4 * PILOT
    prop = read_allocation(out / "allocation_proportional.json")
    assert prop.total == 4 * PILOT
    # the final runs saw exactly the allocations' samples per domain, with the same seed and steps
    ta = read_runlog(out / "final" / "final-transfer_aware")
    pr = read_runlog(out / "final" / "final-proportional")
    assert ta.evals[-1].samples_seen == {d: e["samples"] for d, e in alloc["domains"].items()}
    assert pr.evals[-1].samples_seen == prop.samples
    assert ta.seed == pr.seed and ta.evals[-1].step == pr.evals[-1].step
    # the comparison matches the run logs and the laws
    comp = json.loads((out / "comparison.json").read_text())
    P = {d: pr.evals[-1].loss[d] for d in DOMAINS}
    T = {d: ta.evals[-1].loss[d] for d in DOMAINS}
    gain = (sum(P.values()) - sum(T.values())) / sum(P.values())
    assert comp["gain"]["raw"] == pytest.approx(gain, rel=1e-9)
    pts = np.array([[p[3], p[4]] for p in comp["points"]])
    assert len(pts) == len(DOMAINS) * (len(ta.evals) + len(pr.evals))
    pred_final = laws.predict(np.array([[ta.evals[-1].samples_seen[d] for d in DOMAINS]], float))[0]
    assert comp["runs"]["transfer_aware"]["predicted"] == pytest.approx(dict(zip(DOMAINS, pred_final)))
    assert comp["r"] == pytest.approx(np.corrcoef(pts[:, 0], pts[:, 1])[0, 1])
    assert set(comp["hub_class"].values()) <= {"hub", "island", "intermediate"}
    report = (out / "report.md").read_text()
    assert f"{100 * gain:+.2f}%" in report and ("did NOT beat" in report) == (gain <= 0)


def test_rerun_skips_finished_stages(study):
    out, cmd, _ = study
    res = _run(cmd, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    for stage in ("phantoms", "ingest", "plan", "pilots", "fit", "allocate", "final_runs"):
        assert f"{stage}: done earlier" in res.stdout


def test_sweep_skips_completed_runs(study):
    out, _, _ = study
    res = _run([PY, "-m", "trainer.sweep", str(out / "plan.json"), "--runs-dir", str(out / "runs"),
                "--manifest", str(out / "data" / "manifest.jsonl")], timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "0 of 6 runs to do" in res.stderr
    assert res.stdout.count("completed earlier: skipped") == 6


def test_sweep_retries_a_failed_run_once_then_reports_it(study, tmp_path):
    out, _, _ = study
    plan = {"format": "voxmix.plan/1", "domains": ["no_such_domain"],
            "runs": [{"run_id": "bad", "role": "fit", "mixture": {"no_such_domain": 1.0},
                      "budget_samples": 16, "eval_at": [8, 16], "seed": 0}]}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    res = _run([PY, "-m", "trainer.sweep", str(tmp_path / "plan.json"), "--runs-dir", str(tmp_path / "runs"),
                "--manifest", str(out / "data" / "manifest.jsonl")], timeout=180)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.count("start bad") == 2 and "giving up" in res.stderr
    summary = json.loads((tmp_path / "runs" / "_sweep" / "summary.json").read_text())
    assert summary["runs"][0]["status"] == "failed" and summary["runs"][0]["attempts"] == 2
    assert "no_such_domain" in (tmp_path / "runs" / "_sweep" / "bad.attempt2.log").read_text()


def test_sweep_slurm_dry_run_prints_the_array(study):
    out, _, _ = study
    res = _run([PY, "-m", "trainer.sweep", str(out / "final_plan.json"), "--runs-dir", str(out / "new"),
                "--manifest", str(out / "data" / "manifest.jsonl"), "--launcher", "slurm", "--gpus-per-run", "4",
                "--parallel", "2", "--sbatch=--partition=gpu", "--dry-run"], timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    s = res.stdout
    assert (
        "#SBATCH --array=0-1%2" in s and "#SBATCH --gpus-per-node=4" in s and "#SBATCH --partition=gpu" in s
    )
    assert "RUNS=(final-proportional final-transfer_aware)" in s
    assert '--only "${RUNS[$SLURM_ARRAY_TASK_ID]}"' in s
    assert not (out / "new").exists()


def test_bad_plan_is_named(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"format": "voxmix.plan/1", "runs": [{"run_id": "x"}]}))
    (tmp_path / "m.jsonl").write_text("")
    res = _run([PY, "-m", "trainer.sweep", str(tmp_path / "plan.json"), "--runs-dir", str(tmp_path),
                "--manifest", str(tmp_path / "m.jsonl")], timeout=60)  # fmt: skip
    assert res.returncode == 2 and "runs[0]" in res.stderr and "plan.json" in res.stderr
