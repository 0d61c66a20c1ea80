"""Shared by the downstream tests (a uniquely named module: every test folder has its own conftest)."""

from __future__ import annotations

import torch

from voxmix.trainer.pretrain.config import ModelConfig
from voxmix.trainer.pretrain.model import MAE3D, export_encoder


def make_encoder(path, seed: int = 0, **model) -> str:
    """An MAE3D (reference ops) exported by the trainer's own export function."""
    torch.manual_seed(seed)
    export_encoder(MAE3D(ModelConfig(size="tiny", reference=True, **model)), path)
    return str(path)
