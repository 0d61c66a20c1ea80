import json

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
