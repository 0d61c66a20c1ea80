"""DICOM volumes: slice-series pixels through SimpleITK's series reader (GDCM); header fields, multi-frame
files, failure classes and every fallback through pydicom; body-weight SUV (suv.py) honouring Decay Correction.

Speed (benchmarks/bench_dicom.py, 200x256^2, 2 shared cores): both series paths take 0.5-0.7x the time of
the reader before them, which stacked per-slice temporaries and then made a transposed copy; GDCM itself
decodes at about pydicom's speed (1.0-1.15x, less with many private elements: GDCM parses each one). It
also decodes JPEG-LS, which pydicom cannot without a plugin. Its result is kept only where it is the
array the pydicom path gives:
- geometry never comes from ITK: both paths take Image Position (Patient) per slice, Orientation and
  Pixel Spacing from the first file, and run the same checks and affine (`_assemble`);
- the first file is decoded by pydicom too and compared: GDCM inverts MONOCHROME1, pydicom (and this
  reader before SimpleITK) does not; any other disagreement also falls back;
- whatever SimpleITK cannot read (a truncated or corrupt slice, unequal slice sizes, colour) is read
  again with pydicom, whose errors carry the failure classes of failures.jsonl.
`Volume.meta["reader"]` says which path produced the pixels. Multi-frame files stay on pydicom: one file,
nothing for a series reader to gain, and RT dose scaling / functional groups are read here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .readers import _LPS_TO_RAS, IngestFailure, Item, Volume, _canonical
from .suv import suv_bw

READERS = ("auto", "simpleitk", "pydicom")
# Per-slice header fields both paths collect (keyword -> key in ITK's metadata dictionary).
SLICE_TAGS = {
    "ImagePositionPatient": "0020|0032",
    "AcquisitionDate": "0008|0022",
    "AcquisitionTime": "0008|0032",
    "AcquisitionDateTime": "0008|002a",
    "FrameReferenceTime": "0054|1300",
    "ActualFrameDuration": "0018|1242",
}


class _Disagree(Exception):
    """SimpleITK's pixels are not pydicom's: the series is read again with pydicom."""


def read_dicom(item: Item) -> Volume:
    if item.kind == "dicom_file":
        return _read_multiframe(item)
    return read_series(item)


def read_series(item: Item, reader: str = "auto") -> Volume:
    """A slice series. reader: "auto" (SimpleITK, pydicom where SimpleITK cannot or disagrees),
    "simpleitk" (no fallback: its errors propagate; tests and benchmarks) or "pydicom"."""
    import pydicom

    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    try:
        first = pydicom.dcmread(item.files[0], stop_before_pixels=True)
    except Exception as exc:  # any parse error
        raise IngestFailure("unreadable", f"{item.source}: cannot parse DICOM: {exc}") from None
    fallback = ""
    if reader != "pydicom":
        try:
            arr, slices = _series_sitk(item, first)
        except Exception as exc:
            if reader == "simpleitk":
                raise
            lines = str(exc).strip().splitlines() or [""]
            fallback = f"{type(exc).__name__}: {lines[-1][:200]}"
        else:
            return _assemble(item, first, arr, slices, "simpleitk")
    arr, slices = _series_pydicom(item)
    vol = _assemble(item, first, arr, slices, "pydicom")
    if fallback:
        vol.meta["simpleitk_fallback"] = fallback
    return vol


def _series_sitk(item: Item, first) -> tuple[np.ndarray, list[dict[str, str]]]:
    import pydicom
    import SimpleITK as sitk

    names = [str(f) for f in item.files]
    r = sitk.ImageSeriesReader()
    r.SetImageIO("GDCMImageIO")  # every file is DICOM: skip ITK's per-file format probing
    r.SetFileNames(names)
    r.SetOutputPixelType(sitk.sitkFloat32)  # GDCM applies each slice's own slope/intercept
    r.MetaDataDictionaryArrayUpdateOn()  # per-slice header fields, in file order
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    # Files come in name order, not position order, so ITK would warn "non uniform sampling" for most
    # series; _assemble checks the spacing itself.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        img = r.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3 or img.GetDepth() != len(names):
        raise _Disagree(f"{img.GetDimension()}D image of {img.GetNumberOfComponentsPerPixel()} components")
    view = sitk.GetArrayViewFromImage(img)  # (slice, row, column) in file order; valid while img lives
    slices = [
        {
            kw: r.GetMetaData(k, key).strip() if r.HasMetaDataKey(k, key) else ""
            for kw, key in SLICE_TAGS.items()
        }
        for k in range(len(names))
    ]
    ds0 = pydicom.dcmread(names[0])
    try:
        ref = _rescaled(ds0, item.source)
    except IngestFailure as exc:
        # pydicom lacks the codec (JPEG-LS without its plugin): GDCM decoded it; nothing to compare
        # with, and the known disagreement (MONOCHROME1) is ruled out from the header.
        if exc.reason != "unreadable" or str(ds0.get("PhotometricInterpretation", "")) != "MONOCHROME2":
            raise
        ref = None
    if ref is not None:
        scale = max(1.0, float(np.abs(ref).max()), abs(float(ds0.get("RescaleIntercept", 0) or 0)))
        # GDCM rescales in float64, pydicom in float32: a few float32 ulps apart at most.
        if ref.shape != view[0].shape or float(np.abs(view[0] - ref).max()) > 1e-6 * scale:
            raise _Disagree(f"{names[0]}: SimpleITK's pixels differ from pydicom's")
    order = _position_order(first, slices)
    if order is None:
        return view.copy(), slices
    return view[order], [slices[i] for i in order]  # the one copy out of ITK's buffer, sorted


def _series_pydicom(item: Item) -> tuple[np.ndarray, list[dict[str, str]]]:
    import pydicom

    try:
        dss = [pydicom.dcmread(f) for f in item.files]
    except Exception as exc:
        raise IngestFailure("unreadable", f"{item.source}: cannot parse DICOM: {exc}") from None
    slices = [{kw: header_text(ds.get(kw)) for kw in SLICE_TAGS} for ds in dss]
    order = _position_order(dss[0], slices)
    if order is not None:  # headers come before pixels: decode in position order, no reordering copy
        dss, slices = [dss[i] for i in order], [slices[i] for i in order]
    out = None
    for k, ds in enumerate(dss):
        px = _pixels(ds, item.source)
        if out is None:
            out = np.empty((len(dss), *px.shape), np.float32)
        if px.shape != out.shape[1:]:
            raise IngestFailure(
                "unreadable", f"{item.source}: slices of shapes {out.shape[1:]} and {px.shape}"
            )
        # In place, one slice at a time: the values of _rescale (float32 arithmetic), without its
        # temporaries and without a stacking copy.
        slope, inter = _slope_intercept(ds)
        out[k] = px
        out[k] *= slope
        out[k] += inter
    return out, slices


def _position_order(first, slices: list[dict[str, str]]) -> np.ndarray | None:
    """Slice order along the normal of the first file's orientation; None when a field is unusable
    (_assemble then names it)."""
    try:
        iop = [float(v) for v in header_text(first.get("ImageOrientationPatient")).split("\\")]
        normal = np.cross(iop[:3], iop[3:6])
        offs = [float(normal @ [float(v) for v in s["ImagePositionPatient"].split("\\")]) for s in slices]
    except (ValueError, IndexError):
        return None
    return np.argsort(offs, kind="stable")


def header_text(v) -> str:
    """A pydicom value as ITK's metadata dictionary writes it (multi-values joined by backslashes)."""
    if v is None:
        return ""
    if not isinstance(v, (str, bytes)) and hasattr(v, "__iter__"):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _floats(text: str, n: int, what: str, source: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).split("\\")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise IngestFailure("unreadable", f"{source}: {what} is {text!r}, expected {n} numbers")
    return vals


def _assemble(item: Item, first, arr: np.ndarray, slices: list[dict[str, str]], reader: str) -> Volume:
    """Both paths, slices in position order (`_position_order`): check the spacing, apply the SUV decay
    scaling, orient."""
    iop = _floats(
        header_text(first.get("ImageOrientationPatient")), 6, "ImageOrientationPatient", item.source
    )
    positions = [_floats(s["ImagePositionPatient"], 3, "ImagePositionPatient", item.source) for s in slices]
    affine = _checked_affine(item.source, iop, first.PixelSpacing, positions)
    meta = {"reader": reader}
    # The affine describes the (slice, row, column) array as it is: nibabel's reorientation to RAS+ is
    # then views (transpose, flips), not the strided copy an explicit transpose costs.
    return _canonical(_with_suv(first, arr, slices, meta), affine, meta)


def _checked_affine(source: str, iop, ps, positions) -> np.ndarray:
    """LPS->RAS affine for array axes (slice k, row i, column j); slices must be evenly spaced."""
    normal = np.cross(iop[:3], iop[3:])
    steps = np.diff(np.asarray(positions, dtype=float) @ normal)
    if len(steps) == 0 or np.any(np.abs(steps) < 1e-6):
        raise IngestFailure("unreadable", f"{source}: slices at duplicate positions")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > 0.01 * abs(step) + 1e-3:
        raise IngestFailure(
            "unreadable", f"{source}: irregular slice spacing {sorted(set(np.round(steps, 3)))}"
        )
    a = np.eye(4)
    a[:3, 0] = normal * step
    a[:3, 1] = np.asarray(iop[3:], dtype=float) * float(ps[0])  # increasing row index
    a[:3, 2] = np.asarray(iop[:3], dtype=float) * float(ps[1])  # increasing column index
    a[:3, 3] = np.asarray(positions[0], dtype=float)
    return _LPS_TO_RAS @ a


def _with_suv(first, arr: np.ndarray, slices: Sequence[Mapping[str, str]], meta: dict) -> np.ndarray:
    suv = suv_bw(first, slices)
    meta["suv_factor"] = None if suv is None else suv.factor
    if suv is not None:
        meta["decay_correction"] = suv.decay_correction
        if suv.slice_scale is not None:  # NONE: decay-correct each slice to the injection time
            arr = arr * np.asarray(suv.slice_scale, dtype=np.float32)[:, None, None]
    return arr


def _slope_intercept(ds) -> tuple[np.float32, np.float32]:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if "DoseGridScaling" in ds:
        slope *= float(ds.DoseGridScaling)
    return np.float32(slope), np.float32(inter)


def _rescale(ds, arr: np.ndarray) -> np.ndarray:
    slope, inter = _slope_intercept(ds)
    return arr.astype(np.float32) * slope + inter


def _rescaled(ds, source: str) -> np.ndarray:
    return _rescale(ds, _pixels(ds, source))


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


def _read_multiframe(item: Item) -> Volume:
    import pydicom

    try:
        ds = pydicom.dcmread(item.files[0])
    except Exception as exc:
        raise IngestFailure("unreadable", f"{item.source}: cannot parse DICOM: {exc}") from None
    arr = _pixels(ds, item.source)  # (frames, rows, cols); decoded first: truncation shows here
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 2 or arr.ndim != 3:
        raise IngestFailure("not_3d", f"{item.source}: a single 2D DICOM image, not a 3D volume")
    iop, ps, positions = _multiframe_geometry(ds, frames)
    affine = _checked_affine(item.source, iop, ps, positions)
    meta = {"reader": "pydicom"}
    # Per-frame times of enhanced PET live in the functional groups; the top-level ones are used here.
    arr = _with_suv(
        ds, _rescale(ds, arr), [{kw: header_text(ds.get(kw)) for kw in SLICE_TAGS}] * frames, meta
    )
    return _canonical(arr, affine, meta)


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
