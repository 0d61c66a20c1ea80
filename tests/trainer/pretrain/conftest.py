"""Session fixtures: one tiny on-disk dataset and one uninterrupted reference run shared by the run tests."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.pretrain.trainer_helpers import RUN_ARGS, make_dataset, run_trainer, write_allocation


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    manifest = make_dataset(root)
    alloc = write_allocation(root / "allocation.json", {"ct_abdomen": 96, "mri_brain": 96})
    return manifest, alloc


@pytest.fixture(scope="session")
def reference_run(dataset, tmp_path_factory):
    manifest, alloc = dataset
    out = tmp_path_factory.mktemp("runs") / "ref"
    run_trainer([*RUN_ARGS, "--manifest", str(manifest), "--allocation", str(alloc), "--out", str(out)])
    return out


@pytest.fixture
def one_thread():
    """Small models: one thread is as fast, and immune to OpenMP spin-waits on a busy shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
