"""Checkpoint verification (#15 defect 1): nothing of a tag is unpickled unless its name, file list, sha256
and pickles pass; a planted pickle never runs. In-process on crafted tag folders (no training needed);
tests/trainer/pretrain/test_resume.py covers the same through real `--resume` launches."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmix.formats.io import atomic_write_json
from voxmix.trainer.pretrain.checkpoint import (
    CheckpointError,
    find_latest,
    load_rng_file,
    rng_state,
    set_rng_state,
)
from voxmix.trainer.pretrain.checkpoint_files import FILES, LATEST, record

TAG = "step_000008"


class _Planted:
    """What an attacker puts in a checkpoint: unpickling it runs a shell command (creates `marker`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _deepspeed_like_state() -> dict:
    """The kinds of objects DeepSpeed's optimizer files hold (its loss scaler, ZeRO enum, fragment map)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return {
        "optimizer_state_dict": {
            "loss_scaler": LossScaler(scale=1.0),
            "zero_stage": ZeroStageEnum.gradients,
            "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
            "single_partition_of_fp32_groups": [torch.arange(4.0)],
        },
        "ds_version": "0.19",
    }


def _checkpoint(root: Path) -> Path:
    """<root>/checkpoints with one complete, genuine tag: -> the checkpoints folder."""
    ckpt = root / "checkpoints"
    tag_dir = ckpt / TAG
    tag_dir.mkdir(parents=True)
    gen = torch.Generator()
    gen.manual_seed(1)
    torch.save(rng_state(gen), tag_dir / "voxmix_rank0.pt")
    torch.save({"module": {"w": torch.ones(3)}, "global_steps": 8}, tag_dir / "mp_rank_00_model_states.pt")
    torch.save(_deepspeed_like_state(), tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    record(tag_dir)
    atomic_write_json(ckpt / LATEST, {"tag": TAG, "step": 8, "world_size": 1})
    return ckpt


def _refused(ckpt: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as err:
        find_latest(ckpt)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_rng_states_are_tensors_and_numbers_and_restore_bit_exactly(tmp_path):
    ckpt = _checkpoint(tmp_path)
    assert find_latest(ckpt) == (TAG, ckpt / TAG)  # a genuine tag, DeepSpeed's classes included, passes
    gen = torch.Generator()
    gen.manual_seed(7)
    np.random.seed(3)
    random.seed(4)
    np.random.standard_normal(), random.gauss(0, 1)  # a cached Gaussian in both states
    buf = io.BytesIO()
    torch.save(rng_state(gen), buf)

    def draw():
        return [
            np.random.rand(4),
            np.random.standard_normal(),
            random.random(),
            random.gauss(0, 1),
            torch.rand(3),
            torch.rand(3, generator=gen),
        ]

    first = draw()
    buf.seek(0)
    (tmp_path / "rng.pt").write_bytes(buf.getvalue())
    set_rng_state(load_rng_file(tmp_path / "rng.pt"), gen)  # weights_only=True
    for a, b in zip(first, draw()):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("victim", ["voxmix_rank0.pt", "mp_rank_00_model_states.pt"])
def test_planted_pickle_is_refused_before_it_can_run(tmp_path, victim):
    ckpt = _checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    path = ckpt / TAG / victim
    torch.save({"x": _Planted(marker)}, path)
    # Replaced alone: the size and sha256 recorded at save time no longer match.
    _refused(ckpt, str(path), "corrupt")
    # The attacker also rewrites voxmix_files.json: the restricted unpickler refuses the pickle.
    record(ckpt / TAG)
    _refused(ckpt, str(path), "system", "refused")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_rng_file(path)  # voxmix's own reader is weights_only too
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: the planted file really runs code when trusted
    assert marker.exists()


def test_same_size_byte_flip_is_named_by_sha256(tmp_path):
    ckpt = _checkpoint(tmp_path)
    path = ckpt / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _refused(ckpt, str(path), "corrupt: sha256")
    path.write_bytes(bytes(data[:-1]))
    _refused(ckpt, str(path), f"{len(data) - 1} bytes, saved with {len(data)}")


def test_tag_must_be_a_plain_folder_of_this_run(tmp_path):
    ckpt = _checkpoint(tmp_path / "run")
    other = _checkpoint(tmp_path / "other_run")
    latest = ckpt / LATEST
    for tag in (
        "../../other_run/checkpoints/" + TAG,
        str(other / TAG),
        f"{TAG}/..",
        "",
        8,
        None,
        "latest.json",
    ):
        atomic_write_json(latest, {"tag": tag, "step": 8})
        _refused(ckpt, str(latest), f"'tag' = {tag!r}", "refusing")
    shutil.rmtree(ckpt / TAG)
    (ckpt / TAG).symlink_to(other / TAG)  # a name of the right form, pointing out of the folder
    atomic_write_json(latest, {"tag": TAG, "step": 8})
    _refused(ckpt, str(latest), "is a symlink")
    (ckpt / TAG).unlink()
    _refused(ckpt, str(latest), "does not exist")
    latest.write_text("{not json")
    _refused(ckpt, str(latest), "corrupt")
    latest.unlink()
    _refused(ckpt, str(latest), "does not exist")


def test_file_list_must_match_the_folder_exactly(tmp_path):
    ckpt = _checkpoint(tmp_path)
    tag_dir = ckpt / TAG
    listing = json.loads((tag_dir / FILES).read_text())
    # A file planted next to the recorded ones (e.g. another rank's optimizer shard).
    shutil.copy(
        tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    )
    _refused(ckpt, "zero_pp_rank_1_mp_rank_00_optim_states.pt", "not recorded")
    (tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    # A recorded file replaced by a symlink to elsewhere.
    (tmp_path / "elsewhere.pt").write_bytes((tag_dir / "voxmix_rank0.pt").read_bytes())
    (tag_dir / "voxmix_rank0.pt").unlink()
    (tag_dir / "voxmix_rank0.pt").symlink_to(tmp_path / "elsewhere.pt")
    _refused(ckpt, "symlinks", "voxmix_rank0.pt")
    (tag_dir / "voxmix_rank0.pt").unlink()
    _refused(ckpt, str(tag_dir / "voxmix_rank0.pt"), "missing")
    # A recorded name that climbs out of the tag.
    listing["files"]["../../escape.pt"] = listing["files"].pop("voxmix_rank0.pt")
    atomic_write_json(tag_dir / FILES, listing)
    _refused(ckpt, "'../../escape.pt'", "outside")


def test_checkpoint_of_an_older_voxmix_is_refused_with_what_to_do(tmp_path):
    ckpt = _checkpoint(tmp_path / "run")
    tag_dir = ckpt / TAG
    sizes = {p.name: p.stat().st_size for p in tag_dir.iterdir() if p.name != FILES}
    (tag_dir / FILES).write_text(json.dumps(sizes))  # the old format: sizes only
    msg = _refused(ckpt, str(tag_dir / FILES), "older voxmix", "no sha256", "new --out")
    assert str(tmp_path / "run") in msg  # the run folder to move aside
    (tag_dir / FILES).write_text(json.dumps({"version": 3, "files": {}}))
    _refused(ckpt, "expected version 2", "got version 3")
    (tag_dir / FILES).unlink()
    _refused(ckpt, str(tag_dir / FILES), "is missing")


def test_each_rank_hashes_its_own_files_and_rank0_merges_them(tmp_path):
    """A 3-rank ZeRO-3 + bf16-like tag: the per-rank lists merged equal one process hashing everything,
    and each file is hashed by exactly one rank (the one that writes it)."""
    from voxmix.trainer.pretrain.checkpoint_files import hash_own_files, owner_rank

    tag = tmp_path / "step_000004"
    tag.mkdir()
    names = {
        "mp_rank_00_model_states.pt": 0,
        "zero_to_fp32.py": 0,
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
        "zero_pp_rank_2_mp_rank_00_model_states.pt": 2,
        "zero_pp_rank_12_mp_rank_00_optim_states.pt": 12,
        "voxmix_rank1.pt": 1,
        "voxmix_rank2.pt": 2,
    }
    for i, n in enumerate(names):
        (tag / n).write_bytes(bytes([i]) * (100 + i))
    assert {n: owner_rank(n) for n in names} == names
    parts = [hash_own_files(tag, r) for r in (0, 1, 2, 12)]
    assert sum(len(p) for p in parts) == len(names)  # no file hashed twice, none missed
    merged = record(tag, parts)
    whole = record(tag, None)
    assert merged == whole and set(whole["files"]) == set(names)
