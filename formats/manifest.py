"""The ingest manifest, `voxmix.manifest/1` (docs/formats.md): one header line, then one volume per line.

The manifest is the only index of the training data: the sampler, the loaders and the trainer read the
volumes through it, so the reader validates every field once here and names the file, line and field of
anything wrong instead of letting a loader fail later on a half-read batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import FormatError
from .io import atomic_write_text

FORMAT = "voxmix.manifest/1"
FILENAME = "manifest.jsonl"
MODALITIES = ("CT", "MRI", "PET")
SPLITS = ("train", "val")
DTYPES = ("float16", "float32")
_OPTIONAL = ("subject", "origin", "direction")
# Tolerance on the unit length of a direction column: the manifest stores 6 decimals.
_UNIT_TOL = 1e-4


@dataclass(frozen=True, kw_only=True)
class VolumeRecord:
    """One preprocessed volume: a C-order `.npy` of shape (D, H, W) at `root / path`."""

    id: str
    """Unique over the manifest; derived from the domain and the source path."""
    domain: str
    modality: str
    """One of CT, MRI, PET."""
    path: str
    """POSIX path of the `.npy`, relative to the manifest's folder."""
    shape: tuple[int, int, int]
    """(D, H, W) of the array after resampling and cropping; axes follow RAS+ (D = x, H = y, W = z)."""
    spacing: tuple[float, float, float]
    """Voxel size in mm along (D, H, W)."""
    source: str
    """The input the volume was made from (file or DICOM series folder) as given by the spec."""
    sha256: str
    """Checksum of the source bytes (all files of a series, in sorted order); ingest resumes by it."""
    split: str
    """`train` or `val`, decided by a hash of the subject (else of `sha256`), so that it never changes
    between ingests and all volumes of one subject share it."""
    dtype: str = "float16"
    stats: dict[str, float] = field(default_factory=dict)
    """Intensity statistics of the written array (min, max, mean, std, p01, p99) and of the source."""
    subject: str | None = None
    """Who the volume shows (nnssl subject, nnU-Net case, or the spec's `subject` pattern); None: unknown."""
    origin: tuple[float, float, float] | None = None
    """RAS+ world position (mm) of the centre of voxel (0, 0, 0) of the `.npy`; None: not recorded."""
    direction: tuple[tuple[float, float, float], ...] | None = None
    """3x3, `direction[r][c]`: RAS+ component r of the unit vector along array axis c (ITK's convention)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["spacing"] = list(self.spacing)
        # Optional fields are left out when unknown: a manifest without them keeps its bytes.
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        if self.origin is not None:
            out["origin"] = list(self.origin)
        if self.direction is not None:
            out["direction"] = [list(row) for row in self.direction]
        return out

    @property
    def affine(self) -> list[list[float]] | None:
        """4x4 voxel index (i, j, k) of the `.npy` -> RAS+ world mm (as nibabel's `img.affine`), or None."""
        if self.origin is None or self.direction is None:
            return None
        rows = [
            [self.direction[r][c] * self.spacing[c] for c in range(3)] + [self.origin[r]] for r in range(3)
        ]
        return rows + [[0.0, 0.0, 0.0, 1.0]]

    @property
    def voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


class ManifestError(FormatError):
    """A malformed manifest; the message names the file, line and field."""


@dataclass(kw_only=True)
class Manifest:
    root: Path
    """Folder of the manifest; record paths are relative to it."""
    records: list[VolumeRecord]
    header: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None
    """The manifest file it was read from (None when built in memory)."""
    lines: dict[str, int] = field(default_factory=dict)
    """Line number of each record id in `file`, so that errors about a volume can point at its line."""

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.records}
        if len(self._by_id) != len(self.records):
            seen: set[str] = set()
            dup = next(r.id for r in self.records if r.id in seen or seen.add(r.id))
            raise ManifestError(f"{self.root}: duplicate record id {dup!r}")

    def domains(self) -> list[str]:
        """Sorted names of the domains that have at least one record (any split)."""
        return sorted({r.domain for r in self.records})

    def select(self, domain: str | None = None, split: str | None = None) -> list[VolumeRecord]:
        """Records of one domain and/or split, in a fixed order (by id) that the sampler relies on."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        out = [
            r
            for r in self.records
            if (domain is None or r.domain == domain) and (split is None or r.split == split)
        ]
        return sorted(out, key=lambda r: r.id)

    def __getitem__(self, record_id: str) -> VolumeRecord:
        return self._by_id[record_id]

    def __len__(self) -> int:
        return len(self.records)

    def abspath(self, record: VolumeRecord) -> Path:
        return self.root / record.path


def _fail(where: str, msg: str) -> ManifestError:
    return ManifestError(f"{where}: {msg}")


def _parse_record(obj: Any, where: str) -> VolumeRecord:
    if not isinstance(obj, dict):
        raise _fail(where, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "domain", "modality", "path", "shape", "spacing", "source", "sha256", "split"):
        if key not in obj:
            raise _fail(where, f"missing field {key!r}")
    for key in ("id", "domain", "path", "source", "sha256"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise _fail(where, f"field {key!r} must be a non-empty string, got {obj[key]!r}")
    if obj["modality"] not in MODALITIES:
        raise _fail(where, f"field 'modality' must be one of {MODALITIES}, got {obj['modality']!r}")
    if obj["split"] not in SPLITS:
        raise _fail(where, f"field 'split' must be one of {SPLITS}, got {obj['split']!r}")
    dtype = obj.get("dtype", "float16")
    if dtype not in DTYPES:
        raise _fail(where, f"field 'dtype' must be one of {DTYPES}, got {dtype!r}")
    p = PurePosixPath(obj["path"])
    # Records must stay inside the dataset folder: it is moved and copied as a unit.
    if p.is_absolute() or ".." in p.parts:
        raise _fail(where, f"field 'path' must be relative to the manifest folder, got {obj['path']!r}")
    shape = obj["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise _fail(where, f"field 'shape' must be three positive integers, got {shape!r}")
    spacing = obj["spacing"]
    if (
        not isinstance(spacing, list)
        or len(spacing) != 3
        or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in spacing)
    ):
        raise _fail(where, f"field 'spacing' must be three positive numbers, got {spacing!r}")
    stats = obj.get("stats", {})
    if not isinstance(stats, dict):
        raise _fail(where, f"field 'stats' must be an object, got {stats!r}")
    subject = obj.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise _fail(where, f"field 'subject' must be a non-empty string, got {subject!r}")
    origin, direction = _geometry(obj, where)
    return VolumeRecord(
        id=obj["id"],
        domain=obj["domain"],
        modality=obj["modality"],
        path=obj["path"],
        shape=(shape[0], shape[1], shape[2]),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        source=obj["source"],
        sha256=obj["sha256"],
        split=obj["split"],
        dtype=dtype,
        stats=stats,
        subject=subject,
        origin=origin,
        direction=direction,
    )


def record_from_json(obj: Any, where: str = "record") -> VolumeRecord:
    """A checked record from its JSON object (`VolumeRecord.to_json`); ManifestError names `where`."""
    return _parse_record(obj, where)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _geometry(obj: dict, where: str) -> tuple[Any, Any]:
    """(origin, direction) as tuples, or (None, None) for a record written without them."""
    origin, direction = obj.get("origin"), obj.get("direction")
    if origin is None and direction is None:
        return None, None
    if origin is None or direction is None:
        missing = "origin" if origin is None else "direction"
        raise _fail(where, f"field {missing!r} is missing: 'origin' and 'direction' come together")
    if not isinstance(origin, list) or len(origin) != 3 or not all(_number(v) for v in origin):
        raise _fail(where, f"field 'origin' must be three finite numbers, got {origin!r}")
    ok = isinstance(direction, list) and len(direction) == 3
    ok = ok and all(isinstance(r, list) and len(r) == 3 and all(_number(v) for v in r) for r in direction)
    if ok:
        norms = [math.sqrt(sum(direction[r][c] ** 2 for r in range(3))) for c in range(3)]
        ok = all(abs(n - 1) <= _UNIT_TOL for n in norms)
    if not ok:
        raise _fail(
            where,
            f"field 'direction' must be a 3x3 list of lists with unit-length columns, got {direction!r}",
        )
    return (
        (float(origin[0]), float(origin[1]), float(origin[2])),
        tuple((float(r[0]), float(r[1]), float(r[2])) for r in direction),
    )


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest file (or a folder holding `manifest.jsonl`)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found") from None
    records: list[VolumeRecord] = []
    lines_of: dict[str, int] = {}
    header: dict[str, Any] | None = None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(where, f"invalid JSON: {exc.msg}") from None
        if header is None:
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                got = obj.get("format") if isinstance(obj, dict) else obj
                raise _fail(where, f"field 'format' must be {FORMAT!r} on the first line, got {got!r}")
            header = obj
            continue
        records.append(_parse_record(obj, where))
        lines_of.setdefault(records[-1].id, lineno)
    if header is None:
        raise ManifestError(f"{path}: empty file, expected a {FORMAT} header line")
    try:
        return Manifest(root=path.parent.resolve(), records=records, header=header, file=path, lines=lines_of)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def manifest_text(records: Iterable[VolumeRecord], header: dict[str, Any] | None = None) -> str:
    head = {"format": FORMAT, **(header or {})}
    head["format"] = FORMAT
    rows = sorted(records, key=lambda r: r.id)
    head["count"] = len(rows)
    lines = [json.dumps(head, separators=(",", ":"), sort_keys=True)]
    lines += [json.dumps(r.to_json(), separators=(",", ":"), sort_keys=True) for r in rows]
    return "\n".join(lines) + "\n"


def write_manifest(
    path: str | os.PathLike, records: Iterable[VolumeRecord], header: dict[str, Any] | None = None
) -> Path:
    """Write atomically (temp file + rename), records sorted by id so that reruns give identical bytes."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    return atomic_write_text(path, manifest_text(records, header))
