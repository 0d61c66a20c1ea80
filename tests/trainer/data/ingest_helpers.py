"""Source files for the ingest tests: the same volume as NIfTI, NRRD, MHA and a DICOM series (written with
the real libraries), so that every reader can be checked against one closed-form expectation."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np

SPACING = (0.8, 0.9, 2.5)
ORIGIN_LPS = (10.0, -20.0, 30.0)


def phantom_hu(shape=(40, 36, 24), seed=0) -> np.ndarray:
    """Air (-1000 HU) around an off-centre ellipsoid of soft tissue with a bone rod: asymmetric on every
    axis so that a wrong flip or transpose changes the result."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    body = ((i - 15) / 12) ** 2 + ((j - 20) / 10) ** 2 + ((k - 10) / 8) ** 2 < 1
    x = np.full(shape, -1000.0, dtype=np.float32)
    x[body] = 40.0 + 30.0 * i[body] / shape[0] + 10 * rng.standard_normal(int(body.sum())).astype(np.float32)
    x[body & (np.abs(i - 12) < 2) & (np.abs(j - 18) < 2)] = 900.0
    return np.round(x)


def ras_affine() -> np.ndarray:
    """The RAS affine of an LPS-identity DICOM/ITK geometry (axis 0 -> L, 1 -> P, 2 -> S)."""
    a = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    a[:3, 3] = [-ORIGIN_LPS[0], -ORIGIN_LPS[1], ORIGIN_LPS[2]]
    return a


def write_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, ras_affine() if affine is None else affine), str(path))
    return path


def write_itk(path: Path, data: np.ndarray) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN_LPS)
    sitk.WriteImage(img, str(path))
    return path


def write_dicom_series(
    folder: Path, hu: np.ndarray, *, modality="CT", pet: dict | None = None, shuffle=True
) -> Path:
    """One file per slice along axis 2, from pydicom's CT_small.dcm as template; rescale intercept -1024."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    tmpl = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    order = np.random.default_rng(1).permutation(hu.shape[2]) if shuffle else np.arange(hu.shape[2])
    for n, k in enumerate(order):
        ds = copy.deepcopy(tmpl)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        ds.Modality = modality
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # [between rows, between columns]
        ds.SliceThickness = SPACING[2]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ORIGIN_LPS[0], ORIGIN_LPS[1], ORIGIN_LPS[2] + k * SPACING[2]]
        slope = 1.0
        if pet:
            ds.Units = "BQML"
            for key, v in pet.items():
                setattr(ds, key, v)
            slope = 0.5
        ds.RescaleSlope = slope
        ds.RescaleIntercept = -1024
        stored = np.round((hu[:, :, k].T + 1024) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"slice{n:03d}.dcm", enforce_file_format=True)
    return folder


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"


def write_dicom_slices(
    folder: Path,
    stored: list[np.ndarray],
    positions: list,
    *,
    iop=(1, 0, 0, 0, 1, 0),
    pixel_spacing=(SPACING[1], SPACING[0]),
    sop_class=CT_IMAGE,
    common: dict | None = None,
    per_slice: list[dict] | None = None,
) -> list[Path]:
    """File n = stored[n] (2D int16, rows x columns) at Image Position positions[n], from pydicom's
    CT_small.dcm; `common` fields go into every file, `per_slice[n]` into file n (e.g. RescaleSlope,
    AcquisitionTime). Any geometry: the caller chooses orientation, order, gaps and duplicates."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    tmpl = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    paths = []
    for n, (arr, pos) in enumerate(zip(stored, positions)):
        ds = copy.deepcopy(tmpl)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns = arr.shape
        ds.PixelSpacing = list(pixel_spacing)
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        for key, v in {**(common or {}), **(per_slice[n] if per_slice else {})}.items():
            setattr(ds, key, v)
        ds.PixelData = np.ascontiguousarray(arr.astype(np.int16)).tobytes()
        paths.append(folder / f"slice{n:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def pet_fields(*, weight=70.0, dose=3.7e8, half_life=6586.2, start="100000", series_time="110000", **more):
    """The PET Series fields of a body-weight SUV (Units BQML, F-18 by default), as `common` for
    write_dicom_slices or for a pydicom Dataset."""
    from pydicom import Dataset
    from pydicom.sequence import Sequence

    rp = Dataset()
    rp.RadionuclideTotalDose = dose
    rp.RadionuclideHalfLife = half_life
    rp.RadiopharmaceuticalStartTime = start
    return {
        "Modality": "PT",
        "Units": "BQML",
        "PatientWeight": weight,
        "SeriesDate": "20240102",
        "SeriesTime": series_time,
        "AcquisitionDate": "20240102",  # the template's are from 1997: an "earlier acquisition"
        "AcquisitionTime": series_time,
        "RadiopharmaceuticalInformationSequence": Sequence([rp]),
        **more,
    }


# F-18 injected at 10:00, series at 11:00, 80 kg: decay-corrected SUV = activity * 80000 / PET_DECAYED.
PET_DOSE_BQ, PET_HALF_LIFE_S = 3.7e8, 6586.2
PET_DECAYED = PET_DOSE_BQ * np.exp(-np.log(2) * 3600 / PET_HALF_LIFE_S)


def pet_header() -> dict:
    """The PET fields `write_dicom_series(..., pet=...)` writes for an SUV computation (dose, half-life,
    injection and series times, weight)."""
    from pydicom import Dataset
    from pydicom.sequence import Sequence

    rp = Dataset()
    rp.RadionuclideTotalDose = PET_DOSE_BQ
    rp.RadionuclideHalfLife = PET_HALF_LIFE_S
    rp.RadiopharmaceuticalStartTime = "100000"
    return {
        "PatientWeight": 80,
        "SeriesTime": "110000",
        "RadiopharmaceuticalInformationSequence": Sequence([rp]),
    }
