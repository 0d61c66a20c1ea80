"""Shared simulated studies: simulate once per session, fit once, reuse in many tests."""

from __future__ import annotations

import numpy as np
import pytest

from lawfit.dataset import build_dataset, load_runs
from lawfit.fit import FitConfig
from lawfit.laws import TargetLaw, TransferTerm
from lawfit.lawsfile import Laws
from lawfit.simulate import default_design, simulate_runs
from lawfit.study import fit_laws


def make_truth(seed: int = 3, m: int = 5) -> Laws:
    """Random transfer laws: about half the pairs transfer (k in {0.15, 0.4, 0.8}), half do not."""
    rng = np.random.default_rng(seed)
    doms = [f"d{i}" for i in range(m)]
    targets = {}
    for d in doms:
        tr = {
            o: TransferTerm(float(rng.choice([0.0, 0.0, 0.15, 0.4, 0.8])), float(rng.uniform(0.75, 1.0)))
            for o in doms
            if o != d
        }
        targets[d] = TargetLaw(
            d,
            E=float(rng.uniform(0.2, 0.5)),
            A=float(rng.uniform(3, 10)),
            alpha=float(rng.uniform(0.25, 0.5)),
            transfer=tr,
        )
    return Laws(
        form="transfer",
        domains=doms,
        targets=targets,
        unique_samples={d: 1e7 for d in doms},
        seconds_per_sample={d: 0.01 * (1 + i) for i, d in enumerate(doms)},
    )


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
