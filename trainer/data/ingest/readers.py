"""Finding and reading source volumes: NIfTI (nibabel), NRRD/MHA (SimpleITK), DICOM (pydicom).

Every reader returns the voxels as float32 in RAS+ axis order with the voxel size along those axes, so
the rest of ingest never sees a reader-specific convention. Geometry goes through one path: an affine
in RAS millimetres handed to nibabel's `as_closest_canonical`. DICOM and ITK store LPS coordinates;
their affines are converted by negating the first two rows.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
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
            items.append(Item(source=_name(p, base), kind="bad", files=[p], error="not found"))
        elif _suffix(p) in NIFTI:
            items.append(_item(p, base, "nifti"))
        elif _suffix(p) in ITK:
            items.append(_item(p, base, "itk"))
        elif _is_dicom(p):
            dicoms.append(p)
        elif explicit:
            items.append(Item(source=_name(p, base), kind="bad", files=[p], error="unsupported file type"))
    return items + _group_dicom(dicoms, base)


def _name(p: Path, base: Path) -> str:
    p = Path(os.path.abspath(p))
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _item(p: Path, base: Path, kind: str) -> Item:
    return Item(source=_name(p, base), kind=kind, files=[p])


def _group_dicom(files: list[Path], base: Path) -> list[Item]:
    import pydicom

    groups: dict[tuple[str, str], list[Path]] = {}
    bad: list[Item] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            uid = str(ds.get("SeriesInstanceUID", "")) or f.name
        except Exception as exc:  # any parse error: the file is reported, the rest continue
            bad.append(Item(source=_name(f, base), kind="bad", files=[f], error=f"unreadable DICOM: {exc}"))
            continue
        groups.setdefault((str(f.parent), uid), []).append(f)
    items = []
    per_folder: dict[str, int] = {}
    for folder, _ in groups:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for (folder, uid), fs in sorted(groups.items()):
        if len(fs) == 1:
            items.append(Item(source=_name(fs[0], base), kind="dicom_file", files=fs))
        else:
            name = _name(Path(folder), base) + (f"#{uid}" if per_folder[folder] > 1 else "")
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
    return Volume(data=np.asarray(img.dataobj, dtype=np.float32), spacing=zooms, meta=meta)


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
    return _read_dicom(item)


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


def _rescale(ds, arr: np.ndarray) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if "DoseGridScaling" in ds:
        slope *= float(ds.DoseGridScaling)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(inter)


def _affine(iop, spacing_rc, normal_step: np.ndarray, ipp0) -> np.ndarray:
    """LPS affine for array axes (column j, row i, frame k)."""
    row_dir = np.asarray(iop[:3], dtype=float)  # direction of increasing column index
    col_dir = np.asarray(iop[3:], dtype=float)  # direction of increasing row index
    a = np.eye(4)
    a[:3, 0] = row_dir * float(spacing_rc[1])
    a[:3, 1] = col_dir * float(spacing_rc[0])
    a[:3, 2] = normal_step
    a[:3, 3] = np.asarray(ipp0, dtype=float)
    return _LPS_TO_RAS @ a


def _read_dicom(item: Item) -> Volume:
    import pydicom

    try:
        slices = [pydicom.dcmread(f) for f in item.files]
    except Exception as exc:
        raise IngestFailure("unreadable", f"{item.source}: cannot parse DICOM: {exc}") from None
    first = slices[0]
    meta = {"suv_factor": suv_factor(first)}
    if item.kind == "dicom_file":
        arr = _pixels(first, item.source)  # (frames, rows, cols); decoded first: truncation shows here
        frames = int(first.get("NumberOfFrames", 1) or 1)
        if frames < 2 or arr.ndim != 3:
            raise IngestFailure("not_3d", f"{item.source}: a single 2D DICOM image, not a 3D volume")
        iop, ps, positions = _multiframe_geometry(first, frames)
        arr = _rescale(first, arr)
    else:
        iop = [float(v) for v in first.ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        slices.sort(key=lambda s: float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])))
        arr = np.stack([_rescale(s, _pixels(s, item.source)) for s in slices])
        ps = first.PixelSpacing
        positions = [[float(v) for v in s.ImagePositionPatient] for s in slices]
    normal = np.cross(iop[:3], iop[3:])
    offs = np.asarray([np.dot(normal, p) for p in positions])
    steps = np.diff(offs)
    if len(steps) == 0 or np.any(np.abs(steps) < 1e-6):
        raise IngestFailure("unreadable", f"{item.source}: slices at duplicate positions")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > 0.01 * abs(step) + 1e-3:
        raise IngestFailure(
            "unreadable", f"{item.source}: irregular slice spacing {sorted(set(np.round(steps, 3)))}"
        )
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))  # (k, i, j) -> (j, i, k)
    return _canonical(data, _affine(iop, ps, normal * step, positions[0]), meta)


def _pixels(ds, source: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # truncated pixel data, missing codec
        text = str(exc).lower()
        reason = (
            "truncated"
            if any(w in text for w in ("length", "truncat", "end of", "less than"))
            else "unreadable"
        )
        raise IngestFailure(reason, f"{source}: cannot decode pixel data: {exc}") from None
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) > 1 or arr.ndim == 4:
        raise IngestFailure("not_3d", f"{source}: colour image (SamplesPerPixel > 1)")
    return arr


def _multiframe_geometry(ds, frames: int):
    shared = ds.get("SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence")
    iop = ds.get("ImageOrientationPatient")
    ps = ds.get("PixelSpacing")
    if shared:
        g = shared[0]
        if "PlaneOrientationSequence" in g:
            iop = g.PlaneOrientationSequence[0].ImageOrientationPatient
        if "PixelMeasuresSequence" in g:
            ps = g.PixelMeasuresSequence[0].PixelSpacing
    iop = [float(v) for v in (iop or [1, 0, 0, 0, 1, 0])]
    ps = [float(v) for v in (ps or [1.0, 1.0])]
    normal = np.cross(iop[:3], iop[3:])
    if per and all("PlanePositionSequence" in f for f in per):
        positions = [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in per]
    else:
        origin = np.asarray([float(v) for v in ds.get("ImagePositionPatient", [0, 0, 0])])
        if "GridFrameOffsetVector" in ds:  # RT dose
            offsets = [float(v) for v in ds.GridFrameOffsetVector]
        else:
            dz = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
            offsets = [k * dz for k in range(frames)]
        positions = [list(origin + normal * o) for o in offsets]
    return iop, ps, positions


def _seconds(t: str) -> float:
    t = str(t).split(".")[0].ljust(6, "0")
    d = datetime.strptime(t[:6], "%H%M%S")
    return d.hour * 3600 + d.minute * 60 + d.second


def suv_factor(ds) -> float | None:
    """Body-weight SUV factor (g/Bq, decay-corrected to the series start) when the PET metadata allows."""
    try:
        if ds.get("Modality") != "PT" or str(ds.get("Units", "")).upper() != "BQML":
            return None
        weight_g = float(ds.PatientWeight) * 1000.0
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        dose = float(rp.RadionuclideTotalDose)
        half = float(rp.RadionuclideHalfLife)
        dt = _seconds(ds.SeriesTime) - _seconds(rp.RadiopharmaceuticalStartTime)
        if dt < 0:
            dt += 24 * 3600
        decayed = dose * math.exp(-math.log(2) * dt / half)
        if not (weight_g > 0 and decayed > 0):
            return None
        return weight_g / decayed
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None
