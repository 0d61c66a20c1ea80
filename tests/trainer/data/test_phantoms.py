"""Phantoms: determinism, modality-specific intensities, shared anatomy, and the demo path
phantoms -> ingest -> manifest -> allocation -> sampler -> loader."""

import json

import nibabel as nib
import numpy as np
import torch

from voxmix.formats.allocation import make_allocation
from voxmix.formats.manifest import read_manifest
from voxmix.trainer import phantoms as phantoms_cli
from voxmix.trainer.data import phantoms
from voxmix.trainer.data.ingest import ingest, load_spec
from voxmix.trainer.data.loader import build_eval_set, build_loader
from voxmix.trainer.data.mixture import MixtureSampler


def test_deterministic_and_distinct():
    a, la, ia = phantoms.generate("ct_abdomen", 3, size=32, seed=1)
    b, lb, _ = phantoms.generate("ct_abdomen", 3, size=32, seed=1)
    c, _, _ = phantoms.generate("ct_abdomen", 4, size=32, seed=1)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert ia["modality"] == "CT" and a.shape == (32, 32, 32)


def test_modalities_and_shared_anatomy():
    labels = {}
    for d in phantoms.DOMAINS:
        img, lab, info = phantoms.generate(d, 0, size=32, seed=0)
        labels[d] = set(np.unique(lab).tolist())
        if info["modality"] == "CT":
            assert img.min() < -900 and img.max() > 500  # air and bone in HU
        else:
            assert img.min() >= 0
    organs = {phantoms.LIVER, phantoms.KIDNEY, phantoms.SPINE}
    assert organs <= labels["ct_abdomen"] and organs <= labels["mri_abdomen"]
    assert phantoms.SPINE in labels["ct_chest"] and phantoms.LUNG in labels["ct_chest"]
    assert phantoms.LUNG not in labels["ct_abdomen"]
    assert labels["mri_brain"] <= {phantoms.AIR, phantoms.BRAIN, phantoms.LESION}
    assert {phantoms.LIVER, phantoms.BRAIN, phantoms.BLADDER} <= labels["pet_wholebody"]


def test_lesion_flags_match_label_maps(tmp_path):
    assert (
        phantoms_cli.main(
            [
                "--out",
                str(tmp_path),
                "--domains",
                "pet_wholebody,ct_chest",
                "--per-domain",
                "4",
                "--size",
                "24",
                "--labels",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "phantoms.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and any(r["lesion"] for r in rows)
    for r in rows:
        lab = np.asarray(nib.load(tmp_path / r["labels"]).dataobj)
        assert r["lesion"] == bool((lab == phantoms.LESION).any())
        img = nib.load(tmp_path / r["file"])
        assert img.shape == (24, 24, 24) and np.allclose(img.header.get_zooms(), r["spacing"])
    assert phantoms_cli.main(["--out", str(tmp_path), "--domains", "ct_chest", "ct_liver"]) == 2


def test_demo_path_end_to_end(tmp_path):
    """Every phantom domain goes through the real ingest and the real DALI CPU loader."""
    src, data = tmp_path / "src", tmp_path / "data"
    assert phantoms_cli.main(["--out", str(src), "--per-domain", "3", "--size", "40"]) == 0
    res = ingest(load_spec(src / "dataset.yaml"), data, progress=False)
    assert res.failures == []
    m = read_manifest(data)
    assert m.domains() == sorted(phantoms.DOMAINS)
    for d in m.domains():
        assert m.select(d, "train") and m.select(d, "val")
    alloc = make_allocation(
        {"ct_abdomen": 0.31, "ct_chest": 0.19, "mri_brain": 0.2, "mri_abdomen": 0.2, "pet_wholebody": 0.1}, 40
    )
    loader = build_loader(m, MixtureSampler(alloc, m, seed=0), crop=16, batch_size=5, backend="auto")
    seen = torch.zeros(5, dtype=torch.int64)
    for x, d in loader:
        assert x.shape == (5, 1, 16, 16, 16) and torch.isfinite(x.float()).all()
        seen += torch.bincount(d, minlength=5)
    assert seen.tolist() == [alloc.samples[n] for n in alloc.domains]
    ev = build_eval_set(m, m.domains(), crops_per_domain=2, crop=16, seed=0)
    assert all(v.shape == (2, 1, 16, 16, 16) for v in ev.values())
