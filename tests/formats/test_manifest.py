import dataclasses
import json

import numpy as np
import pytest

from tests.trainer.data.data_helpers import manifest_with, record
from voxmix.formats.manifest import FORMAT, ManifestError, read_manifest, write_manifest


def test_roundtrip_and_select(tmp_path):
    recs = [record("ct_abdomen", 2), record("ct_abdomen", 1, split="val"), record("mri_brain", 0)]
    path = write_manifest(tmp_path / "manifest.jsonl", recs, {"spec": "x.yaml"})
    m = read_manifest(tmp_path)  # the folder works too
    assert m.root == tmp_path.resolve() and path.exists()
    assert m.header["format"] == FORMAT and m.header["count"] == 3
    assert sorted(m.records, key=lambda r: r.id) == sorted(recs, key=lambda r: r.id)
    assert m.domains() == ["ct_abdomen", "mri_brain"]
    assert [r.id for r in m.select(domain="ct_abdomen")] == ["ct_abdomen-0001", "ct_abdomen-0002"]
    assert [r.id for r in m.select(domain="ct_abdomen", split="train")] == ["ct_abdomen-0002"]
    assert [r.id for r in m.select(split="train")] == ["ct_abdomen-0002", "mri_brain-0000"]
    assert m.abspath(recs[0]) == tmp_path.resolve() / "ct_abdomen/ct_abdomen-0002.npy"
    # Deterministic bytes: rewriting in another order gives the same file.
    text = path.read_text()
    write_manifest(path, list(reversed(recs)), {"spec": "x.yaml"})
    assert path.read_text() == text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


_EYE = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_subject_and_affine_roundtrip_and_old_records_still_read(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    direction = ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, -1.0))
    rec = dataclasses.replace(
        record("ct", 0),
        spacing=(0.5, 0.75, 2.0),
        subject="ds/sub-01",
        origin=(1.0, -2.0, 3.5),
        direction=direction,
    )
    old = record("ct", 1)
    write_manifest(tmp_path / "manifest.jsonl", [rec, old])
    m = read_manifest(tmp_path)
    assert m["ct-0000"] == rec and m["ct-0001"] == old
    # The affine as nibabel builds one: rotation-zoom = direction scaled by the spacing per column.
    want = np.eye(4)
    want[:3, :3] = np.array(direction) @ np.diag(rec.spacing)
    want[:3, 3] = rec.origin
    np.testing.assert_allclose(m["ct-0000"].affine, want)
    # Unknown geometry and subject are left out, so a manifest written before they existed keeps its
    # bytes, and its records read back with None.
    assert not {"subject", "origin", "direction"} & set(old.to_json())
    assert m["ct-0001"].affine is None and m["ct-0001"].subject is None


def _write_lines(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda r: r.pop("sha256"), "missing field 'sha256'"),
        (lambda r: r.update(modality="XR"), "field 'modality'"),
        (lambda r: r.update(split="test"), "field 'split'"),
        (lambda r: r.update(shape=[8, 8]), "field 'shape'"),
        (lambda r: r.update(shape=[8, 0, 8]), "field 'shape'"),
        (lambda r: r.update(spacing=[1, -1, 1]), "field 'spacing'"),
        (lambda r: r.update(path="../escape.npy"), "field 'path'"),
        (lambda r: r.update(path="/abs.npy"), "field 'path'"),
        (lambda r: r.update(dtype="int8"), "field 'dtype'"),
        (lambda r: r.update(subject=""), "field 'subject'"),
        (lambda r: r.update(origin=[0, 0, 0]), "field 'direction' is missing"),
        (lambda r: r.update(direction=_EYE), "field 'origin' is missing"),
        (lambda r: r.update(origin=[0, 0], direction=_EYE), "field 'origin'"),
        (
            lambda r: r.update(origin=[0, 0, 0], direction=[[2, 0, 0], [0, 1, 0], [0, 0, 1]]),
            "field 'direction'",
        ),
        (lambda r: r.update(origin=[0, 0, 0], direction=[[1, 0], [0, 1]]), "field 'direction'"),
    ],
)
def test_bad_record_names_line_and_field(tmp_path, mutate, expect):
    good = record("ct", 0).to_json()
    bad = record("ct", 1).to_json()
    mutate(bad)
    p = tmp_path / "manifest.jsonl"
    _write_lines(p, [{"format": FORMAT}, good, bad])
    with pytest.raises(ManifestError, match=rf"manifest.jsonl:3: .*{expect}"):
        read_manifest(p)


def test_bad_header_json_and_duplicates(tmp_path):
    p = tmp_path / "manifest.jsonl"
    _write_lines(p, [{"format": "voxmix.manifest/2"}])
    with pytest.raises(ManifestError, match="manifest.jsonl:1: field 'format'"):
        read_manifest(p)
    _write_lines(p, [{"format": FORMAT}, "{not json"])
    with pytest.raises(ManifestError, match="manifest.jsonl:2: invalid JSON"):
        read_manifest(p)
    _write_lines(p, [{"format": FORMAT}, record("ct", 0).to_json(), record("ct", 0).to_json()])
    with pytest.raises(ManifestError, match="duplicate record id 'ct-0000'"):
        read_manifest(p)
    p.write_text("")
    with pytest.raises(ManifestError, match="empty file"):
        read_manifest(p)
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_select_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        manifest_with({"ct": 1}).select(split="test")
