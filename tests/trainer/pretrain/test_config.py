"""Config loading, validation messages naming the field, overrides, eval points, lr schedules."""

from __future__ import annotations

import math

import pytest

from tests.trainer.pretrain.trainer_helpers import REPO
from voxmix.trainer.pretrain.config import (
    ConfigError,
    EvalConfig,
    OptimConfig,
    config_from_dict,
    eval_schedule,
    load_config,
)
from voxmix.trainer.pretrain.optim import deepspeed_config, lr_factor


@pytest.mark.parametrize("name", ["tiny", "small", "base", "large"])
def test_presets_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.size == name
    assert cfg.model.crop % cfg.model.patch == 0


def test_base_is_vit_b():
    m = load_config(REPO / "configs" / "base.yaml").model
    assert (m.width, m.depth, m.heads, m.crop, m.patch) == (768, 12, 12, 96, 16)


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"model": {"size": "huge"}}, "model.size"),
        ({"model": {"patch": 7}}, "model.patch"),
        ({"model": {"heads": 5}}, "model.heads"),
        ({"model": {"mask_ratio": 1.0}}, "model.mask_ratio"),
        ({"model": {"widht": 8}}, "model.widht"),
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"schedule": "linear"}}, "optim.schedule"),
        ({"optim": {"decay_frac": 0.99}}, "optim.decay_frac"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"data": {"backend": "ffcv"}}, "data.backend"),
        ({"eval": {"at": [10, 5]}}, "eval.at"),
        ({"eval": {"at": [1, "x"]}}, "eval.at[1]"),
        ({"train": {"zero_stage": 4}}, "train.zero_stage"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"train": {"tensorboard": "yes"}}, "train.tensorboard"),
        ({"checkpoint": {"every_steps": 0}}, "checkpoint.every_steps"),
        ({"trian": {}}, "trian"),
    ],
)
def test_bad_fields_are_named(raw, field):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert f"'{field}'" in str(err.value)


def test_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  size: tiny\ntrain:\n  seed: 3\n")
    cfg = load_config(
        p, ["train.budget_samples=640", "eval.at=[64, 128]", "optim.lr=2e-3", "model.reference=true"]
    )
    assert cfg.train.budget_samples == 640 and cfg.eval.at == [64, 128] and cfg.train.seed == 3
    assert cfg.optim.lr == 2e-3 and cfg.model.reference is True
    with pytest.raises(ConfigError, match="'train.seed'"):
        load_config(p, ["train.seed=abc"])
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(p, ["seed=1"])
    with pytest.raises(ConfigError, match=str(p)):
        p.write_text("model: [1, 2]\n")
        load_config(p)


def test_eval_schedule_log_spaced_and_explicit():
    pts = eval_schedule(EvalConfig(points=5, first=10), 10_000)
    assert pts[0] == 10 and pts[-1] == 10_000 and len(pts) == 5
    ratios = [b / a for a, b in zip(pts, pts[1:])]
    assert max(ratios) / min(ratios) < 1.01  # geometric spacing
    assert eval_schedule(EvalConfig(at=[5, 50, 500]), 100) == [5, 50, 100]


def test_wsd_and_cosine_schedules():
    wsd = OptimConfig(schedule="wsd", warmup_frac=0.1, decay_frac=0.2, min_lr_ratio=0.0)
    f = [lr_factor(s, 100, wsd) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[10:80])  # stable phase: intermediate evals on one constant-lr curve
    assert f[80] == pytest.approx(1 - 1 / 20) and f[99] == pytest.approx(0.0)
    cos = OptimConfig(schedule="cosine", warmup_frac=0.1, min_lr_ratio=0.1)
    for s in (10, 40, 99):
        t = (s - 10) / 90
        assert lr_factor(s, 100, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def test_deepspeed_config_generated_and_passthrough():
    cfg = config_from_dict(
        {
            "data": {"batch_size": 4},
            "optim": {"grad_accum": 3, "grad_clip": 0.5},
            "train": {"zero_stage": 3, "deepspeed": {"zero_optimization": {"overlap_comm": True}}},
        }
    )
    ds = deepspeed_config(cfg, world_size=2, bf16=True)
    assert ds["train_batch_size"] == 24 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
