"""Fine-tuning on phantoms: a short UNETR run beats the untrained model; the CLIs run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmix.formats.encoder import read_encoder
from voxmix.trainer.downstream.config import ClsConfig, DownstreamConfig, SegConfig, load_config
from voxmix.trainer.downstream.data import load_cases
from voxmix.trainer.downstream.models import build_segmenter
from voxmix.trainer.downstream.tasks import dice_per_label, evaluate_seg, run_cls, run_seg

ROOT = Path(__file__).resolve().parents[3]


def test_dice_per_label_closed_form():
    a = torch.tensor([0, 1, 1, 2, 2, 2, 0, 0])
    b = torch.tensor([0, 1, 2, 2, 2, 0, 0, 1])
    # label 1: |A|=2, |B|=2, overlap 1 -> 0.5; label 2: |A|=3, |B|=3, overlap 2 -> 2/3; label 3 empty -> nan.
    d = dice_per_label(a, b, 3)
    assert d[:2] == pytest.approx([0.5, 2 / 3]) and np.isnan(d[2])


def test_short_finetune_improves_dice(phantom_data, tiny_encoder):
    cfg = SegConfig(domain="ct_abdomen", labels=["liver"], steps=60, batch_size=2, feature_size=4, lr=1e-3,
                    encoder_lr=1e-4)  # fmt: skip
    blob = read_encoder(tiny_encoder)
    val = [c for c in load_cases(phantom_data, "ct_abdomen", cfg.labels) if c.split == "val"]
    torch.manual_seed(0)  # run_seg seeds the same way: this is its network before the first step
    untrained = evaluate_seg(build_segmenter(blob, 2, feature_size=4), val, cfg, 32, torch.device("cpu"))
    trained = run_seg(blob, cfg, phantom_data, seed=0, pretrained=True, device=torch.device("cpu"))
    assert trained["val_volumes"] == len(val) >= 2
    assert trained["dice"]["liver"] > untrained["dice"]["liver"] + 0.1, (untrained, trained)


def test_short_finetune_segments_the_island_domain(phantom_data, tiny_encoder):
    """pet_wholebody, four organs (five classes): the case that stayed at all-background with
    feature_size 4 (and 6); at 8, 80 steps find the brain and the mean Dice leaves 0."""
    cfg = SegConfig(domain="pet_wholebody", labels=["liver", "kidney", "brain", "bladder"], steps=80,
                    feature_size=8)  # fmt: skip
    res = run_seg(
        read_encoder(tiny_encoder), cfg, phantom_data, seed=0, pretrained=True, device=torch.device("cpu")
    )
    assert res["dice"]["brain"] > 0.5 and res["dice_mean"] > 0.15, res


def test_linear_probe_separates_lesions_on_pet(phantom_data, tiny_encoder):
    """PET hot spots are bright (SUV 6-15 against liver ~2): even a random encoder's features separate
    them better than chance, and the out-of-fold scores are scored over every volume once."""
    res = run_cls(read_encoder(tiny_encoder), ClsConfig(domain="pet_wholebody", finetune_steps=2, batch_size=2),
                  phantom_data, seed=0, pretrained=True, device=torch.device("cpu"))  # fmt: skip
    assert res["volumes"] == 16 and 0 < res["positives"] < 16
    # Before the spots were made visible (radius 0.05, blurred to liver uptake) this was ~0.25-0.5.
    assert res["probe"]["auroc"] > 0.65, res
    assert 0 <= res["finetune"]["auroc"] <= 1 and 0 <= res["finetune"]["accuracy"] <= 1


def test_config_validation_names_field(tmp_path):
    with pytest.raises(ValueError, match="seg.labels"):
        SegConfig(domain="x", labels=[])
    with pytest.raises(ValueError, match="cls.folds"):
        DownstreamConfig(cls=[{"domain": "x", "folds": 1}])
    with pytest.raises(ValueError, match="neither a preset"):
        load_config(str(tmp_path / "missing.yaml"))


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_finetune_cls_and_compare(phantom_data, tiny_encoder, tmp_path):
    cfg = tmp_path / "cls.yaml"
    cfg.write_text("cls: [{domain: pet_wholebody}, {domain: ct_abdomen}]\nthreads: 1\n")
    out = tmp_path / "r.json"
    r = _run("trainer.finetune", "--task", "cls", "--encoder", tiny_encoder, "--data", str(phantom_data),
             "--config", str(cfg), "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["format"] == "voxmix.downstream/1" and set(res["results"]) == {
        "cls/pet_wholebody/lesion",
        "cls/ct_abdomen/lesion",
    }
    cmp_out = tmp_path / "cmp.json"
    r = _run("trainer.compare_encoders", tiny_encoder, tiny_encoder, "--names", "a,b", "--data", str(phantom_data),
             "--config", str(cfg), "--seeds", "2", "--scratch", "--out", str(cmp_out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = json.loads(cmp_out.read_text())["table"]
    row = table["cls/pet_wholebody/lesion/probe_auroc"]
    assert set(row["encoders"]) == {"a", "b", "scratch"}
    # The same encoder twice: identical per-seed values, zero difference.
    assert row["encoders"]["a"]["values"] == row["encoders"]["b"]["values"]
    assert row["vs_a"]["b"]["mean_diff"] == 0 and not row["vs_a"]["b"]["significant"]
    assert "scratch - a" in r.stdout


def test_cli_errors_name_the_problem(phantom_data, tiny_encoder, tmp_path, capsys):
    """Bad input is refused before training, exit 2 (in-process: tests/faults/ runs the commands)."""
    from voxmix.trainer import compare_encoders, finetune

    args = ["--task", "seg", "--encoder", tiny_encoder, "--config", "quick"]
    assert finetune.main([*args, "--data", str(tmp_path)]) == 2
    assert "manifest.jsonl: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("seg: [{domain: mri_brain, labels: [brain]}]\n")
    assert finetune.main([*args, "--data", str(phantom_data), "--config", str(bad)]) == 2
    assert "'mri_brain' has no labelled volumes" in capsys.readouterr().err
    assert compare_encoders.main([tiny_encoder, "--data", str(phantom_data), "--seeds", "1"]) == 2
    assert "voxmix: --seeds 1: a paired test needs >= 2 seeds" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_short_finetune_on_gpu_bf16(phantom_data, tiny_encoder):
    """GPU twin of test_short_finetune_improves_dice: the bf16 autocast path trains and evaluates."""
    cfg = SegConfig(domain="ct_abdomen", labels=["liver"], steps=60, batch_size=2, feature_size=4, lr=1e-3,
                    encoder_lr=1e-4)  # fmt: skip
    blob = read_encoder(tiny_encoder)
    val = [c for c in load_cases(phantom_data, "ct_abdomen", cfg.labels) if c.split == "val"]
    torch.manual_seed(0)
    dev = torch.device("cuda")
    untrained = evaluate_seg(build_segmenter(blob, 2, feature_size=4).to(dev), val, cfg, 32, dev)
    trained = run_seg(blob, cfg, phantom_data, seed=0, pretrained=True, device=dev)
    assert trained["dice"]["liver"] > untrained["dice"]["liver"] + 0.1, (untrained, trained)
    res = run_cls(blob, ClsConfig(domain="pet_wholebody", finetune_steps=2, batch_size=2), phantom_data, seed=0,
                  pretrained=True, device=dev)  # fmt: skip
    assert 0 <= res["finetune"]["auroc"] <= 1
