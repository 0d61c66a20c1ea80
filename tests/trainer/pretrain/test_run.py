"""One-process runs of trainer/run.py: run log contents, exact per-domain sample counts, encoder.pt, golden curve."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.trainer.pretrain.trainer_helpers import RUN_ARGS, events, run_trainer
from voxmix.formats.runlog import read_runlog
from voxmix.trainer.pretrain.config import config_from_dict
from voxmix.trainer.pretrain.model import load_monai_vit
from voxmix.trainer.pretrain.optim import deepspeed_config

GOLDEN = Path(__file__).parent / "golden" / "tiny_cpu.json"


def test_runlog_is_valid_and_counts_are_exact(reference_run):
    log = read_runlog(reference_run)
    assert log.status == "completed" and not log.warnings
    assert log.domains == ["ct_abdomen", "mri_brain"] and log.budget_samples == 192
    assert log.unique_samples == {"ct_abdomen": 6, "mri_brain": 6}  # train volumes per domain
    steps = [e.step for e in log.evals]
    assert steps == [2, 4, 8, 16, 24]  # 16, 32, 64, 128 and the end (192) samples at 8 per step
    for e in log.evals:
        assert sum(e.samples_seen.values()) == 8 * e.step
        assert set(e.loss) == {"ct_abdomen", "mri_brain"} and all(0 < v < 2 for v in e.loss.values())
    assert log.evals[-1].samples_seen == {"ct_abdomen": 96, "mri_brain": 96}  # exactly the allocation
    tp = events(reference_run, "throughput")
    assert [e["step"] for e in tp] == list(range(1, 25))
    for key in (
        "samples_per_s",
        "voxels_per_s",
        "step_time_s",
        "data_wait_frac",
        "tflops_per_device",
        "peak_memory_bytes",
        "train_loss",
        "lr",
    ):
        assert all(key in e for e in tp), key
    assert tp[-1]["voxels_per_s"] == pytest.approx(tp[-1]["samples_per_s"] * 32**3)
    # The held-out loss goes down over the run.
    first, last = log.evals[0].loss, log.evals[-1].loss
    assert all(last[d] < first[d] for d in first)


def test_encoder_export_loads_into_monai(reference_run):
    vit = load_monai_vit(reference_run / "encoder.pt").eval()
    blob = torch.load(reference_run / "encoder.pt", weights_only=True)
    assert blob["step"] == 24 and blob["monai_vit_kwargs"]["img_size"] == (32, 32, 32)
    with torch.no_grad():
        y, _ = vit(torch.randn(1, 1, 32, 32, 32))
    assert y.shape == (1, 64, 96) and torch.isfinite(y).all()


def test_effective_deepspeed_config_is_saved(reference_run):
    """`deepspeed_config.json`: the dict the trainer passed to `deepspeed.initialize`, for its config."""
    saved = json.loads((reference_run / "deepspeed_config.json").read_text())
    cfg = config_from_dict(json.loads((reference_run / "config.json").read_text())["config"])
    assert saved == deepspeed_config(cfg, world_size=1, bf16=False)
    # configs/tiny.yaml on one CPU rank in fp32: 8 samples x 1 rank x 1 micro-batch, ZeRO-2.
    assert (saved["train_batch_size"], saved["zero_optimization"], saved["bf16"]) == (
        8,
        {"stage": 2},
        {"enabled": False},
    )


def _curve(run_dir):
    return {
        "train_loss": [e["train_loss"] for e in events(run_dir, "throughput")],
        "eval": {str(e["step"]): e["loss"] for e in events(run_dir, "eval")},
    }


def test_golden_loss_curve(reference_run):
    """Tiny deterministic CPU run (fp32, seed 0, 1 thread) against the committed curve.

    Regenerate after an intended change of the model or data path with VOXMIX_REGEN_GOLDEN=1.
    """
    got = _curve(reference_run)
    if os.environ.get("VOXMIX_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"args": RUN_ARGS, **got}, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    hint = (
        "the tiny CPU loss curve changed; if the model, kernels or data path (crops, sampler) changed on "
        "purpose, regenerate with VOXMIX_REGEN_GOLDEN=1 and commit tests/trainer/pretrain/golden/tiny_cpu.json"
    )
    torch.testing.assert_close(
        torch.tensor(got["train_loss"]),
        torch.tensor(want["train_loss"]),
        rtol=2e-4,
        atol=0,
        msg=lambda m: f"{m}\n{hint}",
    )
    assert got["eval"].keys() == want["eval"].keys()
    for step, losses in want["eval"].items():
        for d, v in losses.items():
            assert got["eval"][step][d] == pytest.approx(v, rel=2e-4), (step, d, hint)


def test_budget_override_reference_switch_and_grad_accum(dataset, tmp_path):
    manifest, alloc = dataset
    out = tmp_path / "b"
    run_trainer(["--config", "configs/tiny.yaml", "--manifest", str(manifest), "--allocation", str(alloc),
                 "--out", str(out), "--budget-samples", "64", "--eval-at", "32", "--reference",
                 "--set", "data.num_threads=1", "--set", "optim.grad_accum=2", "--set", "train.log_every=2"])  # fmt: skip
    log = read_runlog(out)
    # 64 samples in optimizer steps of 2 micro-batches x 8: 4 steps, evaluations after 32 and 64 samples.
    assert log.budget_samples == 64 and [e.step for e in log.evals] == [2, 4]
    assert log.evals[-1].samples_seen == {"ct_abdomen": 32, "mri_brain": 32}
    assert log.config["model"]["reference"] is True
    assert [(t["step"], t["window_steps"]) for t in log.throughput] == [(2, 2), (4, 2)]


def test_mixture_and_budget_without_allocation_file(dataset, tmp_path):
    """A plan entry (mixture + budget + eval points) runs directly; the counts follow the weights exactly."""
    manifest, _ = dataset
    out = tmp_path / "m"
    run_trainer(["--config", "configs/tiny.yaml", "--manifest", str(manifest), "--mixture", "ct_abdomen=1,mri_brain=3",
                 "--budget-samples", "64", "--eval-at", "16", "--out", str(out), "--set", "data.num_threads=1"])  # fmt: skip
    log = read_runlog(out)
    assert log.mixture == {"ct_abdomen": 0.25, "mri_brain": 0.75} and log.budget_samples == 64
    assert [e.step for e in log.evals] == [2, 8]
    assert log.evals[-1].samples_seen == {"ct_abdomen": 16, "mri_brain": 48}
