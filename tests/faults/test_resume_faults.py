"""Resume and run-folder faults (#15 defects 4, 5, 6 and 14): changed settings on --resume are refused with
every field listed, a folder another trainer holds is refused, --out naming a file is a message.

Real `--resume` launches on a copy of the reference run are in tests/trainer/pretrain/test_resume.py (they
share its session fixtures); here the policy as a pure function and the launches that need no training.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.faults.faults_helpers import assert_clean_error, run_cli
from tests.trainer.pretrain.trainer_helpers import make_dataset, write_allocation
from voxmix.trainer.pretrain.config import Config
from voxmix.trainer.pretrain.resume_check import (
    ALLOWED_CHANGES,
    ResumeMismatch,
    changes,
    check_resume,
    recorded_start,
)
from voxmix.trainer.pretrain.runlock import RunFolderLock

DEFAULTS = Config().to_dict()


def _start(**over) -> dict:
    """A `start` event as the trainer writes it, with the given identity fields changed."""
    cfg = Config().to_dict()
    cfg["data"].update(manifest="/d/manifest.jsonl", allocation="/d/allocation.json")
    ev = dict(
        event="start",
        run_id="r1",
        domains=["ct", "mri"],
        mixture={"ct": 0.25, "mri": 0.75},
        budget_samples=192,
        unique_samples={"ct": 6, "mri": 6},
        seed=0,
        config=cfg,
        world_size=2,
        eval_at=[64, 192],
        precision="fp32",
        device="cpu",
        total_steps=12,
        data_digest="a" * 64,
    )
    ev.update(over)
    return json.loads(json.dumps(ev))


def _now(recorded: dict, cfg_over: dict[str, object] = (), **ident) -> tuple[dict, dict]:
    """(config, identity) of a resume: the recorded ones with `section.field` and identity overrides."""
    cfg = json.loads(json.dumps(recorded["config"]))
    for key, value in dict(cfg_over).items():
        sec, name = key.split(".")
        cfg[sec][name] = value
    identity = {k: recorded[k] for k in recorded if k not in ("event", "config", "device")}
    identity.update(ident)
    return cfg, identity


def test_changed_settings_and_identity_are_all_listed():
    rec = _start()
    assert changes(rec, *_now(rec), defaults=DEFAULTS) == []
    cfg, ident = _now(
        rec, {"optim.lr": 0.05, "data.batch_size": 4}, world_size=1, total_steps=48, data_digest="b" * 64
    )
    assert changes(rec, cfg, ident, defaults=DEFAULTS) == [
        "data.batch_size: 8 -> 4",
        "optim.lr: 0.00015 -> 0.05",
        "total_steps: 12 -> 48",
        "world_size: 2 -> 1",
        f"data_digest: {'a' * 64!r} -> {'b' * 64!r}",
    ]
    # Every allowed field may change (the data paths because their content is compared instead) ...
    allowed = {
        "train.log_every": 1,
        "train.tensorboard": True,
        "train.peak_tflops": 989.0,
        "checkpoint.every_steps": 7,
        "checkpoint.keep": 5,
        "data.num_threads": 8,
        "train.out": "/elsewhere/r1",
        "data.manifest": "/moved/manifest.jsonl",
        "data.allocation": "/moved/allocation.json",
        "train.wandb": True,
        "train.wandb_project": "other",
        "train.wandb_entity": "team",
        "train.wandb_group": "g",
        "train.wandb_tags": ["t"],
        "train.wandb_mode": "offline",
    }
    assert set(allowed) == set(ALLOWED_CHANGES)
    assert changes(rec, *_now(rec, allowed), defaults=DEFAULTS) == []
    # ... but a path is compared when a run from before data_digest cannot compare the content.
    old = _start()
    del old["data_digest"]
    cfg, ident = _now(old, {"data.manifest": "/moved/manifest.jsonl"})
    assert changes(old, cfg, ident, defaults=DEFAULTS) == [
        "data.manifest: '/d/manifest.jsonl' -> '/moved/manifest.jsonl'"
    ]
    # Fields that resolve to an identity value are compared resolved: spelling out the default is no change.
    cfg, ident = _now(rec, {"train.run_id": "r1", "train.budget_samples": 192, "train.precision": "fp32"})
    assert changes(rec, cfg, ident, defaults=DEFAULTS) == []
    # A config field the old start event lacks is compared with its default.
    del rec["config"]["model"]["mask_ratio"]
    assert changes(rec, *_now(rec), defaults=DEFAULTS) == []
    cfg, ident = _now(rec, {"model.mask_ratio": 0.5})
    assert changes(rec, cfg, ident, defaults=DEFAULTS) == ["model.mask_ratio: 0.75 -> 0.5"]


def test_check_resume_reads_the_first_start_event_and_refuses_with_every_field(tmp_path):
    with pytest.raises(ResumeMismatch, match=r"runlog.jsonl has no 'start' event"):
        recorded_start(tmp_path)
    rec = _start()
    later = _start(config={**rec["config"], "optim": {**rec["config"]["optim"], "lr": 0.05}})
    # A torn line first (a writer killed mid-line), then the run's start, then a later attempt's start.
    lines = ['{"event":"sta', json.dumps(rec), json.dumps(later)]
    (tmp_path / "runlog.jsonl").write_text("\n".join(lines) + "\n")
    assert recorded_start(tmp_path) == rec
    cfg, ident = _now(rec, {"optim.lr": 0.05}, precision="bf16")
    with pytest.raises(ResumeMismatch) as err:
        check_resume(tmp_path, cfg, ident, defaults=DEFAULTS)
    msg = str(err.value)
    for needle in ("optim.lr: 0.00015 -> 0.05", "precision: 'fp32' -> 'bf16'", str(tmp_path / "runlog.jsonl"),
                   "another --out", "checkpoint.keep"):  # fmt: skip
        assert needle in msg, msg
    check_resume(tmp_path, *_now(rec), defaults=DEFAULTS)  # the same run: no error


def test_busy_run_folder_and_out_naming_a_file_are_messages(tmp_path, capsys):
    from voxmix.trainer.run import main

    manifest = make_dataset(tmp_path / "ds", train=1, val=1, shape=(32, 32, 32))
    alloc = write_allocation(tmp_path / "ds" / "allocation.json", {"ct_abdomen": 8, "mri_brain": 8})
    args = ["--config", "configs/tiny.yaml", "--manifest", str(manifest), "--allocation", str(alloc)]
    out = tmp_path / "run"
    with RunFolderLock(out, 0):  # this process is "the other trainer" writing the folder
        p = run_cli(["trainer/run.py", *args, "--out", str(out)])
    assert_clean_error(
        p, "voxmix: rank 0: ", f"{out} is in use by another trainer", f"pid {os.getpid()}", code=1
    )
    assert sorted(x.name for x in out.iterdir()) == [".voxmix-lock"]  # nothing else written
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main([*args, "--out", str(not_a_folder)]) == 1
    err = capsys.readouterr().err
    assert (
        f"voxmix: --out {not_a_folder} (train.out) exists and is not a folder" in err
        and "Traceback" not in err
    )
    assert not_a_folder.read_text() == "x"
