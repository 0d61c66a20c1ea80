"""Body-weight SUV of PET DICOM, honouring Decay Correction (0054,1102): the factor, and for NONE the
per-slice correction to the injection time. Used by the DICOM reader (dicom.py) and ingest's MONAI
transform (monai_transforms.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, kw_only=True)
class Suv:
    """SUVbw of a voxel of slice k = value * slice_scale[k] * factor."""

    factor: float
    """g/Bq for Units BQML; 1 for GML (the values are SUVbw already)."""
    decay_correction: str
    """START, ADMIN or NONE (read, or inferred by `decay_correction`); GML for Units GML."""
    slice_scale: tuple[float, ...] | None = None
    """NONE only: 2^((t_k - t_injection) / half-life), the decay correction to the injection time that
    the scanner did not apply, per slice in the order of `slice_times`."""


def decay_correction(ds) -> str:
    """Decay Correction (0054,1102); when absent, NONE if Corrected Image (0028,0051) is present without
    DECY, else START (the usual value, and this reader's assumption before it read the field)."""
    value = str(ds.get("DecayCorrection", "") or "").strip().upper()
    if value:
        return value
    corrected = ds.get("CorrectedImage")
    if corrected:
        names = [corrected] if isinstance(corrected, str) else list(corrected)
        if "DECY" not in [str(n).strip().upper() for n in names]:
            return "NONE"
    return "START"


def suv_bw(ds, slice_times: Sequence[Mapping[str, str]] = ()) -> Suv | None:
    """SUVbw = value * weight_g / dose_at_t, t the time the values refer to, following QIBA's
    vendor-neutral SUV pseudo-code (qibawiki.rsna.org, "Standardized Uptake Value (SUV)") and the
    meaning of Decay Correction in DICOM PS3.3 C.8.9.1.1.5 (NONE; START = acquisition start; ADMIN =
    radiopharmaceutical administration):
    - START: dose * 2^(-(scan - injection) / half-life); scan = Series Date/Time, or the earliest
      Acquisition Date/Time of `slice_times` when the series time is after it (a post-processed
      series; QIBA).
    - ADMIN: the values are corrected to the injection already: the dose as given.
    - NONE: slice k is corrected to the injection with its own time t_k (`Suv.slice_scale`): Frame
      Reference Time (ms after the series time; "the time that the pixel values occurred", C.8.9.4.1.5),
      else Acquisition Date/Time + T_ave over Actual Frame Duration T, T_ave = ln(lam T / (1 -
      e^(-lam T))) / lam (C.8.9.4.1.5, example 2), else Acquisition Date/Time.
    The injection is Radiopharmaceutical Start DateTime, else Start Time on the series date (a negative
    interval then means midnight passed: +24 h, QIBA). Units GML: factor 1. None when Units is neither,
    a field is missing or a value unusable (ingest then normalizes per volume)."""
    try:
        if ds.get("Modality") != "PT":
            return None
        units = str(ds.get("Units", "")).strip().upper()
        if units == "GML":
            return Suv(factor=1.0, decay_correction="GML")
        if units != "BQML":
            return None
        weight_g = float(ds.PatientWeight) * 1000.0
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        dose = float(rp.RadionuclideTotalDose)
        half = float(rp.RadionuclideHalfLife)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None
    if not (weight_g > 0 and dose > 0 and half > 0):
        return None
    mode = decay_correction(ds)
    if mode == "ADMIN":
        return Suv(factor=weight_g / dose, decay_correction=mode)
    if mode not in ("START", "NONE"):
        return None
    day = _da(ds.get("SeriesDate")) or next(
        (d for d in (_da(s.get("AcquisitionDate")) for s in slice_times) if d), _NO_DATE
    )
    injection = _dt(rp.get("RadiopharmaceuticalStartDateTime"))
    dated = injection is not None
    injection = injection or _at(day, rp.get("RadiopharmaceuticalStartTime"))
    series = _at(day, ds.get("SeriesTime"))
    starts = [_slice_start(s, day) for s in slice_times]
    if injection is None:
        return None
    if mode == "START":
        known = [t for t in starts if t is not None]
        scan = min(known) if known and (series is None or series > min(known)) else series
        dt = _elapsed(scan, injection, dated)
        return (
            None if dt is None else Suv(factor=weight_g / (dose * 2.0 ** (-dt / half)), decay_correction=mode)
        )
    lam = math.log(2) / half
    scale = []
    for s, start in zip(slice_times, starts):
        ref_ms = _number(s.get("FrameReferenceTime"))
        if ref_ms is not None and series is not None:
            t = series + timedelta(milliseconds=ref_ms)
        elif start is not None:
            dur_s = (_number(s.get("ActualFrameDuration")) or 0.0) / 1000.0
            t_ave = math.log(lam * dur_s / -math.expm1(-lam * dur_s)) / lam if dur_s > 0 else 0.0
            t = start + timedelta(seconds=t_ave)
        else:
            return None
        dt = _elapsed(t, injection, dated)
        if dt is None:
            return None
        scale.append(2.0 ** (dt / half))
    return Suv(factor=weight_g / dose, decay_correction=mode, slice_scale=tuple(scale)) if scale else None


_NO_DATE = datetime(1900, 1, 1)  # time-only fields: one shared day, so that differences still work


def _number(text) -> float | None:
    try:
        return float(str(text).strip()) if text not in (None, "") else None
    except ValueError:
        return None


def _tm(text) -> float | None:
    """TM (HHMMSS.FFFFFF, shorter forms, ACR-NEMA colons) -> seconds of the day."""
    t = str(text or "").strip().replace(":", "")
    main, _, frac = t.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        return None
    sec = int(main[:2]) * 3600 + int(main[2:4] or 0) * 60 + int(main[4:6] or 0)
    return sec + (float("0." + frac) if frac.isdigit() else 0.0)


def _da(text) -> datetime | None:
    try:
        return datetime.strptime(str(text or "").strip().replace(".", ""), "%Y%m%d")
    except ValueError:
        return None


def _at(day: datetime, time_text) -> datetime | None:
    sec = _tm(time_text)
    return None if sec is None else day + timedelta(seconds=sec)


def _dt(text) -> datetime | None:
    """DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX); the UTC offset is dropped (one scanner, one clock)."""
    t = str(text or "").strip()
    head, tail = t[:8], t[8:].split("+")[0].split("-")[0]
    day = _da(head)
    if day is None:
        return None
    return _at(day, tail) if tail else day


def _slice_start(s: Mapping[str, str], day: datetime) -> datetime | None:
    return _dt(s.get("AcquisitionDateTime")) or _at(
        _da(s.get("AcquisitionDate")) or day, s.get("AcquisitionTime")
    )


def _elapsed(t: datetime | None, injection: datetime, dated: bool) -> float | None:
    if t is None:
        return None
    dt = (t - injection).total_seconds()
    if dt < 0 and not dated:  # injected before midnight, scanned after
        dt += 24 * 3600
    return dt if dt >= 0 else None
