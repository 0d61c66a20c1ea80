"""Simulated truths shared by the lawfit tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.simulate import random_laws


def make_truth(seed: int = 3, m: int = 5) -> Laws:
    """Random transfer laws: about half the pairs transfer (k in {0.15, 0.4, 0.8}), half do not."""
    return random_laws(m, seed)


def lawfit(*args, cwd, ok=True):
    """The installed `lawfit` console script in a subprocess, as a user runs it."""
    r = subprocess.run(
        [str(Path(sys.executable).parent / "lawfit"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if ok:
        assert r.returncode == 0, r.stderr
    return r
