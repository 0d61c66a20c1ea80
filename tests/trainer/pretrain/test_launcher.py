"""The real DeepSpeed launcher: two CPU processes (gloo), ZeRO-2 (and ZeRO-3), the tiny model, a few steps."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.trainer.pretrain.trainer_helpers import PY, REPO, env
from voxmix.formats.runlog import read_runlog


def _launch(manifest, alloc, out: Path, stage: int) -> str:
    """Train 2 CPU ranks under the real launcher; -> the rendezvous port."""
    deepspeed = str(Path(PY).parent / "deepspeed")
    with socket.socket() as s:  # a free rendezvous port: other test sessions may run at the same time
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    # 5 eval crops per domain over 2 ranks: uneven shards (ZeRO-3 pads them to equal forward counts).
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", port, "trainer/run.py", "--config", "configs/tiny.yaml",
           "--manifest", str(manifest), "--allocation", str(alloc), "--out", str(out), "--eval-at", "64",
           "--budget-samples", "128", "--set", "data.batch_size=4", "--set", f"train.zero_stage={stage}",
           "--set", "train.log_every=4", "--set", "data.num_threads=1", "--set", "eval.crops_per_domain=5"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return port


def test_deepspeed_launcher_two_processes_zero2(dataset, tmp_path):
    manifest, alloc = dataset
    out = tmp_path / "ds2"
    port = _launch(manifest, alloc, out, 2)
    # DeepSpeed's CPU all-reduce buffer (/dev/shm, 69 MB per process, made when all ranks share a node)
    # is removed when the run ends: it used to outlive every run (330 launches filled 22 GB of RAM).
    for rank in (0, 1):
        assert not Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_{rank}").exists()
    log = read_runlog(out)
    assert log.status == "completed" and log.config["train"]["zero_stage"] == 2
    # 2 ranks x 4 = 8 samples per step: 16 steps; the sampler shards the one global sequence by rank.
    assert [e.step for e in log.evals] == [8, 16]
    assert log.evals[-1].samples_seen == {"ct_abdomen": 64, "mri_brain": 64}
    assert all(0 < v < 2 for v in log.evals[-1].loss.values())
    assert [t["step"] for t in log.throughput] == [4, 8, 12, 16]
    assert (out / "encoder.pt").exists() and (out / "checkpoints" / "latest.json").exists()
    ranks = sorted(x.name for x in (out / "checkpoints").glob("step_*/voxmix_rank*.pt"))
    assert ranks == ["voxmix_rank0.pt", "voxmix_rank1.pt"]

    # ZeRO-3 (parameters sharded too) trains the same model on the same samples: the same curve.
    out3 = tmp_path / "ds3"
    _launch(manifest, alloc, out3, 3)
    log3 = read_runlog(out3)
    assert [(e.step, e.samples_seen) for e in log3.evals] == [(e.step, e.samples_seen) for e in log.evals]
    for a, b in zip(log3.evals, log.evals):
        for d in b.loss:
            assert a.loss[d] == pytest.approx(b.loss[d], rel=1e-4)
