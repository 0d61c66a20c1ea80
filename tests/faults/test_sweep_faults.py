"""The sweep under faults (#15 defects 6, 7, 9): `python -m trainer.sweep` as a user runs it.

6: stopping the sweep (SIGTERM) or killing it (SIGKILL) leaves no process of its trainer behind, and the
   rerun is the folder's only writer; a folder that a live trainer holds is reported, never started twice.
7: a finished run whose plan entry or trainer config changed is reported as stale (field old -> new), and
   --keep-stale / --rerun-stale are the ways out.
9: bad mixtures, run ids, unknown domains and control characters are refused before anything starts,
   exit 2, the reason on the console.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.faults_helpers import REPO, cli_env, run_cli
from tests.trainer.pretrain.trainer_helpers import make_dataset
from voxmix.trainer.pretrain.runlock import holders
from voxmix.trainer.sweep import main as sweep_main

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc (Linux)")

RUN = {"run_id": "r1", "role": "fit", "mixture": {"ct_abdomen": 0.5, "mri_brain": 0.5},
       "budget_samples": 8, "eval_at": [8], "seed": 0}  # fmt: skip
HOLD = (
    "import sys, time; from voxmix.trainer.pretrain.runlock import RunFolderLock; "
    "RunFolderLock(sys.argv[1], 0).acquire(); print('held', flush=True); time.sleep(120)"
)


def _plan(path: Path, *runs: dict, domains=("ct_abdomen", "mri_brain")) -> Path:
    path.write_text(json.dumps({"format": "voxmix.plan/1", "domains": list(domains), "runs": list(runs)}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny manifest (2 domains x 2 train + 1 val volumes of 32^3) and a one-run plan of one step."""
    root = tmp_path_factory.mktemp("sweep_faults")
    manifest = make_dataset(root / "data", train=2, val=1, shape=(32, 32, 32))
    _plan(root / "plan.json", RUN)
    return manifest


def _args(root: Path, manifest: Path, plan: str = "plan.json", *extra: str) -> list[str]:
    return [str(root / plan), "--runs-dir", str(root / "runs"), "--manifest", str(manifest), *extra]


def _sweep(capsys, args: list[str]) -> tuple[int, str, str]:
    """`python -m trainer.sweep ARGS` in this process (its main(), as the command runs it)."""
    rc = sweep_main(args)
    out, err = capsys.readouterr()
    return rc, out, err


# ---- 9: refused up front ------------------------------------------------------------------------------
BAD_PLANS = [
    (
        {**RUN, "mixture": {"ct_abdomen": float("nan"), "mri_brain": 1.0}},
        "runs[0] ('r1'): field 'mixture.ct_abdomen'",
        "nan",
    ),
    (
        {**RUN, "mixture": {"ct_abdomen": -0.5, "mri_brain": 1.5}},
        "runs[0] ('r1'): field 'mixture.ct_abdomen'",
        "-0.5",
    ),
    (
        {**RUN, "mixture": {"ct_abdomen": 0, "mri_brain": 0}},
        "runs[0] ('r1'): field 'mixture'",
        "every weight is 0",
    ),
    ({**RUN, "run_id": "../../x"}, "runs[0]: field 'run_id'", "'../../x' is not a usable folder name"),
    ({**RUN, "run_id": "/abs"}, "runs[0]: field 'run_id'", "'/abs'"),
    ({**RUN, "run_id": ".."}, "runs[0]: field 'run_id'", "'..'"),
    ({**RUN, "run_id": "a\nb"}, "runs[0]: field 'run_id'", "'a\\nb'"),
    ({**RUN, "run_id": "a\x00b"}, "runs[0]: field 'run_id'", "'a\\x00b'"),
    # valid for the plan, refused by the trainer's config (seeds reach NumPy's 32-bit seeding)
    ({**RUN, "seed": 2**40}, "run 'r1'", "config field 'train.seed' = 1099511627776"),
]


def test_bad_plans_are_refused_before_anything_starts(data, tmp_path, capsys):
    for i, (run, field, value) in enumerate(BAD_PLANS):
        plan = _plan(tmp_path / f"plan{i}.json", run)
        rc, _, err = _sweep(capsys, _args(tmp_path, data, plan.name))
        assert rc == 2 and f"sweep: error: {plan}: " in err and field in err and value in err, err
    # a newline in --sbatch would be a line of the SLURM script
    plan = _plan(tmp_path / "good.json", RUN)
    rc, _, err = _sweep(
        capsys, _args(tmp_path, data, plan.name, "--launcher", "slurm", "--sbatch=-p x\nrm -rf ~")
    )
    assert rc == 2 and "--sbatch '-p x\\nrm -rf ~': control character(s)" in err
    assert not (tmp_path / "runs").exists()  # nothing started, not even the sweep's own folder


def test_a_domain_the_manifest_lacks_is_refused_on_the_console(data, tmp_path, capsys):
    # The plan itself is consistent (its domains list names "liver"), the manifest has no such domain:
    # before, the run failed at launch, was retried, exit 1, the reason only in _sweep/r1.attempt2.log.
    liver = {**RUN, "run_id": "r2", "mixture": {"liver": 0.5, "mri_brain": 0.5}}
    plan = _plan(tmp_path / "plan.json", RUN, liver, domains=("ct_abdomen", "liver", "mri_brain"))
    rc, _, err = _sweep(capsys, _args(tmp_path, data, plan.name))
    assert rc == 2 and f"sweep: error: {plan}: 1 run(s) name domains that --manifest {data}" in err, err
    assert "r2: domain(s) ['liver'] not in the manifest" in err and "(it has: ct_abdomen, mri_brain)" in err
    assert "nothing was started" in err and not (tmp_path / "runs").exists()


# ---- 6: a busy folder is not started twice ------------------------------------------------------------
def test_a_folder_held_by_a_live_trainer_is_reported_not_started(data, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        plan = _plan(tmp_path / "plan.json", RUN)
        rc, _, err = _sweep(capsys, _args(tmp_path, data, plan.name))
        assert rc == 1 and f"BUSY  r1: {run_dir} is in use by another trainer" in err, err
        assert f"pid {holder.pid}" in err and "Wait for it to finish or stop it" in err
        # not started (no attempt), not moved aside, not counted as a failure to retry
        assert not list((tmp_path / "runs" / "_sweep").glob("r1.attempt*.log"))
        assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == ["_sweep", "r1"]
        summary = json.loads((tmp_path / "runs" / "_sweep" / "summary.json").read_text())["runs"][0]
        assert (summary["status"], summary["attempts"]) == ("busy", 0) and f"pid {holder.pid}" in summary[
            "note"
        ]
    finally:
        holder.kill()
        holder.wait()


# ---- 6: stopping or killing the sweep ends its trainer; the rerun is the only writer --------------------
def _processes(needle: str) -> dict[int, str]:
    """Live (not zombie) processes whose command line contains `needle`: {pid: command line}."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmd and state != "Z":
            found[int(d.name)] = cmd
    return found


def _wait(predicate, timeout: float) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def _kill_sweep_with_its_trainer_running(args: list[str], needle: str, sig: int, ports: set[str]) -> dict:
    """Start the sweep, wait for its trainer rank, send `sig` to the sweep; what survived and when."""
    p = subprocess.Popen(
        [sys.executable, "-m", "trainer.sweep", *args],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        up = _wait(lambda: any("--local_rank" in c for c in _processes(needle).values()), 120)
        before = _processes(needle)
        ports.update(m for c in before.values() for m in re.findall(r"--master_port[= ](\d+)", c))
        p.send_signal(sig)
        gone = _wait(lambda: not _processes(needle), 20)
        _, err = p.communicate(timeout=30)
        return {
            "up": up,
            "gone": gone,
            "before": before,
            "left": _processes(needle),
            "rc": p.returncode,
            "err": err,
        }
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def killed_then_rerun(data):
    """A sweep stopped by SIGTERM, its rerun killed by SIGKILL (each while its trainer runs), then a
    rerun to the end. Leftover processes of the run (none, unless the sweep orphans them) are killed by
    pid and their DeepSpeed /dev/shm buffers removed, so that a failure leaves nothing behind."""
    root = data.parent.parent
    run_dir = root / "runs" / "r1"
    needle = f"--out {run_dir}"
    ports: set[str] = set()
    try:
        term = _kill_sweep_with_its_trainer_running(_args(root, data), needle, signal.SIGTERM, ports)
        kill = _kill_sweep_with_its_trainer_running(_args(root, data), needle, signal.SIGKILL, ports)
        lock_free = _wait(lambda: not holders(run_dir), 5) is not None
        last = run_cli(["-m", "trainer.sweep", *_args(root, data)], timeout=180)
        yield {
            "term": term,
            "kill": kill,
            "lock_free": lock_free,
            "last": last,
            "run_dir": run_dir,
            "root": root,
        }
    finally:
        for pid in _processes(needle):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for port in ports:
            for buf in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
                buf.unlink(missing_ok=True)


@pytest.mark.parametrize("which", ["term", "kill"])
def test_stopping_or_killing_the_sweep_ends_its_trainer(killed_then_rerun, which):
    r = killed_then_rerun[which]
    detail = f"{r['err'][-3000:]}\nbefore: {r['before']}\nleft: {r['left']}"
    assert r["up"] is not None, "the trainer never started\n" + detail
    assert r["gone"] is not None and not r["left"], "processes of the run survived the sweep\n" + detail
    # the guard, the deepspeed runner, its launcher and the rank were all running
    assert any("guard.py" in c for c in r["before"].values()) and len(r["before"]) >= 4, detail
    if which == "term":
        assert r["rc"] == 128 + signal.SIGTERM and "sweep: stopped by SIGTERM" in r["err"], detail
        assert "stopping 1 run(s): r1" in r["err"] and "Traceback" not in r["err"], detail
    else:
        assert r["rc"] == -signal.SIGKILL, detail
    assert killed_then_rerun["lock_free"]


def test_the_rerun_after_a_kill_is_the_only_writer(killed_then_rerun):
    last, run_dir = killed_then_rerun["last"], killed_then_rerun["run_dir"]
    assert last.returncode == 0, last.stderr[-3000:]
    events = [json.loads(x) for x in (run_dir / "runlog.jsonl").read_text().splitlines() if x.strip()]
    kinds = [e["event"] for e in events]
    evals = [e["step"] for e in events if e["event"] == "eval"]
    # one trainer wrote this log: one end, each evaluation once (two trainers wrote both twice)
    assert kinds.count("end") == 1 and events[-1]["status"] == "completed", kinds
    assert evals == sorted(set(evals)) and evals, kinds


# ---- 7: stale runs (uses the run finished above; runs last: --rerun-stale moves it aside) ---------------
def test_a_finished_run_with_other_settings_is_reported_stale(killed_then_rerun, data, capsys):
    root, run_dir = killed_then_rerun["root"], killed_then_rerun["run_dir"]
    log_before = (run_dir / "runlog.jsonl").read_bytes()
    changed = {**RUN, "seed": 1, "mixture": {"ct_abdomen": 0.25, "mri_brain": 0.75}}
    _plan(root / "plan_changed.json", changed)
    args = _args(root, data, "plan_changed.json", "--set", "optim.lr=0.002", "--set", "data.num_threads=1")
    rc, out, err = _sweep(capsys, args)
    assert rc == 1, err
    for needle in ("STALE r1:", "mixture.ct_abdomen 0.5 -> 0.25", "mixture.mri_brain 0.5 -> 0.75",
                   "seed 0 -> 1", "config optim.lr 0.001 -> 0.002", "--rerun-stale", "--keep-stale"):  # fmt: skip
        assert needle in err, err
    assert "num_threads" not in err  # loader threads do not change a run
    assert "stale" in out and (run_dir / "runlog.jsonl").read_bytes() == log_before  # untouched
    # the same plan and config as the run's: done, not stale
    rc, out, _ = _sweep(capsys, _args(root, data, "plan.json", "--set", "data.num_threads=1"))
    assert rc == 0 and "completed earlier: skipped" in out and "stale" not in out
    rc, out, _ = _sweep(capsys, [*args, "--keep-stale"])
    assert rc == 0 and "stale, kept: mixture.ct_abdomen 0.5 -> 0.25" in out
    # --rerun-stale moves it aside, out of `lawfit fit runs/`'s sight, and starts it again (here with a
    # launcher that fails at once: the move is what this checks, not another training run)
    rc, out, err = _sweep(
        capsys, [*args, "--rerun-stale", "--retries", "0", "--deepspeed", shutil.which("false")]
    )
    aside = root / "runs" / "r1.stale1"
    assert (aside / "runlog.stale.jsonl").read_bytes() == log_before and not (aside / "runlog.jsonl").exists()
    assert rc == 1 and "earlier stale run moved to r1.stale1" in out, out + err
