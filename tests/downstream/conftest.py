"""Session fixtures: one labelled phantom set (ct_abdomen, and pet_wholebody: the island) and tiny encoders."""

from __future__ import annotations

import pytest
import torch

from trainer.compare_encoders import make_phantom_set
from trainer.config import ModelConfig
from trainer.model import MAE3D, export_encoder


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory):
    """16 phantoms of 48^3 per domain -> ingested folder with labels.jsonl (the --quick set)."""
    return make_phantom_set(tmp_path_factory.mktemp("ds"), 16, 48, ["ct_abdomen", "pet_wholebody"])


def make_encoder(path, seed: int = 0, **model) -> str:
    """An MAE3D (reference ops) exported by the trainer's own export function."""
    torch.manual_seed(seed)
    export_encoder(MAE3D(ModelConfig(size="tiny", reference=True, **model)), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("enc") / "encoder.pt")
