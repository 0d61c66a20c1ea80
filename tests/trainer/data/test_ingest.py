"""`python -m trainer.ingest` on real files: nilearn's MNI152 T1, nibabel's and pydicom's test images,
plus files written here with nibabel / SimpleITK / pydicom and corrupt ones."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.trainer.data.ingest_helpers import (
    PET_DECAYED,
    pet_header,
    phantom_hu,
    write_dicom_series,
    write_itk,
    write_nifti,
)
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.ingest import SpecError, ingest, load_spec
from voxmix.trainer.data.ingest.pipeline import split_of
from voxmix.trainer.ingest import main as ingest_main

REPO = Path(__file__).resolve().parents[3]
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _spec(tmp: Path, text: str) -> Path:
    p = tmp / "spec.yaml"
    p.write_text(text)
    return p


def expected_ct(hu: np.ndarray, margin=2) -> np.ndarray:
    """Closed form for an LPS-identity geometry: RAS flips axes 0 and 1; window [-1000, 1000]; crop to
    HU > -500 plus the margin."""
    c = hu[::-1, ::-1, :]
    y = np.clip((c + 1000.0) / 2000.0, 0, 1)
    idx = [np.flatnonzero((c > -500).any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    box = tuple(slice(max(0, i[0] - margin), min(n, i[-1] + 1 + margin)) for i, n in zip(idx, c.shape))
    return y[box].astype(np.float16)


def test_every_reader_gives_the_closed_form(tmp_path):
    hu = phantom_hu()
    src = tmp_path / "src"
    src.mkdir()
    write_nifti(src / "a.nii.gz", hu)
    write_nifti(src / "b.nii", hu)
    write_itk(src / "c.nrrd", hu)
    write_itk(src / "d.mha", hu)
    write_dicom_series(src / "series", hu)  # slices written in shuffled order
    spec = _spec(
        tmp_path, "domains:\n  ct: {modality: CT, sources: [src/], spacing: null, val_fraction: 0}\n"
    )
    res = ingest(load_spec(spec), tmp_path / "out", progress=False)
    assert res.failures == [] and res.exit_code == 0
    m = read_manifest(tmp_path / "out")
    assert sorted(r.source for r in m.records) == [
        "src/a.nii.gz",
        "src/b.nii",
        "src/c.nrrd",
        "src/d.mha",
        "src/series",
    ]
    want = expected_ct(hu)
    for r in m.records:
        assert m.abspath(r).read_bytes()[:8] == b"\x93NUMPY\x01\x00"  # .npy format 1.0 (DALI reads it)
        got = np.load(m.abspath(r))
        assert got.dtype == np.float16 and got.flags.c_contiguous, r.source
        assert got.shape == want.shape == r.shape, (r.source, got.shape, want.shape)
        np.testing.assert_array_equal(got, want, err_msg=r.source)
        np.testing.assert_allclose(r.spacing, (0.8, 0.9, 2.5), rtol=1e-5)
        assert r.modality == "CT" and r.split == "train" and len(r.sha256) == 64
        assert r.stats["source_min"] == -1000 and r.stats["max"] == pytest.approx(0.95, abs=1e-3)


def test_resampling_to_target_spacing(tmp_path):
    hu = phantom_hu()
    write_nifti(tmp_path / "a.nii.gz", hu)
    spec = _spec(
        tmp_path,
        "domains:\n  ct: {modality: CT, sources: [a.nii.gz], spacing: [1.6, 1.8, 1.25], margin: 0, min_size: 4}\n",
    )
    assert ingest(load_spec(spec), tmp_path / "out", progress=False).exit_code == 0
    (r,) = read_manifest(tmp_path / "out").records
    ref = expected_ct(hu, margin=0)
    # Halved on two axes, doubled on the third (up to the rounding of the crop edges).
    assert abs(r.shape[0] - ref.shape[0] / 2) <= 1.5 and abs(r.shape[1] - ref.shape[1] / 2) <= 1.5
    assert abs(r.shape[2] - ref.shape[2] * 2) <= 2.5
    np.testing.assert_allclose(r.spacing, (1.6, 1.8, 1.25), rtol=0.05)
    got = np.load(read_manifest(tmp_path / "out").abspath(r)).astype(np.float32)
    assert 0 <= got.min() and got.max() <= 1 and abs(got.mean() - ref.astype(np.float32).mean()) < 0.05


def test_real_mri_template_and_nibabel_images(tmp_path):
    pytest.importorskip("nilearn")
    from nilearn.datasets import load_mni152_template

    mni = load_mni152_template(resolution=2)  # shipped with nilearn, no download
    nib.save(mni, str(tmp_path / "mni.nii.gz"))
    shutil.copy(NIBABEL_DATA / "anatomical.nii", tmp_path / "anatomical.nii")
    spec = _spec(
        tmp_path, "domains:\n  mri_brain: {modality: MRI, sources: ['*.nii*'], spacing: [2, 2, 2]}\n"
    )
    res = ingest(load_spec(spec), tmp_path / "out", progress=False)
    assert res.failures == []
    m = read_manifest(tmp_path / "out")
    rec = next(r for r in m.records if r.source == "mni.nii.gz")
    x = np.load(m.abspath(rec)).astype(np.float32)
    assert x.min() == 0 and x.max() == 1
    # The brain box is cropped from the 99x117x95 grid; the 99.5th foreground percentile maps to 1.
    assert all(s < n for s, n in zip(rec.shape, mni.shape)) and min(rec.shape) > 50
    fg = x > 0
    assert 0.002 < (x[fg] >= 0.999).mean() < 0.02
    assert {r.split for r in m.records} == {"train", "val"}  # >= 2 volumes: one is kept for validation


def test_pydicom_multiframe_and_pet_suv(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "rtdose.dcm")  # real multi-frame (15 frames)
    hu = phantom_hu(shape=(30, 28, 20))
    activity = np.where(hu > -500, 4000.0, 0.0)  # Bq/ml inside the body, 0 outside
    write_dicom_series(tmp_path / "pet", activity, modality="PT", pet=pet_header())
    spec = _spec(
        tmp_path,
        "domains:\n"
        "  dose: {modality: PET, sources: [rtdose.dcm], spacing: null, min_size: 4, margin: 0}\n"
        "  pet: {modality: PET, sources: [pet/], spacing: null, suv_max: 10}\n",
    )
    res = ingest(load_spec(spec), tmp_path / "out", progress=False)
    assert res.failures == []
    m = read_manifest(tmp_path / "out")
    dose = m.select("dose")[0]
    assert dose.shape == (10, 10, 15) and dose.spacing == (10.0, 10.0, 5.0)
    (p,) = m.select("pet")
    assert p.stats["suv"] is True
    suv = 4000.0 * 80000 / PET_DECAYED
    x = np.load(m.abspath(p)).astype(np.float32)
    assert x.max() == pytest.approx(suv / 10, rel=2e-3)


def test_failures_are_listed_and_the_rest_continue(tmp_path):
    from pydicom.data import get_testdata_file

    good = phantom_hu()
    write_nifti(tmp_path / "good.nii.gz", good)
    data = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "corrupt.nii.gz").write_bytes(data[: len(data) // 2])
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan)
    write_nifti(tmp_path / "const.nii.gz", np.full((20, 20, 20), 7.0, np.float32))
    write_nifti(tmp_path / "small.nii.gz", phantom_hu(shape=(40, 36, 24))[:, :, 8:12])
    shutil.copy(NIBABEL_DATA / "example4d.nii.gz", tmp_path / "four_d.nii.gz")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "truncated.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "slice2d.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    spec = _spec(
        tmp_path,
        "domains:\n  ct: {modality: CT, sources: ['*.nii.gz', '*.dcm', notes.txt, missing.nii], spacing: null,"
        " min_size: 8}\n",
    )
    rc = ingest_main(["--spec", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 3
    fails = {
        f["source"]: f
        for f in map(json.loads, (tmp_path / "out" / "failures.jsonl").read_text().splitlines())
    }
    reasons = {s: f["reason"] for s, f in fails.items()}
    assert reasons == {
        "corrupt.nii.gz": "corrupt",
        "nan.nii.gz": "nonfinite",
        "const.nii.gz": "constant",
        "small.nii.gz": "too_small",
        "four_d.nii.gz": "not_3d",
        "truncated.dcm": "truncated",
        "slice2d.dcm": "not_3d",
        "notes.txt": "unreadable",
        "missing.nii": "unreadable",
    }
    assert "not found" in fails["missing.nii"]["detail"] and "unsupported" in fails["notes.txt"]["detail"]
    assert [r.source for r in read_manifest(tmp_path / "out").records] == ["good.nii.gz"]
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_resume_skips_unchanged_and_redoes_changed(tmp_path):
    hu = phantom_hu()
    for n in range(3):
        write_nifti(tmp_path / f"v{n}.nii.gz", np.roll(hu, n, axis=2))
    spec = load_spec(
        _spec(tmp_path, "domains:\n  ct: {modality: CT, sources: ['*.nii.gz'], spacing: null}\n")
    )
    out = tmp_path / "out"
    first = ingest(spec, out, workers=2, progress=False)
    assert len(first.done) == 3 and first.skipped == 0
    text = (out / "manifest.jsonl").read_text()
    again = ingest(spec, out, progress=False)
    assert again.skipped == 3 and (out / "manifest.jsonl").read_text() == text
    write_nifti(tmp_path / "v1.nii.gz", np.roll(hu, 5, axis=2))
    third = ingest(spec, out, progress=False)
    assert third.skipped == 2 and len(third.done) == 3
    rec = next(r for r in read_manifest(out).records if r.source == "v1.nii.gz")
    assert rec.sha256 != next(r for r in first.done if r.source == "v1.nii.gz").sha256


def test_split_is_by_hash_and_deterministic():
    shas = [f"{i * 2654435761 % 2**32:08x}" + "0" * 56 for i in range(2000)]
    val = [s for s in shas if split_of(s, 0.2) == "val"]
    assert 0.17 < len(val) / len(shas) < 0.23
    assert [split_of(s, 0.2) for s in shas] == [split_of(s, 0.2) for s in shas]


@pytest.mark.parametrize(
    "body, expect",
    [
        ("domains:\n  ct: {modality: XR, sources: [a]}\n", "domain 'ct': field 'modality'"),
        ("domains:\n  ct: {modality: CT}\n", "domain 'ct'"),
        ("domains:\n  ct: {modality: CT, sources: [a], window: [100, -100]}\n", "field 'window'"),
        ("domains:\n  ct: {modality: CT, sources: [a], spacing: [1, 0, 1]}\n", "field 'spacing'"),
        ("domains:\n  ct: {modality: CT, sources: [a], val_fraction: 1.5}\n", "field 'val_fraction'"),
        ("domains:\n  ct: {modality: CT, sources: [a], colour: red}\n", "unknown field"),
        ("domains: {}\n", "field 'domains'"),
        ("domains: [\n", "invalid YAML"),
        ("format: voxmix.dataset/2\ndomains:\n  ct: {modality: CT, sources: [a]}\n", "field 'format'"),
    ],
)
def test_bad_spec_exits_2(tmp_path, body, expect, capsys):
    spec = _spec(tmp_path, body)
    with pytest.raises(SpecError, match=expect):
        load_spec(spec)
    assert ingest_main(["--spec", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert expect.split(":")[0] in capsys.readouterr().err


def test_cli_entry_point_and_example_spec(tmp_path):
    """The module runs as `python -m trainer.ingest`; the documented example spec parses."""
    load_spec(REPO / "configs" / "dataset.example.yaml")
    write_nifti(tmp_path / "a.nii.gz", phantom_hu())
    spec = _spec(tmp_path, "domains:\n  ct: {modality: CT, sources: [a.nii.gz], spacing: 1}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.ingest",
            "--spec",
            str(spec),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 volumes" in proc.stdout


def test_downsampling_is_antialiased():
    from voxmix.trainer.data.ingest.preprocess import resample

    stripes = np.where(np.arange(30) % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None, None] * np.ones(
        (30, 4, 4), np.float32
    )
    out, spacing = resample(stripes, (1.0, 1.0, 1.0), (3.0, 1.0, 1.0))
    assert out.shape == (10, 4, 4) and spacing == (3.0, 1.0, 1.0)
    # Without the pre-filter trilinear sampling lands on voxel centres 1, 4, 7, ...: a +-1 alias.
    assert np.abs(out).max() < 0.3


def test_crash_mid_run_keeps_every_record(tmp_path, monkeypatch):
    from voxmix.trainer.data.ingest import pipeline

    hu = phantom_hu()
    for n in range(3):
        write_nifti(tmp_path / f"v{n}.nii.gz", np.roll(hu, n, axis=2))
    spec = load_spec(
        _spec(tmp_path, "domains:\n  ct: {modality: CT, sources: ['*.nii.gz'], spacing: null}\n")
    )
    out = tmp_path / "out"
    ingest(spec, out, progress=False)
    write_nifti(tmp_path / "v0.nii.gz", np.roll(hu, 7, axis=2))  # changed: will be processed again
    calls = []
    real = pipeline.process

    def crashing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies after the first result was checkpointed
        return real(*args)

    monkeypatch.setattr(pipeline, "CHECKPOINT_EVERY", 1)
    monkeypatch.setattr(pipeline, "process", crashing)
    with pytest.raises(KeyboardInterrupt):
        ingest(spec, out, progress=False)
    # The checkpoint holds the new v0 and the untouched v1, v2: nothing is lost or redone.
    assert sorted(r.source for r in read_manifest(out).records) == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    monkeypatch.setattr(pipeline, "process", real)
    assert ingest(spec, out, progress=False).skipped == 3
