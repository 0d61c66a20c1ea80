"""Label maps land on the ingest grid of their volume; labels.jsonl is validated with named fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxmix.formats.labels import LabelsError, read_labels
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.phantoms import BRAIN, CT_HU, KIDNEY, LIVER, PET_SUV, SOFT


def test_labels_cover_every_phantom_and_match_shapes(phantom_data):
    manifest = read_manifest(phantom_data)
    labels = read_labels(phantom_data)
    assert set(labels.records) == {r.id for r in manifest.records}
    assert set(manifest.domains()) == {"ct_abdomen", "pet_wholebody"}
    for rec in manifest.records:
        lab = labels.label_map(rec.id)
        assert lab.shape == rec.shape and lab.dtype == np.uint8
        assert labels.records[rec.id].classes["lesion"] in (0, 1)
    # Both classes occur in both domains (the classification tasks need them).
    for d in manifest.domains():
        ys = {labels.records[r.id].classes["lesion"] for r in manifest.select(domain=d)}
        assert ys == {0, 1}


def test_label_maps_are_aligned_with_the_intensities(phantom_data):
    """Inside each organ label the ingested CT intensity is that organ's HU in the [-1000, 1000] window:
    a misaligned (shifted, flipped, wrongly cropped) label map would mix organs and fail this."""
    manifest, labels = read_manifest(phantom_data), read_labels(phantom_data)
    for rec in manifest.select(domain="ct_abdomen")[:4]:
        img = np.load(manifest.abspath(rec)).astype(np.float32)
        lab = labels.label_map(rec.id)
        for organ in (LIVER, KIDNEY):  # large organs: blur at their edges does not move the median
            inner = lab == organ
            expect = (CT_HU[organ] + 1000) / 2000
            assert inner.sum() > 20
            assert abs(np.median(img[inner]) - expect) < 0.03, (rec.id, organ)
    for rec in manifest.select(domain="pet_wholebody")[:4]:
        img = np.load(manifest.abspath(rec)).astype(np.float32)
        lab = labels.label_map(rec.id)
        # PET is blurred (small kidneys lose their peak): compare the large regions' means by order
        # instead (brain SUV 7 > liver 2.2 > soft tissue 0.8).
        assert PET_SUV[BRAIN] > PET_SUV[LIVER] > PET_SUV[SOFT]
        assert img[lab == BRAIN].mean() > img[lab == LIVER].mean() > img[lab == SOFT].mean()


def test_bad_labels_file_names_field(tmp_path):
    (tmp_path / "labels.jsonl").write_text(json.dumps({"format": "voxmix.labels/9"}) + "\n")
    with pytest.raises(LabelsError, match="'format'"):
        read_labels(tmp_path)
    head = json.dumps({"format": "voxmix.labels/1", "label_names": ["bg", "x"]})
    (tmp_path / "labels.jsonl").write_text(head + "\n" + json.dumps({"id": "a", "labels": "../x.npy"}) + "\n")
    with pytest.raises(LabelsError, match="line 2: field 'labels'"):
        read_labels(tmp_path)
    (tmp_path / "labels.jsonl").write_text(
        head + "\n" + json.dumps({"id": "a", "classes": {"lesion": "yes"}}) + "\n"
    )
    with pytest.raises(LabelsError, match="line 2: field 'classes'"):
        read_labels(tmp_path)
    (tmp_path / "labels.jsonl").write_text(head + "\n")
    with pytest.raises(LabelsError, match="label 'liver' not in"):
        read_labels(tmp_path).label_id("liver")
