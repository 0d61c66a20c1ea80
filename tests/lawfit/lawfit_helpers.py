"""Simulated truths shared by the lawfit tests."""

from __future__ import annotations

from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.simulate import random_laws


def make_truth(seed: int = 3, m: int = 5) -> Laws:
    """Random transfer laws: about half the pairs transfer (k in {0.15, 0.4, 0.8}), half do not."""
    return random_laws(m, seed)
