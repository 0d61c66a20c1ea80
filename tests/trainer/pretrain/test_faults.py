"""Bad input and faults: config errors, an allocation the manifest cannot serve, a NaN loss."""

from __future__ import annotations

import json

import numpy as np
import torch

from tests.trainer.pretrain.trainer_helpers import events, make_dataset, run_trainer, write_allocation
from voxmix.formats.manifest import read_manifest
from voxmix.formats.runlog import read_runlog


def test_config_error_names_the_field(dataset, tmp_path):
    manifest, alloc = dataset
    p = run_trainer(
        [
            "--config",
            "configs/tiny.yaml",
            "--manifest",
            str(manifest),
            "--allocation",
            str(alloc),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "model.patch=5",
        ],
        check=False,
    )
    # The message names the field and where the value came from (the --set item, not the YAML preset).
    assert p.returncode == 1 and "'model.patch'" in p.stderr and "--set model.patch=5" in p.stderr
    assert not (tmp_path / "r").exists()


def test_allocation_not_matching_manifest_stops_before_training(dataset, tmp_path):
    manifest, _ = dataset
    bad = write_allocation(tmp_path / "a.json", {"ct_abdomen": 32, "pet_lung": 32})
    p = run_trainer(
        [
            "--config",
            "configs/tiny.yaml",
            "--manifest",
            str(manifest),
            "--allocation",
            str(bad),
            "--out",
            str(tmp_path / "r"),
        ],
        check=False,
    )
    assert p.returncode == 1 and "pet_lung" in p.stderr and str(bad) in p.stderr
    assert not (tmp_path / "r" / "runlog.jsonl").exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    root = tmp_path / "ds"
    manifest = make_dataset(root, train=4, val=1, shape=(32, 32, 32))
    # Poison every training volume of one domain; its few samples come a few steps into the run.
    for rec in read_manifest(manifest).select(domain="mri_brain", split="train"):
        arr = np.load(root / rec.path)
        arr[0, 0, 0] = np.nan
        np.save(root / rec.path, arr)
    alloc = write_allocation(root / "a.json", {"ct_abdomen": 188, "mri_brain": 4})
    out = tmp_path / "r"
    p = run_trainer(
        [
            "--config",
            "configs/tiny.yaml",
            "--manifest",
            str(manifest),
            "--allocation",
            str(alloc),
            "--out",
            str(out),
            "--set",
            "checkpoint.every_steps=1",
            "--set",
            "checkpoint.keep=1",
            "--set",
            "data.augment=false",
            "--set",
            "data.num_threads=1",
            "--eval-at",
            "8",
        ],
        check=False,
    )
    assert p.returncode == 1 and "training loss is nan" in p.stderr, p.stderr[-2000:]
    end = events(out, "end")[-1]
    assert end["status"] == "failed" and "nan" in end["error"]
    log = read_runlog(out)  # usable: the failed run counts up to its last evaluation
    assert log.status == "failed"
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert 1 <= latest["step"] < end["step"]
    states = torch.load(out / "checkpoints" / latest["tag"] / "mp_rank_00_model_states.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in states["module"].values() if v.is_floating_point())


def test_tensorboard_is_optional_and_named_when_missing(dataset, tmp_path, monkeypatch):
    # Both trackers are in the train extra; an install without them must get the config field and the
    # package named before any start-up cost, with the run folder left as it was (one message for both).
    # Stand-ins first on the path fail to import as a missing package (tensorboard) and a broken one
    # (wandb, e.g. a protobuf it does not work with) do. The trackers themselves: test_tracking.py and
    # test_state.py (real writers, read back with their own readers).
    shadow = tmp_path / "shadow"
    for name, error in (("tensorboard", "ImportError('No module named tensorboard')"),
                        ("wandb", "TypeError('Descriptors cannot be created directly')")):  # fmt: skip
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    manifest, alloc = dataset
    out = tmp_path / "tb"
    p = run_trainer(["--config", "configs/tiny.yaml", "--manifest", str(manifest), "--allocation", str(alloc),
                     "--out", str(out), "--budget-samples", "16", "--set", "train.tensorboard=true",
                     "--set", "train.wandb=true"], check=False)  # fmt: skip
    assert p.returncode == 1, p.stderr[-2000:]
    assert "'train.tensorboard' = True needs the tensorboard package" in p.stderr, p.stderr[-2000:]
    assert "'train.wandb' = True: the installed wandb package fails to import (TypeError" in p.stderr
    assert sorted(x.name for x in out.iterdir()) == [".voxmix-lock"]  # no run log, config or tracker files
