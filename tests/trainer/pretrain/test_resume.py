"""SIGKILL mid-run, --resume, and the same losses and sample counts as the uninterrupted reference run;
--resume refuses a corrupt or planted checkpoint and changed settings (#15 defects 1, 4, 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import torch

from tests.faults.faults_helpers import assert_clean_error
from tests.trainer.pretrain.trainer_helpers import PY, REPO, RUN_ARGS, env, events, run_trainer
from voxmix.formats.runlog import read_runlog
from voxmix.trainer.pretrain.checkpoint_files import record


def _start(args):
    return subprocess.Popen(
        [PY, str(REPO / "trainer" / "run.py"), *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_and_resume_reproduces_the_uninterrupted_run(dataset, reference_run, tmp_path):
    manifest, alloc = dataset
    out = tmp_path / "killed"
    args = [*RUN_ARGS, "--manifest", str(manifest), "--allocation", str(alloc), "--out", str(out)]
    # Polled every 2 ms: the kill lands a step or two after the step-8 checkpoint is published.
    proc = _start(args)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 90
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads(latest.read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            step = 0
        if step >= 8:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert killed_at is not None, (
        f"run ended before the kill (rc {proc.returncode}): {proc.stderr.read()[-2000:]}"
    )
    assert proc.returncode == -signal.SIGKILL
    partial = read_runlog(out)  # usable after the kill: no end event, a warning, the evals so far
    assert partial.status == "running" and partial.evals
    assert not any(e["event"] == "end" for e in events(out))

    # Settings that cannot change the run may change on resume (resume_check.ALLOWED_CHANGES): the
    # losses below stay those of the reference run.
    allowed = [
        "--set",
        "checkpoint.keep=3",
        "--set",
        "checkpoint.every_steps=6",
        "--set",
        "data.num_threads=2",
    ]
    run_trainer([*args, "--resume", *allowed])
    ref, got = read_runlog(reference_run), read_runlog(out)
    assert got.status == "completed"
    # Every evaluation once, at the same step, with the same samples seen and (fp32, CPU) the same loss.
    assert [(e.step, e.samples_seen) for e in got.evals] == [(e.step, e.samples_seen) for e in ref.evals]
    for a, b in zip(got.evals, ref.evals):
        for d in b.loss:
            assert abs(a.loss[d] - b.loss[d]) <= 1e-6 * b.loss[d], (a.step, d, a.loss[d], b.loss[d])
    # The per-step training losses after the resume point (re-done steps included) match the reference.
    ref_tp = {e["step"]: e["train_loss"] for e in events(reference_run, "throughput")}
    tp = events(out, "throughput")
    resumed = [e for e in tp if e["step"] > killed_at]
    assert resumed and {e["step"] for e in resumed} == set(range(killed_at + 1, 25))
    for e in tp:
        assert abs(e["train_loss"] - ref_tp[e["step"]]) <= 1e-6 * ref_tp[e["step"]], e["step"]
    # Resuming a completed run changes nothing.
    n = len(events(out))
    run_trainer([*args, "--resume"])
    assert len(events(out)) == n


def test_resume_without_or_with_corrupt_checkpoint_names_the_file(dataset, reference_run, tmp_path):
    manifest, alloc = dataset
    args = [*RUN_ARGS, "--manifest", str(manifest), "--allocation", str(alloc)]
    p = run_trainer([*args, "--out", str(tmp_path / "none"), "--resume"], check=False)
    assert p.returncode == 1 and str(tmp_path / "none" / "checkpoints" / "latest.json") in p.stderr
    # Truncate one DeepSpeed file of the last checkpoint of a copy of the reference run.
    import shutil

    run = tmp_path / "corrupt"
    shutil.copytree(reference_run, run)
    tag = json.loads((run / "checkpoints" / "latest.json").read_text())["tag"]
    victim = run / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    p = run_trainer([*args, "--out", str(run), "--resume"], check=False)
    assert p.returncode == 1 and str(victim) in p.stderr and "corrupt" in p.stderr


def _snapshot(run) -> dict[str, bytes]:
    """Every file of a run folder but the lock files (their holder info changes with every attempt)."""
    files = (p for p in sorted(run.rglob("*")) if p.is_file() and ".voxmix-lock" not in p.parts)
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def test_resume_with_changed_settings_is_refused_and_writes_nothing(dataset, reference_run, tmp_path):
    manifest, alloc = dataset
    run = tmp_path / "ref"  # same folder name: the run_id stays "ref"
    shutil.copytree(reference_run, run)
    before = _snapshot(run)
    p = run_trainer(
        [*RUN_ARGS, "--manifest", str(manifest), "--allocation", str(alloc), "--out", str(run), "--resume",
         "--set", "optim.lr=0.05", "--set", "data.batch_size=4"],
        check=False,
    )  # fmt: skip
    assert_clean_error(
        p,
        "voxmix: rank 0: --resume would change the run",
        "optim.lr: 0.001 -> 0.05",
        "data.batch_size: 8 -> 4",
        "total_steps: 24 -> 48",
        "another --out",
        code=1,
    )
    assert _snapshot(run) == before


def test_resume_refuses_a_planted_pickle_before_it_runs(dataset, reference_run, tmp_path):
    """The issue's attack: voxmix_rank0.pt replaced by a pickle calling os.system, the file list rewritten
    to match; --resume refuses it and the command never runs."""
    manifest, alloc = dataset
    run = tmp_path / "ref"
    shutil.copytree(reference_run, run)
    tag_dir = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["tag"]
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"torch": Planted()}, tag_dir / "voxmix_rank0.pt")
    record(tag_dir)
    runlog = (run / "runlog.jsonl").read_bytes()
    p = run_trainer(
        [*RUN_ARGS, "--manifest", str(manifest), "--allocation", str(alloc), "--out", str(run), "--resume"],
        check=False,
    )
    assert_clean_error(p, f"checkpoint file {tag_dir / 'voxmix_rank0.pt'} is refused", "posix.system", code=1)
    assert not marker.exists() and (run / "runlog.jsonl").read_bytes() == runlog
