"""The real DeepSpeed launcher: two CPU processes (gloo), ZeRO-2, the tiny model, a few steps."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from trainer_helpers import PY, REPO, env

from lawfit.runlog import read_runlog


def test_deepspeed_launcher_two_processes_zero2(dataset, tmp_path):
    manifest, alloc = dataset
    out = tmp_path / "ds2"
    deepspeed = str(Path(PY).parent / "deepspeed")
    with socket.socket() as s:  # a free rendezvous port: other test sessions may run at the same time
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", port, "trainer/run.py", "--config", "configs/tiny.yaml",
           "--manifest", str(manifest), "--allocation", str(alloc), "--out", str(out), "--eval-at", "64",
           "--budget-samples", "128", "--set", "data.batch_size=4", "--set", "train.zero_stage=2",
           "--set", "train.log_every=4", "--set", "data.num_threads=1"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
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
