"""Shared simulated studies: simulate once per session, fit once, reuse in many tests."""

from __future__ import annotations

import pytest

from tests.lawfit.lawfit_helpers import make_truth
from voxmix.lawfit.dataset import build_dataset, load_runs
from voxmix.lawfit.fit import FitConfig
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.simulate import default_design, simulate_runs
from voxmix.lawfit.study import fit_laws


@pytest.fixture(scope="session")
def truth() -> Laws:
    return make_truth()


@pytest.fixture(scope="session")
def study_runs(truth, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    plan = default_design(truth, budget_per_run=20000, n_mixtures=10, n_evals=10, seed=0)
    simulate_runs(truth, plan, out, noise=0.01, seed=0)
    return out


@pytest.fixture(scope="session")
def fitted(study_runs) -> Laws:
    ds = build_dataset(load_runs([str(study_runs)]))
    return fit_laws(ds, FitConfig(bootstrap=24, progress=False, seed=0))
