"""DICOM series through SimpleITK's series reader vs the pydicom path (same array, geometry and failure
classes; checked against SimpleITK's own geometry), and body-weight SUV for each Decay Correction
against closed forms."""

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import Dataset

from tests.trainer.data.ingest_helpers import (
    PET_IMAGE,
    SPACING,
    pet_fields,
    phantom_hu,
    ras_affine,
    write_dicom_series,
    write_dicom_slices,
)
from voxmix.trainer.data.ingest.dicom import read_series
from voxmix.trainer.data.ingest.readers import IngestFailure, discover, read_item
from voxmix.trainer.data.ingest.suv import decay_correction, suv_bw

F18 = 6586.2  # s
LAM = math.log(2) / F18


def _item(folder):
    (item,) = discover(str(folder), folder.parent)
    assert item.kind == "dicom_series"
    return item


def _itk_values_at_our_voxels(folder, vol) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK reads the series in GDCM's own order with its own geometry; each of its voxels is
    mapped (LPS -> RAS -> inverse of our affine) to our array: (ITK's values, ours at those voxels)."""
    img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    z, y, x = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
    idx = np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(float)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    lps = np.asarray(img.GetOrigin())[:, None] + d @ (idx * np.asarray(img.GetSpacing())[:, None])
    ras = np.vstack([-lps[0], -lps[1], lps[2], np.ones(lps.shape[1])])
    ours = np.linalg.inv(vol.affine) @ ras
    assert np.abs(ours - np.round(ours)).max() < 1e-4  # ITK's voxel centres are our voxel centres
    i, j, k = np.round(ours[:3]).astype(int)
    return arr.ravel(), vol.data[i, j, k]


def test_simpleitk_series_is_the_pydicom_array(tmp_path):
    hu = phantom_hu(shape=(32, 30, 8))
    write_dicom_series(tmp_path / "s", hu)  # slices written in shuffled order
    item = _item(tmp_path / "s")
    fast, ref = read_series(item, "simpleitk"), read_series(item, "pydicom")
    assert read_item(item).meta["reader"] == "simpleitk"  # the default path
    np.testing.assert_array_equal(fast.data, ref.data)
    assert fast.spacing == ref.spacing
    np.testing.assert_array_equal(fast.affine, ref.affine)
    # Closed form: nibabel's canonical image of the written volume and its LPS-identity affine.
    want = nib.as_closest_canonical(nib.Nifti1Image(hu, ras_affine()))
    np.testing.assert_array_equal(fast.data, want.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(fast.affine, want.affine)
    np.testing.assert_allclose(fast.spacing, SPACING)
    np.testing.assert_allclose(fast.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(fast.origin, want.affine[:3, 3])
    itk, ours = _itk_values_at_our_voxels(tmp_path / "s", fast)
    np.testing.assert_array_equal(ours, itk)


def test_sagittal_descending_series_with_per_slice_rescale(tmp_path):
    rng = np.random.default_rng(3)
    stored = [rng.integers(0, 3000, size=(12, 10)).astype(np.int16) for _ in range(6)]
    # Rows run anterior->posterior, columns head->feet; the normal is -x, positions written shuffled.
    order = [3, 0, 5, 1, 4, 2]
    positions = [[7.0 - 2.0 * k, -20.0, 30.0] for k in order]
    slopes = [{"RescaleSlope": s, "RescaleIntercept": -1024} for s in (0.5, 0.25, 1.5, 0.75, 2.0, 0.125)]
    write_dicom_slices(
        tmp_path / "s",
        [stored[k] for k in order],
        positions,
        iop=(0, 1, 0, 0, 0, -1),
        pixel_spacing=(1.5, 0.7),
        per_slice=slopes,
    )
    item = _item(tmp_path / "s")
    fast, ref = read_series(item, "simpleitk"), read_series(item, "pydicom")
    np.testing.assert_allclose(fast.data, ref.data, rtol=1e-6, atol=1e-6 * 1024)
    np.testing.assert_array_equal(fast.affine, ref.affine)
    # RAS axes: x = the slices (2.0 mm), y = the columns (0.7 mm), z = the rows (1.5 mm).
    assert fast.spacing == pytest.approx((2.0, 0.7, 1.5)) and fast.data.shape == (6, 10, 12)
    np.testing.assert_allclose(np.abs(fast.direction), np.eye(3), atol=1e-12)  # RAS+ up to no flips
    assert np.all(np.diag(fast.direction) > 0)
    itk, ours = _itk_values_at_our_voxels(tmp_path / "s", fast)
    np.testing.assert_allclose(ours, itk, rtol=1e-6, atol=1e-6 * 1024)


def _ct_slices(n=4, side=8):
    return [np.full((side, side), 100 * k, np.int16) + np.arange(side, dtype=np.int16) for k in range(n)]


@pytest.mark.parametrize(
    "zs, reason, text",
    [
        ([0.0, 2.5, 5.0, 10.0], "unreadable", "irregular slice spacing"),
        ([0.0, 2.5, 2.5, 5.0], "unreadable", "duplicate"),
    ],
)
def test_gaps_and_duplicates_fail_the_same_way(tmp_path, zs, reason, text):
    write_dicom_slices(tmp_path / "s", _ct_slices(), [[0, 0, z] for z in zs])
    item = _item(tmp_path / "s")
    for reader in ("simpleitk", "pydicom", "auto"):
        with pytest.raises(IngestFailure, match=text) as exc:
            read_series(item, reader)
        assert exc.value.reason == reason


def test_fallbacks_keep_the_pydicom_result_and_failure_class(tmp_path):
    # MONOCHROME1: GDCM inverts the values, pydicom (and this reader before) does not: pydicom is used.
    write_dicom_slices(
        tmp_path / "m1",
        _ct_slices(),
        [[0, 0, 2.0 * k] for k in range(4)],
        common={"PhotometricInterpretation": "MONOCHROME1"},
    )
    item = _item(tmp_path / "m1")
    vol = read_item(item)
    assert vol.meta["reader"] == "pydicom" and "differ" in vol.meta["simpleitk_fallback"]
    np.testing.assert_array_equal(vol.data, read_series(item, "pydicom").data)
    # Cut into the trailing padding only: GDCM gives up, pydicom reads the slice: pydicom's array.
    # Cut into the pixel data: neither reads it; pydicom's error gives the failure class.
    for cut, reason in ((40, None), (600, "truncated")):
        paths = write_dicom_slices(
            tmp_path / f"t{cut}", _ct_slices(side=32), [[0, 0, 2.0 * k] for k in range(4)]
        )
        paths[2].write_bytes(paths[2].read_bytes()[:-cut])
        item = _item(tmp_path / f"t{cut}")
        with pytest.raises(RuntimeError):
            read_series(item, "simpleitk")
        if reason is None:
            vol = read_item(item)
            assert vol.meta["reader"] == "pydicom" and "Cannot read" in vol.meta["simpleitk_fallback"]
            assert vol.data.shape == (32, 32, 4)
            continue
        with pytest.raises(IngestFailure) as exc:
            read_item(item)
        assert exc.value.reason == reason


def test_jpeg_ls_series_pydicom_cannot_decode(tmp_path):
    """pydicom has no JPEG-LS codec without its plugin; GDCM has: such a series, `unreadable` before, is
    read by SimpleITK. Reference: the same image stored uncompressed (MR_small.dcm)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    tmpl = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    (tmp_path / "ls").mkdir()
    for k in range(3):
        tmpl.SOPInstanceUID = tmpl.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        tmpl.ImagePositionPatient = [-83.9063, -91.2, 6.6406 + 5.0 * k]
        tmpl.save_as(tmp_path / "ls" / f"s{k}.dcm")
    item = _item(tmp_path / "ls")
    try:
        read_series(item, "pydicom")
    except IngestFailure as exc:  # no pydicom JPEG-LS plugin (pyjpegls) installed
        assert exc.reason == "unreadable" and "JPEG-LS" in str(exc)
    vol = read_item(item)
    assert vol.meta["reader"] == "simpleitk" and vol.data.shape == (64, 64, 3)
    plain = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    for k in range(3):  # RAS: columns flipped (L->R), rows flipped (P->A), slices as written
        np.testing.assert_array_equal(vol.data[:, :, k], plain.T[::-1, ::-1])


def test_every_reader_reports_its_affine(tmp_path):
    from tests.trainer.data.ingest_helpers import write_itk, write_nifti

    hu = phantom_hu(shape=(12, 10, 6))
    want = nib.as_closest_canonical(nib.Nifti1Image(hu, ras_affine())).affine
    for name, write in (("a.nii.gz", write_nifti), ("b.nrrd", write_itk)):
        (item,) = discover(str(write(tmp_path / name, hu)), tmp_path)
        np.testing.assert_allclose(read_item(item).affine, want, err_msg=name)


# --- SUV --------------------------------------------------------------------------------------------


def _pet(**fields) -> Dataset:
    ds = Dataset()
    for k, v in pet_fields(**fields).items():
        setattr(ds, k, v)
    return ds


def test_suv_start_admin_gml_closed_form():
    w, dose = 70_000.0, 3.7e8  # g, Bq
    # START: decay from the injection (10:00) to the series time (11:00).
    got = suv_bw(_pet(), [{"AcquisitionTime": "110000"}])
    assert got.decay_correction == "START" and got.slice_scale is None
    assert got.factor == pytest.approx(w / (dose * math.exp(-LAM * 3600)), rel=1e-12)
    # A post-processed series whose time is after the acquisition (10:45:30): the acquisition (QIBA).
    got = suv_bw(_pet(SeriesTime="120000"), [{"AcquisitionTime": "104530"}, {"AcquisitionTime": "105000"}])
    assert got.factor == pytest.approx(w / (dose * math.exp(-LAM * 2730)), rel=1e-12)
    # Injection 23:30, series 00:15 the next day, no dates on the injection: across midnight.
    got = suv_bw(_pet(start="233000", series_time="001500"))
    assert got.factor == pytest.approx(w / (dose * math.exp(-LAM * 2700)), rel=1e-12)
    # An explicit injection date-time wins over the start time.
    ds = _pet()
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240102093000"
    assert suv_bw(ds).factor == pytest.approx(w / (dose * math.exp(-LAM * 5400)), rel=1e-12)
    # ADMIN: already corrected to the injection: no decay factor.
    got = suv_bw(_pet(DecayCorrection="ADMIN"))
    assert got.decay_correction == "ADMIN" and got.factor == pytest.approx(w / dose, rel=1e-12)
    assert suv_bw(_pet(Units="GML")).factor == 1.0
    for bad in ({"Units": "CNTS"}, {"PatientWeight": 0}, {"DecayCorrection": "FOO"}, {"Modality": "CT"}):
        assert suv_bw(_pet(**bad)) is None, bad


def test_suv_none_corrects_each_slice_to_the_injection():
    w, dose = 70_000.0, 3.7e8
    ds = _pet(DecayCorrection="NONE")
    # Frame Reference Time: ms after the series time (11:00): 60 s and 300 s after it.
    got = suv_bw(ds, [{"FrameReferenceTime": "60000"}, {"FrameReferenceTime": "300000"}])
    assert got.decay_correction == "NONE" and got.factor == pytest.approx(w / dose, rel=1e-12)
    np.testing.assert_allclose(got.slice_scale, np.exp(LAM * np.array([3660.0, 3900.0])), rtol=1e-9)
    # Acquisition start + the decay-weighted mean time of a 180 s frame (PS3.3 C.8.9.4.1.5 example 2).
    t_ave = math.log(LAM * 180 / (1 - math.exp(-LAM * 180))) / LAM
    assert 89 < t_ave < 90  # sooner than the midpoint
    got = suv_bw(ds, [{"AcquisitionTime": "110300", "ActualFrameDuration": "180000"}])
    # timedelta keeps microseconds: 1e-9 relative
    assert got.slice_scale[0] == pytest.approx(math.exp(LAM * (3780 + t_ave)), rel=1e-9)
    assert suv_bw(ds, [{"AcquisitionTime": "110300"}]).slice_scale[0] == pytest.approx(math.exp(LAM * 3780))
    assert suv_bw(ds, [{}]) is None  # no time for a slice: no SUV
    # Without Decay Correction: Corrected Image without DECY means NONE; with DECY (or absent) START.
    assert decay_correction(_pet(CorrectedImage=["ATTN", "SCAT"])) == "NONE"
    assert decay_correction(_pet(CorrectedImage=["ATTN", "DECY"])) == "START"
    assert decay_correction(_pet()) == "START"


def test_suv_none_series_end_to_end(tmp_path):
    """Two bed positions acquired 3 minutes apart, not decay-corrected: each slice's measured activity
    is the injected-time concentration decayed to its own frame, and SUV undoes exactly that."""
    w, dose, conc = 70_000.0, 3.7e8, 5000.0  # g, Bq, Bq/ml at injection time
    starts, dur = [3600.0] * 4 + [3780.0] * 4, 180.0  # s after the 10:00 injection
    t_ave = math.log(LAM * dur / (1 - math.exp(-LAM * dur))) / LAM
    measured = [conc * math.exp(-LAM * (t + t_ave)) for t in starts]
    stored = [np.full((8, 8), round(m / 0.5), np.int16) for m in measured]
    per = [
        {
            "AcquisitionTime": "110000" if t == 3600 else "110300",
            "ActualFrameDuration": 180000,
            "RescaleSlope": 0.5,
        }
        for t in starts
    ]
    common = pet_fields(DecayCorrection="NONE", PatientWeight=w / 1000, **{"Units": "BQML"})
    write_dicom_slices(
        tmp_path / "p",
        stored,
        [[0, 0, 3.0 * k] for k in range(8)],
        sop_class=PET_IMAGE,
        common=common,
        per_slice=per,
    )
    item = _item(tmp_path / "p")
    for reader in ("simpleitk", "pydicom"):
        vol = read_series(item, reader)
        assert vol.meta["decay_correction"] == "NONE" and vol.meta["reader"] == reader
        suv = vol.data * vol.meta["suv_factor"]
        # Closed form: conc * w / dose on every slice (up to the int16 rounding of the stored values).
        np.testing.assert_allclose(suv, conc * w / dose, rtol=2e-4)
