"""The volume header check (trainer/data/volumes.py) on every kind of bad `.npy`, in-process.

tests/faults/test_data_faults.py feeds the same files to the real trainer and ingest commands; here each
variant is checked on its own: the error names the file and what is wrong, a good file (or a link to
one) passes, nothing is ever unpickled, and the loaders raise the same clean error.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tests.trainer.data.data_helpers import record, write_volumes
from voxmix.formats.allocation import make_allocation
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.crops import crop_params, read_crop
from voxmix.trainer.data.loader import build_eval_set, build_loader
from voxmix.trainer.data.mixture import MixtureSampler
from voxmix.trainer.data.phantoms import write_dataset
from voxmix.trainer.data.volumes import (
    OutputFolderError,
    VolumeError,
    check_volume,
    check_volumes,
    make_output_folder,
    open_volume,
)

SHAPE = (6, 5, 4)
REC = record("ct", 0, shape=SHAPE)


def _good(path, shape=SHAPE, dtype=np.float16):
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape).astype(dtype)
    np.save(path, arr)
    return arr


# Bad arrays written with np.save: (array, text the error must hold).
ARRAYS = {
    "shape": (np.zeros((8, 8, 8), np.float16), f"shape (8, 8, 8), the manifest says {SHAPE}"),
    "float64": (np.zeros(SHAPE, np.float64), "dtype float64, the manifest says float16"),
    "big_endian": (np.zeros(SHAPE, ">f2"), "dtype >f2, the manifest says float16"),
    "fortran": (np.asfortranarray(np.zeros(SHAPE, np.float16)), "Fortran order"),
    # An object array is stored as a pickle after a valid header: refused unread.
    "pickle": (np.array([{"a": 1}], dtype=object), "holds Python objects"),
}


def _write(tmp_path, kind: str):
    """A `.npy` (or something at its path) of one bad kind; returns (path, text the error must hold)."""
    p = tmp_path / f"{kind}.npy"
    if kind in ARRAYS:
        np.save(p, ARRAYS[kind][0], allow_pickle=True)
        return p, ARRAYS[kind][1]
    good = _good(tmp_path / "good.npy")
    raw = (tmp_path / "good.npy").read_bytes()
    if kind == "truncated":
        p.write_bytes(raw[:-7])
        return p, f"truncated: {len(raw) - 7} bytes, expected {len(raw)}"
    if kind == "trailing":
        p.write_bytes(raw + b"\0" * 5)
        return p, "has trailing bytes"
    if kind == "header_cut":
        p.write_bytes(raw[:40])
        return p, "corrupt .npy header"
    contents = {
        "random": np.random.default_rng(0).bytes(300),
        "empty": b"",
        "raw_pickle": pickle.dumps(good),
    }
    if kind in contents:
        p.write_bytes(contents[kind])
        return p, "not a NumPy .npy file"
    if kind == "missing":
        return p, "file not found"
    if kind == "dangling_link":
        os.symlink(tmp_path / "nowhere.npy", p)
        return p, f"(a symbolic link to {tmp_path / 'nowhere.npy'}): the link's target does not exist"
    if kind == "folder":
        p.mkdir()
        return p, "a folder, expected a .npy file"
    assert kind == "fifo", kind
    os.mkfifo(p)  # opening it for reading must not wait for a writer
    return p, "a named pipe"


KINDS = [
    "shape", "float64", "big_endian", "fortran", "truncated", "trailing", "random", "empty",
    "header_cut", "pickle", "raw_pickle", "missing", "dangling_link", "folder", "fifo",
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_bad_volume_is_named_with_its_fault(tmp_path, kind):
    p, needle = _write(tmp_path, kind)
    for call in (lambda: check_volume(p, REC), lambda: open_volume(p, REC)):
        with pytest.raises(VolumeError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(str(p)) and needle in msg, msg


def test_good_volume_and_link_to_one_pass_and_map_the_same_data(tmp_path):
    arr = _good(tmp_path / "v.npy")
    os.symlink(tmp_path / "v.npy", tmp_path / "link.npy")
    for p in (tmp_path / "v.npy", tmp_path / "link.npy"):
        h = check_volume(p, REC)
        assert h.shape == SHAPE and h.offset + h.data_bytes == h.size
        np.testing.assert_array_equal(open_volume(p, REC), arr)
    # Format version 2.0 headers are read too; without a record, any 3D C-order array passes.
    with open(tmp_path / "v2.npy", "wb") as fh:
        np.lib.format.write_array(fh, arr, version=(2, 0))
    np.testing.assert_array_equal(open_volume(tmp_path / "v2.npy", REC), arr)
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), np.float16))
    with pytest.raises(VolumeError, match=r"expected a 3D array, got shape \(3, 4\)"):
        check_volume(tmp_path / "flat.npy")
    # A link to a bad file is named with its target.
    _good(tmp_path / "small.npy", (2, 2, 2))
    os.symlink(tmp_path / "small.npy", tmp_path / "bad_link.npy")
    with pytest.raises(VolumeError, match=rf"a symbolic link to {tmp_path / 'small.npy'}\): shape"):
        check_volume(tmp_path / "bad_link.npy", REC)


def test_check_volumes_lists_every_bad_file_with_its_manifest_line(tmp_path):
    recs = write_volumes(tmp_path, {"ct": [(4, 4, 4)] * 25})
    manifest = read_manifest(tmp_path)
    for r in recs[:22]:
        np.save(tmp_path / r.path, np.zeros((3, 3, 3), np.float16))
    check_volumes(manifest, recs[22:])  # the good ones pass
    with pytest.raises(VolumeError) as err:
        check_volumes(manifest, recs)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'manifest.jsonl'}: 22 of the 25 volumes used for training")
    assert "re-run the ingest" in msg and f"--out {tmp_path}" in msg
    assert f"line 2, id {recs[0].id!r}: {tmp_path / recs[0].path}: shape (3, 3, 3)" in msg
    assert msg.count("\n  line ") == 20 and msg.endswith("... and 2 more")


@pytest.fixture
def dataset(tmp_path):
    write_volumes(tmp_path, {"ct": [(9, 9, 9)] * 3, "mri": [(9, 9, 9)] * 3}, val=1)
    return read_manifest(tmp_path)


def _loader(manifest, threads: int):
    sampler = MixtureSampler(make_allocation({"ct": 0.5, "mri": 0.5}, 16), manifest, seed=0)
    return build_loader(manifest, sampler, crop=4, batch_size=2, backend="torch", num_threads=threads)


def test_loaders_stop_before_reading_and_name_a_file_changed_later(dataset):
    train = dataset.select(domain="mri", split="train")[1]
    val = dataset.select(domain="ct", split="val")[0]
    np.save(dataset.abspath(train), np.zeros((9, 9, 9), np.float32))
    with pytest.raises(VolumeError, match=rf"line \d+, id '{train.id}': .*dtype float32, the manifest says"):
        _loader(dataset, 1)
    np.save(dataset.abspath(train), np.zeros((9, 9, 9), np.float16))
    np.save(dataset.abspath(val), np.zeros((2, 9, 9), np.float16))
    with pytest.raises(VolumeError, match=rf"(?s)used for evaluation.*{val.id}.*shape \(2, 9, 9\)"):
        build_eval_set(dataset, ["ct", "mri"], crops_per_domain=2, crop=4, seed=0)
    # Changed after the check: the reader names it; from a DataLoader worker without its traceback.
    loader = _loader(dataset, 2)
    dataset.abspath(train).write_bytes(b"junk")
    with pytest.raises(VolumeError) as err:
        list(loader)
    assert str(err.value).startswith(str(dataset.abspath(train))), str(err.value)
    assert "Traceback" not in str(err.value)
    with pytest.raises(VolumeError, match="not a NumPy .npy file"):
        read_crop(dataset.abspath(train), crop_params((9, 9, 9), (4, 4, 4), 0), (4, 4, 4), train)


def test_output_folder_that_is_a_file_is_named(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for path in (f, f / "sub"):
        with pytest.raises(OutputFolderError, match=rf"--out {path}: {f} is a file, not a folder"):
            make_output_folder(path)
    with pytest.raises(OutputFolderError, match=rf"--out {f}: {f} is a file"):
        write_dataset(f, ["ct_abdomen"], 1, 16, 0, False)
    assert make_output_folder(tmp_path / "a" / "b").is_dir()
