"""The supervised positive control (round 3): what it trains on, what it writes, and its settings."""

from __future__ import annotations

import math

import pytest
import torch

from voxmix.formats.encoder import read_encoder, write_encoder
from voxmix.trainer.downstream.models import build_vit, check_encoder
from voxmix.trainer.downstream.supervised import SupervisedConfig, _lr_at, train_supervised


def test_trains_the_arms_architecture_and_round_trips(phantom_data, tiny_encoder, tmp_path):
    ref = read_encoder(tiny_encoder)
    cfg = SupervisedConfig(steps=60, warmup=5, lr=2e-3)
    blob = train_supervised(phantom_data, ["ct_abdomen"], ref, cfg, log=lambda m: None)
    info = blob["supervised"]
    assert blob["monai_vit_kwargs"] == ref["monai_vit_kwargs"] and info["volumes"] == 16
    # Deterministic (seeded, one thread): the token loss over the last 50 steps is below the first 50's.
    assert info["last_loss"] < info["first_loss"]
    # Trained from MONAI's initialisation, not from the reference's weights; the fixed sin-cos positions
    # are the reference's (kept fixed, as in pretraining).
    torch.manual_seed(cfg.seed)
    init = build_vit(ref, pretrained=False).state_dict()
    sd = blob["state_dict"]
    assert not torch.equal(sd["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])
    assert not torch.equal(sd["blocks.0.attn.qkv.weight"], ref["state_dict"]["blocks.0.attn.qkv.weight"])
    pos = "patch_embedding.position_embeddings"
    assert torch.equal(sd[pos], init[pos])
    path = write_encoder(tmp_path / "encoder.pt", blob["monai_vit_kwargs"], sd, {"supervised": info})
    back = read_encoder(path)
    check_encoder(back, path, segment=True)
    assert back["supervised"]["steps"] == 60
    assert all(torch.equal(back["state_dict"][k], v) for k, v in sd.items())
    # Same seed, same encoder.
    again = train_supervised(phantom_data, ["ct_abdomen"], ref, cfg, log=lambda m: None)
    assert all(torch.equal(again["state_dict"][k], v) for k, v in sd.items())


def test_schedule_warms_up_then_follows_a_cosine_to_zero():
    cfg = SupervisedConfig(steps=110, warmup=10, lr=1e-3)
    assert _lr_at(0, cfg) == pytest.approx(1e-4) and _lr_at(9, cfg) == pytest.approx(1e-3)
    assert _lr_at(10, cfg) == pytest.approx(1e-3)
    assert _lr_at(60, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lr_at(110, cfg) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    "kw, message",
    [({"steps": 0}, "steps"), ({"batch": 0}, "batch"), ({"lr": 0.0}, "lr"), ({"lr": math.nan}, "lr"),
     ({"weight_decay": -1.0}, "weight_decay"), ({"warmup": -1}, "warmup")],
)  # fmt: skip
def test_bad_settings_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        SupervisedConfig(**kw)
