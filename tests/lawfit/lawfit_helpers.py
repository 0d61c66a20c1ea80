"""Simulated truths shared by the lawfit tests."""

from __future__ import annotations

import numpy as np

from lawfit.laws import TargetLaw, TransferTerm
from lawfit.lawsfile import Laws


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
