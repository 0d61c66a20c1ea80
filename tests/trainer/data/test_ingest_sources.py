"""Ingest sources beyond globs (nnU-Net v2 dataset.json, nnssl pretrain_data.json), subject-level splits,
and the affine recorded in the manifest, checked against nibabel's own resampling and affines."""

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import rescale_affine
from nibabel.processing import resample_from_to

from tests.trainer.data.data_helpers import record
from tests.trainer.data.ingest_helpers import phantom_hu, write_dicom_series, write_itk, write_nifti
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.ingest import SpecError, ingest, load_spec
from voxmix.trainer.data.ingest.pipeline import _ensure_val, split_key, split_of
from voxmix.trainer.data.ingest.sources import source_jobs
from voxmix.trainer.ingest import main as ingest_main

SMALL = (24, 22, 14)


def _spec(tmp: Path, text: str) -> Path:
    p = tmp / "spec.yaml"
    p.write_text(text)
    return p


def _small(seed=0) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SMALL], indexing="ij")
    body = ((i - 11) / 9) ** 2 + ((j - 11) / 8) ** 2 + ((k - 7) / 5) ** 2 < 1
    x = np.where(body, 40.0 + 20.0 * i + seed, -1000.0).astype(np.float32)
    return x


def _nnunet(root: Path, cases=("case_000", "case_001", "case_002"), channels=("CT", "PET"), **extra) -> Path:
    folder = root / "Dataset042_Test"
    (folder / "imagesTr").mkdir(parents=True)
    for n, case in enumerate(cases):
        for c in range(len(channels)):
            write_nifti(folder / "imagesTr" / f"{case}_{c:04d}.nii", _small(seed=10 * n + c))
    meta = {
        "channel_names": {str(c): name for c, name in enumerate(channels)},
        "labels": {"background": 0, "organ": 1},
        "numTraining": len(cases),
        "file_ending": ".nii",
        **extra,
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def _nnssl(root: Path) -> Path:
    """A Collection as nnssl's raw_dataset.py writes it: two datasets, T1w/T2w, $VAR and relative paths."""
    (root / "raw").mkdir()
    datasets = {}
    n = 0
    for ds in ("Dataset001_A", "Dataset002_B"):
        subjects = {}
        for sub in ("sub-01", "sub-02"):
            sessions = {}
            for ses in ("ses-1", "ses-2"):
                images = []
                for mod in ("T1w", "T2w"):
                    name = f"{ds}_{sub}_{ses}_{mod}.nii"
                    write_nifti(root / "raw" / name, _small(seed=n))
                    n += 1
                    path = f"$NNSSL_TEST_RAW/{name}" if ds.endswith("A") else f"raw/{name}"
                    images.append(
                        {"name": name, "image_path": path, "modality": mod, "associated_masks": None}
                    )
                sessions[ses] = {"session_id": ses, "session_info": None, "images": images}
            subjects[sub] = {"subject_id": sub, "subject_info": {"age": 40}, "sessions": sessions}
        datasets[ds] = {"dataset_index": ds, "name": ds, "dataset_info": None, "subjects": subjects}
    coll = {"collection_index": 1, "collection_name": "TestCollection", "datasets": datasets}
    path = root / "pretrain_data.json"
    path.write_text(json.dumps(coll))
    return path


def test_nnunet_source_takes_the_chosen_channel_with_cases_as_subjects(tmp_path):
    _nnunet(tmp_path)
    spec = _spec(
        tmp_path,
        "domains:\n  pet: {modality: PET, spacing: null, min_size: 4,"
        " sources: [{nnunet: Dataset042_Test, channel: PET}]}\n",
    )
    res = ingest(load_spec(spec), tmp_path / "out", progress=False)
    assert res.failures == []
    recs = sorted(read_manifest(tmp_path / "out").records, key=lambda r: r.source)
    # nnU-Net's naming: {case}_{XXXX}{file_ending}, channel 1 = "PET" in channel_names.
    assert [r.source for r in recs] == [f"Dataset042_Test/imagesTr/case_00{n}_0001.nii" for n in range(3)]
    assert [r.subject for r in recs] == [f"Dataset042_Test/case_00{n}" for n in range(3)]


def test_nnunet_dataset_field_lists_images_relative_to_the_folder(tmp_path, monkeypatch):
    folder = _nnunet(tmp_path, cases=("a",), channels=("CT",))
    (folder / "elsewhere").mkdir()
    write_nifti(folder / "elsewhere" / "x.nii", _small())
    monkeypatch.setenv("NNUNET_TEST_DIR", str(folder / "elsewhere"))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["dataset"] = {
        "x": {"images": ["elsewhere/x.nii"], "label": "labelsTr/x.nii"},
        "y": {"images": ["$NNUNET_TEST_DIR/x.nii"], "label": "labelsTr/y.nii"},
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    spec = load_spec(
        _spec(tmp_path, "domains:\n  ct: {modality: CT, sources: [{nnunet: Dataset042_Test/dataset.json}]}\n")
    )
    jobs = source_jobs(spec)
    # The same file twice (two cases naming it): ingested once, under the first case.
    assert [(item.source, subject) for item, _, subject in jobs] == [
        ("Dataset042_Test/elsewhere/x.nii", "Dataset042_Test/x")
    ]


def test_nnssl_source_with_modality_filter_and_subject_ids(tmp_path, monkeypatch):
    _nnssl(tmp_path)
    monkeypatch.setenv("NNSSL_TEST_RAW", str(tmp_path / "raw"))
    spec = load_spec(
        _spec(
            tmp_path,
            "domains:\n  t1: {modality: MRI, sources: [{nnssl: pretrain_data.json, modalities: [T1w]}]}\n"
            "  t2b: {modality: MRI, sources: [{nnssl: pretrain_data.json, modalities: T2w, datasets: [Dataset002_B]}]}\n",
        )
    )
    jobs = source_jobs(spec)
    t1 = [(i.source, s) for i, d, s in jobs if d.name == "t1"]
    assert len(t1) == 8 and all(src.endswith("_T1w.nii") for src, _ in t1)
    assert t1[0] == ("raw/Dataset001_A_sub-01_ses-1_T1w.nii", "Dataset001_A/sub-01")
    assert {s for _, s in t1} == {
        f"Dataset00{n}_{x}/sub-0{k}" for n, x in ((1, "A"), (2, "B")) for k in (1, 2)
    }
    t2b = [i.source for i, d, _ in jobs if d.name == "t2b"]
    assert t2b == [f"raw/Dataset002_B_sub-0{k}_ses-{s}_T2w.nii" for k in (1, 2) for s in (1, 2)]


def _nnunet_multi(tmp: Path) -> str:
    _nnunet(tmp)
    return "Dataset042_Test"


@pytest.mark.parametrize(
    "setup, source, expect",
    [
        (
            _nnunet_multi,
            "{nnunet: Dataset042_Test}",
            r"dataset.json: 2 channels \(0: CT, 1: PET\): set 'channel'",
        ),
        (
            _nnunet_multi,
            "{nnunet: Dataset042_Test, channel: T1}",
            "field 'channel_names' has no single channel 'T1'",
        ),
        (lambda t: _nnunet(t, file_ending=".png"), "{nnunet: Dataset042_Test}", "field 'file_ending'"),
        (lambda t: _nnunet(t, channel_names=[]), "{nnunet: Dataset042_Test}", "field 'channel_names'"),
        (
            lambda t: (_nnunet(t, channels=("CT",)) / "imagesTr" / "bad.nii").write_bytes(b""),
            "{nnunet: Dataset042_Test}",
            r"imagesTr/bad.nii does not follow nnU-Net's \{case\}_\{XXXX\}.nii",
        ),
        (
            lambda t: (t / "D").mkdir() or (t / "D" / "dataset.json").write_text('{"channel_names": '),
            "{nnunet: D}",
            "D/dataset.json: invalid JSON at line 1",
        ),
        (lambda t: None, "{nnunet: Nowhere}", "Nowhere/dataset.json: file not found"),
        (
            lambda t: (t / "p.json").write_text('{"collection_name": "x"}'),
            "{nnssl: p.json}",
            "missing field 'datasets'",
        ),
        (
            lambda t: (t / "p.json").write_text(
                json.dumps(
                    {
                        "datasets": {
                            "d": {"subjects": {"s": {"sessions": {"1": {"images": [{"image_path": 5}]}}}}}
                        }
                    }
                )
            ),
            "{nnssl: p.json}",
            r"p.json: datasets\['d'\].subjects\['s'\].sessions\['1'\].images\[0\].image_path must be",
        ),
        (
            lambda t: (t / "p.json").write_text(
                json.dumps(
                    {
                        "datasets": {
                            "d": {
                                "subjects": {
                                    "s": {
                                        "sessions": {
                                            "1": {"images": [{"image_path": "$NO_SUCH_VOXMIX_VAR/a.nii"}]}
                                        }
                                    }
                                }
                            }
                        }
                    }
                )
            ),
            "{nnssl: p.json}",
            r"uses \$NO_SUCH_VOXMIX_VAR, which is not set",
        ),
        (
            lambda t: write_nifti(t / "scan.nii", _small()),
            "scan.nii, subject: 'sub-\\d+'",
            "field 'subject' pattern .* finds no subject in 'scan.nii'",
        ),
        (lambda t: None, "{nnunet: D, colour: red}", "unknown key"),
        (lambda t: None, "{nifti: D}", "exactly one of"),
        (lambda t: None, "a.nii, subject: '(x'", "field 'subject' is not a valid regular expression"),
    ],
)
def test_malformed_dataset_files_name_file_and_field(tmp_path, setup, source, expect, capsys):
    setup(tmp_path)
    if ", subject:" in source:
        src, subj = source.split(", subject: ")
        body = f"domains:\n  d: {{modality: CT, sources: [{src}], subject: {subj}}}\n"
    else:
        body = f"domains:\n  d: {{modality: CT, sources: [{source}]}}\n"
    spec = _spec(tmp_path, body)
    with pytest.raises(SpecError, match=expect):
        source_jobs(load_spec(spec))
    assert ingest_main(["--spec", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "voxmix: " in capsys.readouterr().err


def test_split_by_subject_keeps_a_subjects_scans_together():
    rng = np.random.default_rng(0)
    subjects = [f"ds/sub-{n:04d}" for n in range(1000)]
    splits = {s: {split_of(split_key(rng.bytes(32).hex(), s), 0.3) for _ in range(3)} for s in subjects}
    assert all(len(v) == 1 for v in splits.values())
    assert 0.25 < sum(v == {"val"} for v in splits.values()) / len(subjects) < 0.35
    sha = "ab" * 32
    assert split_key(sha, None) == sha  # no subject: the file checksum, as before


def _with(r, **kw):
    return dataclasses.replace(r, **kw)


def test_ensure_val_moves_whole_subjects():
    spec = load_spec_inline({"ct": 0.5})
    # All val: the subject of the largest checksum becomes train with both its scans.
    recs = [_with(record("ct", i, split="val"), subject=f"s{i // 2}") for i in range(4)]
    out = {r.id: (r.subject, r.split) for r in _ensure_val(recs, spec)}
    assert sorted(out.values()) == [("s0", "val"), ("s0", "val"), ("s1", "train"), ("s1", "train")]
    # All train: the subject of the smallest checksum becomes val.
    recs = [_with(r, split="train") for r in recs]
    out = {r.id: (r.subject, r.split) for r in _ensure_val(recs, spec)}
    assert sorted(out.values()) == [("s0", "val"), ("s0", "val"), ("s1", "train"), ("s1", "train")]
    # One subject only: it cannot be in both, so it stays train.
    recs = [_with(record("ct", i), subject="only") for i in range(3)]
    assert {r.split for r in _ensure_val(recs, spec)} == {"train"}


def load_spec_inline(val_fractions: dict[str, float]):
    from voxmix.trainer.data.ingest.spec import DomainSpec, Spec

    doms = [
        DomainSpec(name=d, modality="CT", sources=["x"], val_fraction=v) for d, v in val_fractions.items()
    ]
    return Spec(path=Path("/nonexistent/spec.yaml"), domains=doms)


def test_subject_pattern_split_and_resume(tmp_path):
    """Two scans per subject by a path pattern: same split; the same files without a pattern keep the
    per-file split; adding the pattern later regroups the resumed records without reprocessing."""
    src = tmp_path / "src"
    src.mkdir()
    for n in range(6):
        for ses in (1, 2):
            write_nifti(src / f"sub-{n:02d}_ses-{ses}.nii", _small(seed=3 * n + ses))
    body = "{{modality: CT, sources: ['src/*.nii'], spacing: null, min_size: 4, val_fraction: 0.5{}}}"
    spec = _spec(
        tmp_path,
        "domains:\n  a: "
        + body.format(", subject: '(?P<subject>sub-[0-9]+)_'")
        + "\n  b: "
        + body.format("")
        + "\n",
    )
    res = ingest(load_spec(spec), tmp_path / "out", progress=False)
    assert res.failures == []
    m = read_manifest(tmp_path / "out")
    by_subject: dict[str, set[str]] = {}
    for r in m.select("a"):
        by_subject.setdefault(r.subject, set()).add(r.split)
    assert set(by_subject) == {f"sub-{n:02d}" for n in range(6)}
    assert all(len(v) == 1 for v in by_subject.values()) and {"train", "val"} <= set().union(
        *by_subject.values()
    )
    plain = m.select("b")
    assert all(r.subject is None for r in plain)
    # Without a pattern: split by file checksum (the old rule), unless _ensure_val had to move one.
    moved = sum(r.split != split_of(r.sha256, 0.5) for r in plain)
    assert moved == 0 or {split_of(r.sha256, 0.5) for r in plain} != {"train", "val"}
    spec_b = _spec(tmp_path, "domains:\n  b: " + body.format(", subject: '(sub-[0-9]+)'") + "\n")
    again = ingest(load_spec(spec_b), tmp_path / "out", progress=False)
    assert again.skipped == 12
    groups: dict[str, set[str]] = {}
    for r in read_manifest(tmp_path / "out").select("b"):
        groups.setdefault(r.subject, set()).add(r.split)
    assert len(groups) == 6 and all(len(v) == 1 for v in groups.values())


# --- the affine ---------------------------------------------------------------------------------------

NEEDS = "needs preprocess(return_box=True) (/tmp/h/H4_preprocess.patch) and the readers' Volume affine"


def _oblique(spacing, angle=0.2, origin=(12.5, -30.25, 40.0)) -> np.ndarray:
    """Rotated about z, axes 0/1 swapped and axis 0 flipped: non-canonical and oblique."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    perm = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ perm @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def test_affine_maps_npy_voxels_to_the_source_world_points_cropped(tmp_path):
    """Oblique, non-canonical NIfTI, own spacing, foreground crop: nibabel's nearest-neighbour
    resampling of the source onto the recorded grid gives exactly the `.npy` (after the CT window)."""
    hu = phantom_hu(shape=(30, 26, 14))
    write_nifti(tmp_path / "a.nii", hu, affine=_oblique((1.1, 0.9, 2.0)))
    spec = _spec(
        tmp_path,
        "domains:\n  ct: {modality: CT, sources: [a.nii], spacing: null, dtype: float32, min_size: 4}\n",
    )
    assert ingest(load_spec(spec), tmp_path / "out", progress=False).failures == []
    (r,) = read_manifest(tmp_path / "out").records
    assert r.affine is not None, NEEDS
    aff = np.array(r.affine)
    assert abs(aff[0, 1]) > 0.1  # oblique: the test would miss a dropped rotation otherwise
    ref = resample_from_to(nib.load(tmp_path / "a.nii"), (r.shape, aff), order=0, cval=-1000.0)
    want = np.clip((np.asarray(ref.dataobj) + 1000.0) / 2000.0, 0, 1).astype(np.float32)
    got = np.load(read_manifest(tmp_path / "out").abspath(r))
    np.testing.assert_array_equal(got, want)


def test_affine_after_resampling_matches_nibabel(tmp_path):
    """Flipped, anisotropic, upsampled to a target spacing, no crop (all tissue): the recorded affine is
    nibabel's rescale_affine of the canonical image (odd shapes: its centre voxel is the exact centre),
    and nibabel's trilinear resampling onto it gives the `.npy` inside the one-voxel border."""
    shape = (15, 21, 9)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    hu = (-300.0 + 40 * i - 25 * j + 60 * k).astype(np.float32)  # linear: trilinear is exact on it
    a = np.diag([-1.5, 1.4, -2.5, 1.0])
    a[:3, 3] = (5.0, -7.0, 9.0)
    write_nifti(tmp_path / "b.nii", hu, affine=a)
    spec = _spec(
        tmp_path,
        "domains:\n  ct: {modality: CT, sources: [b.nii], spacing: [0.9, 1.0, 1.5], dtype: float32, min_size: 4}\n",
    )
    assert ingest(load_spec(spec), tmp_path / "out", progress=False).failures == []
    (r,) = read_manifest(tmp_path / "out").records
    assert r.affine is not None, NEEDS
    assert r.shape == (25, 29, 15)
    canon = nib.as_closest_canonical(nib.load(tmp_path / "b.nii"))
    want = rescale_affine(canon.affine, canon.shape, r.spacing, r.shape)
    np.testing.assert_allclose(np.array(r.affine), want, atol=1e-5)
    ref = resample_from_to(nib.load(tmp_path / "b.nii"), (r.shape, np.array(r.affine)), order=1)
    want_x = np.clip((np.asarray(ref.dataobj) + 1000.0) / 2000.0, 0, 1)
    got = np.load(read_manifest(tmp_path / "out").abspath(r))
    np.testing.assert_allclose(got[1:-1, 1:-1, 1:-1], want_x[1:-1, 1:-1, 1:-1], atol=1e-4)


def test_every_reader_records_the_same_affine(tmp_path):
    """One geometry written as NIfTI, NRRD and a DICOM series: one affine (LPS readers converted)."""
    hu = phantom_hu(shape=(20, 18, 8))
    write_nifti(tmp_path / "a.nii", hu)
    write_itk(tmp_path / "b.nrrd", hu)
    write_dicom_series(tmp_path / "series", hu)
    spec = _spec(
        tmp_path,
        "domains:\n  ct: {modality: CT, sources: [a.nii, b.nrrd, series/], spacing: 1.2, min_size: 4}\n",
    )
    assert ingest(load_spec(spec), tmp_path / "out", progress=False).failures == []
    recs = read_manifest(tmp_path / "out").records
    assert len(recs) == 3 and all(r.affine is not None for r in recs), NEEDS
    for r in recs:
        assert r.shape == recs[0].shape
        np.testing.assert_allclose(r.affine, recs[0].affine, atol=1e-4, err_msg=r.source)
