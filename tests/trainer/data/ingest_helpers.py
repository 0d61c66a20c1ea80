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
