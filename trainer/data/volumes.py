"""Opening the preprocessed `.npy` volumes: every read checks the file against its manifest record first.

A volume is only ever trusted as far as its header says: the `.npy` header (parsed with NumPy's
literal-only reader, never unpickled) must give the record's shape and dtype in C order, and the file
size must be exactly header + data, which catches a truncated copy without reading the data. The check
reads a few hundred bytes, so the trainer runs it over every file it will read before the first step
(`check_volumes`), and the loaders run it again on each open (`open_volume`) for files changed since.

Symbolic links are followed: datasets are often assembled from links into shared storage, and a link
only changes where the bytes live, not how they are read (never as code). The target gets the same
checks, a dangling link or a link to something other than a regular file is refused, and every message
about a linked volume names the link's target.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmix.formats.errors import FormatError
from voxmix.formats.manifest import Manifest, VolumeRecord

# Header reads are I/O-bound: threads overlap them on network filesystems. Small lists stay serial.
_THREADS = 8
_SERIAL_BELOW = 256
# Bad files listed in one error; the rest are counted.
_LIST_AT_MOST = 20


def listing(problems: list[str], at_most: int = _LIST_AT_MOST) -> str:
    """The indented lines of an error that lists problems, the first `at_most` of them and a count."""
    more = f"\n  ... and {len(problems) - at_most} more" if len(problems) > at_most else ""
    return "\n  " + "\n  ".join(problems[:at_most]) + more


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}


class VolumeError(FormatError):
    """A volume file that is missing, unreadable, not a `.npy`, or does not match its manifest record."""


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int
    """Byte offset of the data: the header's length."""
    size: int
    """The file's size in bytes."""

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _describe(path: Path) -> str:
    """`path`, and where it is a symbolic link, its target (the file a user has to repair)."""
    try:
        if path.is_symlink():
            return f"{path} (a symbolic link to {os.readlink(path)})"
    except OSError:
        pass
    return str(path)


def _open_error(path: Path, exc: OSError) -> VolumeError:
    if isinstance(exc, FileNotFoundError):
        if path.is_symlink():
            return VolumeError(f"{_describe(path)}: the link's target does not exist")
        return VolumeError(f"{path}: file not found")
    return VolumeError(f"{_describe(path)}: cannot open: {exc.strerror or exc}")


def _parse_header(fh, path: Path, size: int) -> NpyHeader:
    try:
        version = np.lib.format.read_magic(fh)
    except ValueError:
        fh.seek(0)
        head = fh.read(8)
        # What np.load would do next with such a file is unpickle it: refused, and said plainly.
        raise VolumeError(
            f"{_describe(path)}: not a NumPy .npy file (it starts with {head!r}, not b'\\x93NUMPY')"
        ) from None
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise VolumeError(f"{_describe(path)}: unsupported .npy format version {version[0]}.{version[1]}")
    try:
        shape, fortran, dtype = readers[version](fh)
    except (ValueError, TypeError, SyntaxError) as exc:  # malformed header dict; literal_eval only
        raise VolumeError(f"{_describe(path)}: corrupt .npy header ({exc})") from None
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), fh.tell(), size)


def _check_header(h: NpyHeader, path: Path, shape: Sequence[int] | None, dtype: str | None) -> None:
    if h.dtype.hasobject:
        raise VolumeError(
            f"{_describe(path)}: holds Python objects (dtype {h.dtype}), not voxels; it is never loaded"
        )
    if shape is not None and h.shape != tuple(shape):
        raise VolumeError(f"{_describe(path)}: shape {h.shape}, the manifest says {tuple(shape)}")
    if len(h.shape) != 3:
        raise VolumeError(f"{_describe(path)}: expected a 3D array, got shape {h.shape}")
    if dtype is not None and h.dtype != np.dtype(dtype):
        found = h.dtype.name if h.dtype.isnative else h.dtype.str
        raise VolumeError(f"{_describe(path)}: dtype {found}, the manifest says {dtype}")
    if h.fortran_order:
        raise VolumeError(f"{_describe(path)}: stored in Fortran order, expected C order")
    want = h.offset + h.data_bytes
    if h.size != want:
        kind = "truncated" if h.size < want else "has trailing bytes"
        raise VolumeError(
            f"{_describe(path)}: {kind}: {h.size} bytes, expected {want} "
            f"(header {h.offset} + data {h.data_bytes})"
        )


def _open_checked(path: Path, record: VolumeRecord | None):
    """(open binary file positioned after the header, its checked header); the caller closes the file."""
    try:
        # O_NONBLOCK: opening a named pipe must not hang waiting for a writer (fstat then refuses it).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise VolumeError(f"{_describe(path)}: {kind}, expected a .npy file")
    except BaseException:
        os.close(fd)
        raise
    fh = os.fdopen(fd, "rb")
    try:
        h = _parse_header(fh, path, st.st_size)
        if record is None:
            _check_header(h, path, None, None)
        else:
            _check_header(h, path, record.shape, record.dtype)
    except OSError as exc:
        fh.close()
        raise VolumeError(f"{_describe(path)}: cannot read: {exc.strerror or exc}") from None
    except BaseException:
        fh.close()
        raise
    return fh, h


def check_volume(path: str | os.PathLike, record: VolumeRecord | None = None) -> NpyHeader:
    """The header of the `.npy` at `path`, checked against `record` (shape, dtype) or, without one, as a
    3D C-order array; reads the header only. Raises VolumeError naming the file and what is wrong."""
    fh, h = _open_checked(Path(path), record)
    fh.close()
    return h


def open_volume(path: str | os.PathLike, record: VolumeRecord | None = None) -> np.ndarray:
    """A read-only memory map of the checked volume (what `np.load(path, mmap_mode="r")` gave, with the
    header checked first and without ever unpickling)."""
    path = Path(path)
    fh, h = _open_checked(path, record)
    with fh:
        try:
            return np.memmap(fh, dtype=h.dtype, mode="r", shape=h.shape, order="C", offset=h.offset)
        except (OSError, ValueError) as exc:
            raise VolumeError(f"{_describe(path)}: cannot map: {exc}") from None


def _problem(manifest: Manifest, rec: VolumeRecord) -> str | None:
    try:
        check_volume(manifest.abspath(rec), rec)
    except VolumeError as exc:
        line = manifest.lines.get(rec.id)
        where = f"line {line}, id {rec.id!r}" if line else f"id {rec.id!r}"
        return f"{where}: {exc}"
    return None


def check_volumes(manifest: Manifest, records: Iterable[VolumeRecord], *, purpose: str = "training") -> None:
    """Check the header of every volume in `records` against its record before anything reads one.

    Every bad file is named in one error (up to a limit), with its manifest line and id and the fix, so
    that one attempt shows the whole damage; every rank checks the same files and stops alike."""
    recs = list({r.id: r for r in records}.values())
    if len(recs) < _SERIAL_BELOW:
        problems = [_problem(manifest, r) for r in recs]
    else:
        with ThreadPoolExecutor(_THREADS) as pool:
            problems = list(pool.map(lambda r: _problem(manifest, r), recs))
    bad = [p for p in problems if p is not None]
    if not bad:
        return
    source = manifest.file or manifest.root
    spec = manifest.header.get("spec")
    fix = (
        f"python -m trainer.ingest --spec {spec} --out {manifest.root}"
        if spec
        else f"python -m trainer.ingest --spec SPEC --out {manifest.root}"
    )
    raise VolumeError(
        f"{source}: {len(bad)} of the {len(recs)} volumes used for {purpose} are missing, corrupt or do "
        f"not match their manifest record; re-run the ingest to rebuild them ({fix}):" + listing(bad)
    )


class OutputFolderError(ValueError):
    """An output folder that cannot be made: the path is a file, or a parent is, or no permission."""


def make_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the folder that ingest or phantoms write volumes to (parents too) and return it; an
    OutputFolderError names `flag`, the path and what to do instead of mkdir's traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise OutputFolderError(
            f"{flag} {path}: {blocker} is a file, not a folder; choose a folder (it is created if missing)"
        ) from None
    except OSError as exc:
        raise OutputFolderError(f"{flag} {path}: cannot create the folder: {exc.strerror or exc}") from None
    return path
