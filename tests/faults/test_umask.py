"""Outputs honour the umask (defect 17 of #15): atomically written files were 0600 whatever the umask
(mkstemp's mode survived the rename), so colleagues on a shared cluster could not read them."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from voxmix.formats.io import atomic_write_json, current_umask
from voxmix.trainer.data.ingest.pipeline import save_npy_atomic


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_outputs_get_the_mode_a_plain_write_gets(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the reference: what open(..., "w") gives under this umask
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~mask
    j = atomic_write_json(tmp_path / "a.json", {"a": 1})
    n = tmp_path / "v.npy"
    save_npy_atomic(n, np.zeros((2, 2, 2), np.float32))
    for p in (j, n):
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
