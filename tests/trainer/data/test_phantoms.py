"""Phantoms: determinism, modality-specific intensities, shared anatomy, and the demo path
phantoms -> ingest -> manifest -> allocation -> sampler -> loader."""

import json

import nibabel as nib
import numpy as np
import torch
from scipy import stats

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


def _volume_stats(domain: str, n: int) -> tuple[np.ndarray, set[int]]:
    """Per-volume (mean, std of the intensity; liver, soft tissue and fat fractions), and all labels seen."""
    rows, labels = [], set()
    for i in range(n):
        img, lab, _ = phantoms.generate(domain, i, size=24, seed=0)
        img = img.astype(np.float64)
        rows.append(
            [
                img.mean(),
                img.std(),
                *((lab == k).mean() for k in (phantoms.LIVER, phantoms.SOFT, phantoms.FAT)),
            ]
        )
        labels |= set(np.unique(lab).tolist())
    return np.array(rows), labels


def test_twin_is_ct_abdomen_drawn_again():
    """The positive control: ct_abdomen_twin has ct_abdomen's distribution but volumes of its own.

    24 volumes of each. Labels: the union of label sets must match; the only label not in every volume is
    the lesion (p = 0.3 per volume), missing from all 24 of one domain with probability 2 x 0.7^24 = 4e-4.
    Distribution: a two-sample Kolmogorov-Smirnov test per per-volume statistic (5 of them, volumes
    independent), each at p > 1e-4: a correct twin fails with probability < 5e-4. The same test does
    reject ct_chest (p ~1e-9 on the mean intensity), so it has the power to see a different generator."""
    ab, lab_ab = _volume_stats("ct_abdomen", 24)
    tw, lab_tw = _volume_stats("ct_abdomen_twin", 24)
    assert lab_tw == lab_ab and phantoms.LESION in lab_ab
    for k in range(ab.shape[1]):
        assert stats.ks_2samp(ab[:, k], tw[:, k]).pvalue > 1e-4, k
    chest, _ = _volume_stats("ct_chest", 24)
    assert stats.ks_2samp(ab[:, 0], chest[:, 0]).pvalue < 1e-4
    # Same modality and spacing; no twin volume repeats an abdomen volume; deterministic.
    assert phantoms.DOMAINS["ct_abdomen_twin"][:2] == phantoms.DOMAINS["ct_abdomen"][:2]
    for i in range(4):
        a, _, _ = phantoms.generate("ct_abdomen", i, size=24, seed=0)
        t, lt, info = phantoms.generate("ct_abdomen_twin", i, size=24, seed=0)
        t2, lt2, _ = phantoms.generate("ct_abdomen_twin", i, size=24, seed=0)
        assert not np.array_equal(a, t) and np.array_equal(t, t2) and np.array_equal(lt, lt2)
        assert info["domain"] == "ct_abdomen_twin" and info["modality"] == "CT"


def test_twin_flows_through_the_cli_and_ingest(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    args = ["--out", str(src), "--domains", "ct_abdomen_twin", "--per-domain", "5", "--size", "24"]
    assert phantoms_cli.main(args) == 0
    rows = [json.loads(x) for x in (src / "phantoms.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"ct_abdomen_twin/ct_abdomen_twin_{i:03d}.nii.gz" for i in range(5)]
    for r in rows[:2]:  # the files hold the generator's volumes
        img, _, _ = phantoms.generate("ct_abdomen_twin", r["index"], size=24, seed=0)
        assert np.array_equal(np.asarray(nib.load(src / r["file"]).dataobj), img)
    res = ingest(load_spec(src / "dataset.yaml"), data, progress=False)
    assert res.failures == []
    m = read_manifest(data)
    assert m.domains() == ["ct_abdomen_twin"] and len(m.select("ct_abdomen_twin")) == 5
    assert {r.modality for r in m.select("ct_abdomen_twin")} == {"CT"}


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
    # Every domain, the twin control included (the command's default leaves the twin out).
    assert (
        phantoms_cli.main(
            ["--out", str(src), "--per-domain", "3", "--size", "40", "--domains", *phantoms.DOMAINS]
        )
        == 0
    )
    res = ingest(load_spec(src / "dataset.yaml"), data, progress=False)
    assert res.failures == []
    m = read_manifest(data)
    assert m.domains() == sorted(phantoms.DOMAINS)
    for d in m.domains():
        assert m.select(d, "train") and m.select(d, "val")
    weights = {"ct_abdomen": 0.26, "ct_abdomen_twin": 0.05, "ct_chest": 0.19, "mri_brain": 0.2}
    alloc = make_allocation({**weights, "mri_abdomen": 0.2, "pet_wholebody": 0.1}, 40)
    loader = build_loader(m, MixtureSampler(alloc, m, seed=0), crop=16, batch_size=5, backend="auto")
    seen = torch.zeros(6, dtype=torch.int64)
    for x, d in loader:
        assert x.shape == (5, 1, 16, 16, 16) and torch.isfinite(x.float()).all()
        seen += torch.bincount(d, minlength=6)
    assert seen.tolist() == [alloc.samples[n] for n in alloc.domains]
    ev = build_eval_set(m, m.domains(), crops_per_domain=2, crop=16, seed=0)
    assert all(v.shape == (2, 1, 16, 16, 16) for v in ev.values())
