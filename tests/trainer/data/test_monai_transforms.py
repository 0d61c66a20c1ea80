"""`ingest_transforms` (MONAI Compose) against the ingest itself: the same source files through both give
the same array, for every modality of the phantoms, resampled and not, a non-RAS anisotropic NIfTI and a
PET DICOM series with SUV metadata."""

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from tests.trainer.data.ingest_helpers import pet_header, phantom_hu, write_dicom_series, write_nifti
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.ingest import SpecError, ingest, load_spec
from voxmix.trainer.data.ingest.monai_transforms import domain_spec, ingest_transforms
from voxmix.trainer.data.phantoms import write_dataset

# Both paths give bit-identical arrays here (measured: max |diff| = 0 on every case). The bound allows one
# float16 step at 1.0 (2^-11) on voxels where another CPU's vectorized trilinear kernel rounds the last
# float32 bit differently; a real mismatch is far larger: MONAI's Spacing instead of the extent-keeping
# Resize differs by up to 0.54, Resize's own zero-padded anti-aliasing by 0.056 (on the anisotropic case).
MAX_ABS = 2.0**-11
MAX_DIFFERING = 0.001  # share of voxels allowed to differ at all

SPEC = """\
defaults: {val_fraction: 0, min_size: 4}
domains:
  ct: {modality: CT, sources: [ct_abdomen/*.nii.gz], spacing: null}
  mri: {modality: MRI, sources: [mri_abdomen/*.nii.gz], spacing: null}
  pet: {modality: PET, sources: [pet_wholebody/*.nii.gz], spacing: null}
  ct_resampled: {modality: CT, sources: [ct_abdomen/*.nii.gz], spacing: [4, 7, 5], window: [-200, 300]}
  mri_resampled: {modality: MRI, sources: [mri_abdomen/*.nii.gz], spacing: [4, 7, 5], percentiles: [2, 98]}
  pet_resampled: {modality: PET, sources: [pet_wholebody/*.nii.gz], spacing: [6, 11, 12], dtype: float32}
  ct_oblique_axes: {modality: CT, sources: [permuted.nii.gz], spacing: [1.5, 1.5, 1.5], margin: 3}
  mri_oblique_axes: {modality: MRI, sources: [permuted.nii.gz], spacing: [1.5, 1.2, 2.0]}
  pet_suv: {modality: PET, sources: [pet/], spacing: [2, 2, 2], suv_max: 8}
"""


def _permuted_affine() -> np.ndarray:
    """Array axis 0 -> S (2.5 mm), 1 -> L (0.8 mm), 2 -> P (0.9 mm): RAS needs a transpose and two flips."""
    a = np.zeros((4, 4))
    a[2, 0], a[0, 1], a[1, 2], a[3, 3] = 2.5, -0.8, -0.9, 1.0
    a[:3, 3] = [10.0, 20.0, -30.0]
    return a


def _pet_series(folder: Path) -> None:
    hu = phantom_hu(shape=(30, 28, 20))
    activity = np.where(hu > -500, 4000.0, 0.0) + np.where(hu > 500, 30000.0, 0.0)  # body, hot rod
    # InstanceNumber in slice order: MONAI's PydicomReader stacks by it (ingest by position; docs/data.md).
    write_dicom_series(folder, activity, modality="PT", pet=pet_header(), shuffle=False)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("monai_pre")
    write_dataset(
        root, ["ct_abdomen", "mri_abdomen", "pet_wholebody"], per_domain=1, size=32, seed=0, labels=False
    )
    write_nifti(root / "permuted.nii.gz", phantom_hu(), _permuted_affine())
    _pet_series(root / "pet")
    (root / "spec.yaml").write_text(SPEC)
    spec = load_spec(root / "spec.yaml")
    res = ingest(spec, root / "out", progress=False)
    assert res.failures == []
    return spec, read_manifest(root / "out")


def test_compose_gives_the_ingest_array(ingested):
    spec, manifest = ingested
    assert len(manifest.records) == 9
    suv = {r.domain: r.stats["suv"] for r in manifest.records}
    assert suv["pet_suv"] is True and suv["pet"] is False  # both PET branches are exercised
    for r in manifest.records:
        want = np.load(manifest.abspath(r))
        out = ingest_transforms(spec, r.domain)({"image": str(spec.base / r.source)})["image"]
        assert isinstance(out, MetaTensor) and out.shape == (1, *want.shape), (
            r.domain,
            out.shape,
            want.shape,
        )
        assert out.dtype == getattr(torch, r.dtype), r.domain
        got = out[0].numpy()
        diff = np.abs(got.astype(np.float32) - want.astype(np.float32))
        assert diff.max() <= MAX_ABS and (diff > 0).mean() <= MAX_DIFFERING, (
            f"{r.domain}: max |diff| {diff.max():.3g}, mean {diff.mean():.3g}, "
            f"first at {np.unravel_index(diff.argmax(), diff.shape)}"
        )
        # The output's geometry is the ingest's voxel size (resampling keeps the extent).
        np.testing.assert_allclose(out.pixdim[:3].numpy(), r.spacing, rtol=1e-5, err_msg=r.domain)


def test_settings_mapping_and_a_loaded_metatensor(ingested):
    """The domain's settings as a plain mapping (no spec file), on an image the user loaded already."""
    spec, manifest = ingested
    (r,) = manifest.select("ct_oblique_axes")
    img = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(str(spec.base / r.source))
    settings = {"modality": "CT", "spacing": [1.5, 1.5, 1.5], "margin": 3}
    out = ingest_transforms(settings, key="ct", load=False)({"ct": img})["ct"]
    np.testing.assert_array_equal(out[0].numpy(), np.load(manifest.abspath(r)))


def test_domain_is_checked(ingested):
    spec, _ = ingested
    with pytest.raises(SpecError, match=r"no domain 'liver'; its domains are \['ct', 'mri'"):
        ingest_transforms(spec, "liver")
    with pytest.raises(SpecError, match="name one of its domains"):
        ingest_transforms(spec.path)
    with pytest.raises(SpecError, match=r"domain 'scan': unknown field\(s\) \['windw'\]"):
        ingest_transforms({"modality": "CT", "windw": [0, 1]})
    with pytest.raises(SpecError, match="field 'window' must be"):
        ingest_transforms({"modality": "CT", "window": [1, 0]})
    d = spec.domains[0]
    assert domain_spec(d) is d and domain_spec(spec.path, "pet").modality == "PET"


def test_pet_decay_correction_none_is_refused(tmp_path):
    """Decay Correction NONE: ingest corrects each slice by its own time; the chain says it cannot."""
    pet = {**pet_header(), "AcquisitionTime": "110000", "DecayCorrection": "NONE"}
    write_dicom_series(tmp_path / "pet", np.full((8, 6, 3), 1000.0), modality="PT", pet=pet)
    settings = {"modality": "PET", "spacing": None}
    with pytest.raises(RuntimeError) as info:  # MONAI wraps a transform's error in "applying transform"
        ingest_transforms(settings)({"image": str(tmp_path / "pet")})
    assert isinstance(info.value.__cause__, ValueError)
    assert "Decay Correction NONE" in str(info.value.__cause__)
