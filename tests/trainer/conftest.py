"""Session fixtures: one tiny on-disk dataset and one uninterrupted reference run shared by the run tests."""

from __future__ import annotations

import pytest
from trainer_helpers import make_dataset, run_trainer, write_allocation

# The reference run: 2 domains x 96 samples, batch 8 -> 24 optimizer steps, a throughput event (with the
# mean training loss) every step, evaluations at 16, 32, 64, 128 and 192 samples, checkpoints every 4.
RUN_ARGS = [
    "--config", "configs/tiny.yaml",
    "--eval-at", "16,32,64,128",
    "--set", "train.log_every=1",
    "--set", "checkpoint.every_steps=4",
    "--set", "data.num_threads=1",
]  # fmt: skip


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
