"""Finding and reading source volumes: NIfTI (nibabel), NRRD/MHA (SimpleITK), DICOM (dicom.py: series
pixels through SimpleITK's series reader, metadata and fallbacks through pydicom).

Every reader returns the voxels as float32 in RAS+ axis order with the voxel size along those axes and
the affine of that array, so the rest of ingest never sees a reader-specific convention. Geometry goes
through one path: an affine in RAS millimetres handed to nibabel's `as_closest_canonical`. DICOM and ITK
store LPS coordinates; their affines are converted by negating the first two rows.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NIFTI = (".nii", ".nii.gz")
ITK = (".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class IngestFailure(Exception):
    """A source that cannot be used; `reason` is a short code for failures.jsonl."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(kw_only=True)
class Item:
    source: str
    """How the source is named in the manifest and failures (path relative to the spec when inside it)."""
    kind: str
    """nifti, itk, dicom_series, dicom_file, or bad (discovery already failed)."""
    files: list[Path]
    error: str = ""


@dataclass(kw_only=True)
class Volume:
    data: np.ndarray
    """float32, RAS+ axis order."""
    spacing: tuple[float, float, float]
    meta: dict = field(default_factory=dict)
    affine: np.ndarray | None = None
    """4x4 float64, RAS millimetres, of `data`'s voxel indices (nibabel's convention: voxel (i, j, k)
    centre = affine @ (i, j, k, 1)). Every reader sets it; None only for a Volume built by hand. After
    cropping or resampling it no longer describes the output: shift the origin / scale the columns."""

    @property
    def origin(self) -> tuple[float, float, float] | None:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return None if self.affine is None else tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray | None:
        """3x3 RAS direction cosines, column c = unit step along array axis c (near +identity: RAS+)."""
        if self.affine is None:
            return None
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0, keepdims=True)


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


def _is_dicom(p: Path) -> bool:
    if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def discover(pattern: str, base: Path) -> list[Item]:
    """Items of one spec source: a glob, a file, or a folder searched recursively."""
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else [full]
    items: list[Item] = []
    dicoms: list[Path] = []
    explicit = glob.has_magic(full) or not os.path.isdir(full)
    for m in matches:
        p = Path(m)
        if p.is_dir():
            for root, _, names in os.walk(p):
                for n in sorted(names):
                    f = Path(root) / n
                    if _suffix(f) in NIFTI + ITK:
                        items.append(_item(f, base, "nifti" if _suffix(f) in NIFTI else "itk"))
                    elif _is_dicom(f):
                        dicoms.append(f)
        elif not p.exists():
            items.append(Item(source=source_name(p, base), kind="bad", files=[p], error="not found"))
        elif _suffix(p) in NIFTI:
            items.append(_item(p, base, "nifti"))
        elif _suffix(p) in ITK:
            items.append(_item(p, base, "itk"))
        elif _is_dicom(p):
            dicoms.append(p)
        elif explicit:
            items.append(
                Item(source=source_name(p, base), kind="bad", files=[p], error="unsupported file type")
            )
    return items + _group_dicom(dicoms, base)


def source_name(p: Path, base: Path) -> str:
    """How a manifest and failures.jsonl name a source: relative to the spec's folder when inside it."""
    p = Path(os.path.abspath(p))
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _item(p: Path, base: Path, kind: str) -> Item:
    return Item(source=source_name(p, base), kind=kind, files=[p])


def _group_dicom(files: list[Path], base: Path) -> list[Item]:
    if not files:  # pydicom is needed only when there are DICOM files (the GPU image lacks it)
        return []
    import pydicom

    groups: dict[tuple[str, str], list[Path]] = {}
    bad: list[Item] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            uid = str(ds.get("SeriesInstanceUID", "")) or f.name
        except Exception as exc:  # any parse error: the file is reported, the rest continue
            bad.append(
                Item(source=source_name(f, base), kind="bad", files=[f], error=f"unreadable DICOM: {exc}")
            )
            continue
        groups.setdefault((str(f.parent), uid), []).append(f)
    items = []
    per_folder: dict[str, int] = {}
    for folder, _ in groups:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for (folder, uid), fs in sorted(groups.items()):
        if len(fs) == 1:
            items.append(Item(source=source_name(fs[0], base), kind="dicom_file", files=fs))
        else:
            name = source_name(Path(folder), base) + (f"#{uid}" if per_folder[folder] > 1 else "")
            items.append(Item(source=name, kind="dicom_series", files=sorted(fs)))
    return items + bad


def checksum(item: Item) -> str:
    h = hashlib.sha256()
    for f in sorted(item.files):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _canonical(data: np.ndarray, affine_ras: np.ndarray, meta: dict) -> Volume:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine_ras))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    data = np.asarray(img.dataobj, dtype=np.float32)
    return Volume(data=data, spacing=zooms, meta=meta, affine=np.asarray(img.affine, dtype=np.float64))


def _squeeze3d(data: np.ndarray, source: str) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise IngestFailure("not_3d", f"{source}: expected a 3D volume, got shape {tuple(data.shape)}")
    return data


def read_item(item: Item) -> Volume:
    if item.kind == "bad":
        raise IngestFailure("unreadable", f"{item.source}: {item.error}")
    if item.kind == "nifti":
        return _read_nifti(item)
    if item.kind == "itk":
        return _read_itk(item)
    from .dicom import read_dicom  # dicom.py imports this module's Volume and helpers

    return read_dicom(item)


def _read_nifti(item: Item) -> Volume:
    import nibabel as nib

    img = nib.load(str(item.files[0]))
    data = np.asarray(img.dataobj, dtype=np.float32)  # decompresses: a corrupt gzip fails here
    data = _squeeze3d(data, item.source)
    return _canonical(data, img.affine, {})


def _read_itk(item: Item) -> Volume:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(item.files[0]))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise IngestFailure(
            "not_3d", f"{item.source}: {img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    if img.GetDimension() != 3:
        raise IngestFailure("not_3d", f"{item.source}: expected a 3D image, got {img.GetDimension()}D")
    data = sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0)  # (z,y,x) -> (i,j,k)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    return _canonical(data, _LPS_TO_RAS @ affine, {})
