"""The real DeepSpeed launcher: two CPU processes (gloo), ZeRO-2 (and ZeRO-3), the tiny model, a few steps;
DeepSpeed's zero_to_fp32 on the ZeRO-3 checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tests.trainer.pretrain.trainer_helpers import PY, REPO, env
from voxmix.formats.encoder import read_card, read_encoder, sha256_file
from voxmix.formats.runlog import read_runlog
from voxmix.trainer.pretrain.config import ModelConfig
from voxmix.trainer.pretrain.model import MAE3D, encoder_state_dict_for_monai


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
    _zero_to_fp32_gives_the_exported_weights(out3, log3.config["model"], tmp_path / "fp32.pt")
    # the shareable encoder (ZeRO-3: gathered from both ranks): safetensors + the card that names it
    card = read_card(out3)
    assert card["step"] == 16 and card["run_id"] == "ds3" and (out3 / "MODEL_CARD.md").exists()
    assert card["weights"]["encoder.safetensors"]["sha256"] == sha256_file(out3 / "encoder.safetensors")


# zero_to_fp32.py as DeepSpeed copied it into checkpoints/, with no tag: it finds the tag through DeepSpeed's
# `latest` file. Through its function, not its command line: that one imports huggingface_hub (for
# sharding, even of one file), which voxmix does not install.
_ZERO_TO_FP32 = (
    "import sys, torch; sys.path.insert(0, sys.argv[1]); "
    "from zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as fp32; "
    "torch.save(dict(fp32(sys.argv[1])), sys.argv[2])"
)


def _zero_to_fp32_gives_the_exported_weights(run: Path, model_cfg: dict, out: Path) -> None:
    """DeepSpeed's own tool reads the ZeRO-3 checkpoint: its fp32 weights are the model's, those the run
    exported as its encoder."""
    ckpt = run / "checkpoints"
    assert (ckpt / "latest").read_text() == json.loads((ckpt / "latest.json").read_text())["tag"]
    p = subprocess.run([PY, "-c", _ZERO_TO_FP32, str(ckpt), str(out)], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    model = MAE3D(ModelConfig(**{**model_cfg, "reference": True}))
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)  # every parameter, no other key
    got, want = encoder_state_dict_for_monai(model), read_encoder(run)["state_dict"]
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want), [
        k for k in want if not torch.equal(got[k], want[k])
    ]
