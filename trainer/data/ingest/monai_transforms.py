"""Ingest's preprocessing as a MONAI `Compose`, for new scans a downstream user feeds to the encoder.

    from voxmix.trainer.data.ingest.monai_transforms import ingest_transforms
    pre = ingest_transforms("dataset.yaml", "ct_abdomen")
    x = pre({"image": "scan.nii.gz"})["image"]  # MetaTensor (1, D, H, W), as the ingest's .npy

The chain per modality (preprocess.py is the definition; a test checks that both give the same array):
    LoadImaged -> Orientationd(RAS) -> ResampleToSpacingd (when the spec has a spacing) ->
    CT:  CropForegroundd(HU > -500, margin) -> ScaleIntensityRanged(window -> [0, 1], clip)
    MRI: RelativeForegroundd -> CropForegroundd(that mask, margin) -> ForegroundPercentileScaled
    PET: PETNormalized: SUV (DICOM metadata, ingest's own suv.suv_bw) -> CropForegroundd(SUV > 0.1)
         -> ScaleIntensityRanged([0, suv_max] -> [0, 1]); without SUV metadata the MRI chain
    -> CastToTyped(spec dtype)

MONAI's own transforms are used except where ingest does something MONAI has no transform for:
- ResampleToSpacingd: ingest keeps each volume's extent (shape round(n * s / t), voxel size n * s / shape,
  torch trilinear with align_corners=False) after a Gaussian pre-filter with an edge-replicating border.
  That is MONAI's `Resize` with a per-volume size, which this computes. MONAI's `Spacing` places voxels
  exactly t apart instead (the grids drift apart by up to (shape - 1) * |t - n * s / shape|, over half a
  voxel on a 40-voxel axis), and `Resize(anti_aliasing=True)` zero-pads its Gaussian (a bright rim on CT,
  whose air is -1000 HU) and takes sigma from the voxel-count ratio. On the test's 0.8x0.9x2.5 mm CT
  resampled to 1.5 mm they differ from ingest by up to 0.54 and 0.056 (of [0, 1]); this: 0.
- RelativeForegroundd / ForegroundPercentileScaled: MONAI's percentile scaling uses the whole volume; ingest
  uses the percentiles of a foreground (3x3x3 mean above 5% of the 99.5th percentile).
- PETNormalized: the per-volume choice between SUV and percentiles, and the SUV factor from DICOM tags.
Ingest's rejections (too_small, constant output, ...) are not repeated: a scan ingest would reject gets an
array anyway, except where the normalization is undefined (no foreground, equal percentiles: ValueError).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resize,
    ScaleIntensityRanged,
)
from scipy import ndimage

from .preprocess import CT_BODY_HU, MRI_FG_FRACTION, PET_SUV_FG
from .spec import DomainSpec, Spec, SpecError, load_spec

# The foreground mask travels in the dictionary between transforms under this key, then is deleted.
MASK_KEY = "_ingest_foreground"


def _above(x, threshold: float):
    """`select_fn` of CropForegroundd (module-level, so a DataLoader can pickle the Compose)."""
    return x > threshold


def relative_foreground(x: np.ndarray) -> np.ndarray:
    """Ingest's MRI/PET foreground of one 3D array: 3x3x3 mean above 5% of the volume's 99.5th percentile
    (the mean first, so that background noise does not scatter voxels over the whole grid)."""
    return ndimage.uniform_filter(x, 3) > MRI_FG_FRACTION * np.percentile(x, 99.5)


def _channels(img) -> np.ndarray:
    return img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)


def _like(img, arr: np.ndarray):
    """`arr` with the metadata (affine, applied operations) of `img`."""
    if isinstance(img, MetaTensor):
        return MetaTensor(
            torch.from_numpy(np.ascontiguousarray(arr)),
            meta=img.meta,
            applied_operations=img.applied_operations,
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


class ResampleToSpacingd(MapTransform):
    """Ingest's resampling (preprocess.resample) of a channel-first MetaTensor: Gaussian pre-filter on the
    downsampled axes (sigma = (t / s - 1) / 2 voxels, scipy, mode "nearest"), then MONAI's Resize to
    round(n * s / t) voxels (trilinear, align_corners=False), which also rescales the affine."""

    def __init__(self, keys: KeysCollection, spacing: Sequence[float], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spacing = tuple(float(t) for t in spacing)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                raise TypeError(
                    f"ResampleToSpacingd: {key!r} must be a MetaTensor with an affine (LoadImaged)"
                )
            src = [float(s) for s in img.pixdim[:3]]
            shape = [max(1, int(round(n * s / t))) for n, s, t in zip(img.shape[1:], src, self.spacing)]
            if shape == list(img.shape[1:]) and np.allclose(src, self.spacing):
                continue
            sigma = [max(0.0, (t / s - 1) / 2) for s, t in zip(src, self.spacing)]
            if any(sg > 0 for sg in sigma):
                arr = _channels(img).astype(np.float32, copy=False)
                img = _like(img, np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest") for c in arr]))
            d[key] = Resize(spatial_size=shape, mode="trilinear", align_corners=False)(img)
        return d


class RelativeForegroundd(MapTransform):
    """The MRI foreground (`relative_foreground`, on the resampled raw intensities) as a new key, for
    CropForegroundd's `source_key` and the percentiles: it must be taken before the crop, on the whole
    volume, as ingest does."""

    def __init__(self, keys: KeysCollection, mask_key: str = MASK_KEY, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            arr = _channels(d[key])
            fg = np.stack([relative_foreground(c) for c in arr])
            if not fg.any():
                raise ValueError(
                    f"{_name(d[key])}: no voxel above {MRI_FG_FRACTION:.0%} of the 99.5th percentile "
                    "(ingest rejects it as no_foreground)"
                )
            d[self.mask_key] = _like(d[key], fg)
        return d


class ForegroundPercentileScaled(MapTransform):
    """clip((x - p_lo) / (p_hi - p_lo), 0, 1) with the percentiles of the voxels in `mask_key`."""

    def __init__(
        self,
        keys: KeysCollection,
        percentiles: Sequence[float],
        mask_key: str = MASK_KEY,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.mask_key = mask_key

    def __call__(self, data):
        d = dict(data)
        fg = _channels(d[self.mask_key]).astype(bool)
        for key in self.key_iterator(d):
            x = _channels(d[key])
            lo, hi = np.percentile(x[fg], self.percentiles)
            if not hi > lo:
                raise ValueError(
                    f"{_name(d[key])}: foreground percentiles {list(self.percentiles)} are equal ({lo}); "
                    "nothing to scale (ingest rejects it as constant)"
                )
            d[key] = _like(d[key], np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))
        return d


def _source(img) -> str | None:
    """The file or folder a MetaTensor was loaded from (LoadImaged's `filename_or_obj`), if any."""
    meta = getattr(img, "meta", None) or {}
    src = meta.get("filename_or_obj")
    return str(src) if src else None


def _name(img) -> str:
    return _source(img) or "the image"


def dicom_suv_factor(path: str | os.PathLike) -> float | None:
    """Ingest's body-weight SUV factor (suv.suv_bw, Decay Correction included) of a DICOM file or a
    folder holding one series; None for other files or incomplete metadata (PET then uses percentiles).

    Raises ValueError for Decay Correction NONE: ingest then scales each slice by its own decay before
    resampling, which this chain does not reproduce."""
    import pydicom

    from .dicom import SLICE_TAGS, header_text
    from .suv import suv_bw

    p = Path(path)
    if p.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        return None
    headers = []
    for f in sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception:  # not DICOM (pydicom raises InvalidDicomError and others): skipped, as ingest
            continue
    if not headers:
        return None
    first = headers[0]
    frames = int(first.get("NumberOfFrames", 1) or 1)
    times = [{kw: header_text(ds.get(kw)) for kw in SLICE_TAGS} for ds in headers] * (
        frames if len(headers) == 1 else 1
    )
    suv = suv_bw(first, times)
    if suv is not None and suv.slice_scale is not None:
        raise ValueError(
            f"{path}: PET with Decay Correction NONE: ingest decay-corrects every slice to the injection "
            "time before resampling, which ingest_transforms does not reproduce; ingest the series instead"
        )
    return None if suv is None else suv.factor


class PETNormalized(MapTransform):
    """PET as ingest does it, per volume: SUV when the source is DICOM with complete SUV metadata (crop to
    SUV > 0.1, [0, suv_max] -> [0, 1]), else the MRI chain (foreground percentiles)."""

    def __init__(self, key: str, spec: DomainSpec):
        super().__init__(key)
        self.key = key
        self.suv = Compose(
            [
                _crop(key, PET_SUV_FG, spec.margin),
                ScaleIntensityRanged(key, a_min=0.0, a_max=spec.suv_max, b_min=0.0, b_max=1.0, clip=True),
            ]
        )
        self.relative = Compose(_relative_chain(key, spec))

    def __call__(self, data):
        d = dict(data)
        source = _source(d[self.key])
        factor = dicom_suv_factor(source) if source else None
        if factor is None:
            return self.relative(d)
        d[self.key] = d[self.key] * factor  # float32 times a Python float, as ingest's x * suv_factor
        return self.suv(d)


def _crop(key: str, threshold: float, margin: int) -> CropForegroundd:
    """Crop to the box of `key > threshold` plus `margin`, clipped to the volume (ingest's foreground_box)."""
    return CropForegroundd(
        key,
        source_key=key,
        select_fn=partial(_above, threshold=threshold),
        margin=margin,
        allow_smaller=True,
    )


def _relative_chain(key: str, spec: DomainSpec) -> list:
    return [
        RelativeForegroundd(key),
        CropForegroundd([key, MASK_KEY], source_key=MASK_KEY, margin=spec.margin, allow_smaller=True),
        ForegroundPercentileScaled(key, spec.percentiles),
        DeleteItemsd(MASK_KEY),
    ]


def domain_spec(
    spec_or_path: Spec | DomainSpec | Mapping | str | os.PathLike, domain: str | None = None
) -> DomainSpec:
    """The DomainSpec named `domain` of a spec (object or YAML path; `domain` may be left out when it has
    one domain), a DomainSpec itself, or one built from a mapping of a spec domain's fields as in the YAML
    (`{"modality": "CT", "spacing": [1.5, 1.5, 1.5], "window": [-1000, 1000]}`; unset fields take
    DomainSpec's defaults, docs/data.md). Raises SpecError naming the spec, domain or field."""
    if isinstance(spec_or_path, DomainSpec):
        if domain is not None and domain != spec_or_path.name:
            raise SpecError(f"domain {domain!r} asked, but the DomainSpec given is {spec_or_path.name!r}")
        return spec_or_path
    if isinstance(spec_or_path, Mapping):
        body = dict(spec_or_path)
        name = str(body.pop("name", None) or domain or "scan")
        body.setdefault("sources", ["(not used)"])  # required by DomainSpec, unused here
        unknown = set(body) - {f.name for f in fields(DomainSpec)}
        if unknown:
            raise SpecError(f"domain {name!r}: unknown field(s) {sorted(unknown)}")
        return DomainSpec(name=name, **body)
    spec = spec_or_path if isinstance(spec_or_path, Spec) else load_spec(spec_or_path)
    names = [d.name for d in spec.domains]
    if domain is None:
        if len(names) == 1:
            return spec.domains[0]
        raise SpecError(f"{spec.path}: name one of its domains {names}")
    if domain not in names:
        raise SpecError(f"{spec.path}: no domain {domain!r}; its domains are {names}")
    return spec.domains[names.index(domain)]


def ingest_transforms(
    spec_or_path: Spec | DomainSpec | Mapping | str | os.PathLike,
    domain: str | None = None,
    *,
    key: str = "image",
    load: bool = True,
) -> Compose:
    """The MONAI Compose equivalent to ingest for one domain of a spec (see `domain_spec` for the forms
    `spec_or_path` takes), on the dictionary entry `key`.

    Input: {key: path}: a NIfTI file, NRRD (pynrrd), a DICOM file or series folder (MONAI's readers; `.mha`
    needs the `itk` package), or with `load=False` a channel-first MetaTensor with its affine. Output:
    {key: MetaTensor (1, D, H, W)} in the spec's dtype, the ingest's `.npy` plus a channel axis; its affine
    is the resampled, cropped geometry. Raises SpecError for an unknown domain."""
    d = domain_spec(spec_or_path, domain)
    chain: list = []
    if load:
        # Nibabel first, as ingest (MONAI would prefer ITK for NIfTI when `itk` is installed); other formats
        # fall through to MONAI's default readers.
        chain.append(
            LoadImaged(
                key, reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32
            )
        )
    # labels=None: the axis codes are read in the MetaTensor's own space (LPS tensors included).
    chain.append(Orientationd(key, axcodes="RAS", labels=None))
    if d.spacing is not None:
        chain.append(ResampleToSpacingd(key, d.spacing))
    if d.modality == "CT":
        # Crop before scaling: the body (HU > -500) is defined on HU, and the scaling is voxel-wise.
        lo, hi = d.window
        chain += [
            _crop(key, CT_BODY_HU, d.margin),
            ScaleIntensityRanged(key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        ]
    elif d.modality == "PET":
        chain.append(PETNormalized(key, d))
    else:
        chain += _relative_chain(key, d)
    chain.append(CastToTyped(key, dtype=getattr(torch, d.dtype)))
    return Compose(chain)
