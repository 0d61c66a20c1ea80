"""Session fixtures: one labelled phantom set (ct_abdomen, and pet_wholebody: the island) and tiny encoders."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.downstream.downstream_helpers import make_encoder
from voxmix.trainer.downstream.compare import make_phantom_set


@pytest.fixture(autouse=True)
def _threads():
    # One thread: on a loaded 2-core machine two OpenMP threads per process spin against the other
    # processes (measured: 30x slower steps); restore the count for the other test folders.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory):
    """16 phantoms of 48^3 per domain -> ingested folder with labels.jsonl (the --quick set)."""
    return make_phantom_set(tmp_path_factory.mktemp("ds"), 16, 48, ["ct_abdomen", "pet_wholebody"])


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("enc") / "encoder.pt")
