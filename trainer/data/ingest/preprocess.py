"""Volume preprocessing: checks, resampling, per-modality normalization, foreground crop.

Normalization maps every modality to [0, 1] with background at 0, so that zero padding of crops (the
loaders) is background in every domain:
- CT: HU window [lo, hi] -> [0, 1] (clipped); foreground = HU > -500 (body, not air).
- MRI: foreground = voxels whose 3x3x3 mean is above 5% of the volume's 99.5th percentile; the foreground's percentiles
  (0.5, 99.5 by default) -> [0, 1] (clipped).
- PET: SUV / suv_max (clipped) when the metadata gives a SUV factor; else as MRI (per volume). Foreground
  = SUV > 0.1 or, without SUV, as MRI.
Resampling is trilinear (torch) on the raw intensities, before normalization, with a Gaussian
pre-filter on the axes being downsampled.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .readers import IngestFailure, Volume
from .spec import DomainSpec

CT_BODY_HU = -500.0
MRI_FG_FRACTION = 0.05
PET_SUV_FG = 0.1


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x.astype(np.float32, copy=False)
    p01, p99 = np.percentile(x, [1, 99])
    return {
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean(dtype=np.float64)),
        "std": float(x.std(dtype=np.float64)),
        "p01": float(p01),
        "p99": float(p99),
    }


def resample(data: np.ndarray, spacing, target) -> tuple[np.ndarray, tuple[float, float, float]]:
    if target is None:
        return data, tuple(spacing)
    shape = [max(1, int(round(n * s / t))) for n, s, t in zip(data.shape, spacing, target)]
    if list(shape) == list(data.shape) and np.allclose(spacing, target):
        return data, tuple(target)
    # Downsampling: a Gaussian pre-filter (sigma = (factor - 1) / 2 voxels, as skimage's anti_aliasing)
    # so that thin bright structures do not alias into speckle at the coarser grid.
    sigma = [max(0.0, (t / s - 1) / 2) for s, t in zip(spacing, target)]
    if any(sg > 0 for sg in sigma):
        data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    import torch  # here: `trainer.ingest` reports a bad spec or --out without torch's import time

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(data))[None, None]
        y = torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=False)
    # The spacing actually achieved (the extent is kept; the rounding of the shape changes it slightly).
    eff = tuple(float(n * s / m) for n, s, m in zip(data.shape, spacing, shape))
    return y[0, 0].numpy(), eff


def _percentile_scale(x: np.ndarray, fg: np.ndarray, pct) -> np.ndarray:
    lo, hi = np.percentile(x[fg], pct)
    if not hi > lo:
        raise IngestFailure("constant", f"foreground percentiles {pct} are equal ({lo}); nothing to scale")
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _fg_relative(x: np.ndarray) -> np.ndarray:
    # A 3x3x3 mean first: magnitude (Rician) noise in the background otherwise passes the threshold in
    # scattered voxels and the foreground box becomes the whole grid.
    return ndimage.uniform_filter(x, 3) > MRI_FG_FRACTION * np.percentile(x, 99.5)


def normalize(
    x: np.ndarray, spec: DomainSpec, suv_factor: float | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(normalized [0, 1] float32, foreground mask, used_suv)."""
    if spec.modality == "CT":
        lo, hi = spec.window
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), x > CT_BODY_HU, False
    if spec.modality == "PET" and suv_factor is not None:
        suv = x * suv_factor
        return np.clip(suv / spec.suv_max, 0.0, 1.0).astype(np.float32), suv > PET_SUV_FG, True
    fg = _fg_relative(x)
    if not fg.any():
        raise IngestFailure("no_foreground", "no voxel above 5% of the 99.5th percentile")
    return _percentile_scale(x, fg, spec.percentiles).astype(np.float32), fg, False


def foreground_box(fg: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    if not fg.any():
        raise IngestFailure("no_foreground", "empty foreground mask")
    box = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(fg.any(axis=other))
        box.append(slice(max(0, idx[0] - margin), min(fg.shape[ax], idx[-1] + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def preprocess(vol: Volume, spec: DomainSpec, *, return_box: bool = False) -> tuple:
    """Checked, resampled, normalized, cropped array in `spec.dtype`; its spacing; statistics; with
    `return_box`, also the crop box (slices of the resampled grid), from which ingest derives the
    written array's affine."""
    data = vol.data
    if data.ndim != 3:
        raise IngestFailure("not_3d", f"expected a 3D volume, got shape {data.shape}")
    if min(data.shape) < 2:
        raise IngestFailure("not_3d", f"shape {data.shape} has a flat axis")
    finite = np.isfinite(data)
    if not finite.all():
        raise IngestFailure("nonfinite", f"{int((~finite).sum())} NaN/Inf voxels")
    src = _stats(data)
    if src["max"] == src["min"]:
        raise IngestFailure("constant", f"every voxel is {src['min']}")
    x, spacing = resample(data, vol.spacing, spec.spacing)
    y, fg, used_suv = normalize(x, spec, vol.meta.get("suv_factor"))
    box = foreground_box(fg, spec.margin)
    y = y[box]
    if min(y.shape) < spec.min_size:
        raise IngestFailure(
            "too_small",
            f"shape {tuple(y.shape)} after resampling and cropping is below min_size {spec.min_size}",
        )
    out = np.ascontiguousarray(y.astype(spec.dtype))
    if out.max() == out.min():
        # E.g. a CT window that excludes every value (wrong modality or units): nothing to learn from.
        raise IngestFailure(
            "constant", f"every voxel is {float(out.min())} after {spec.modality} normalization"
        )
    stats = {**_stats(out), "fg_fraction": float(fg[box].mean()), "suv": used_suv}
    stats.update({f"source_{k}": v for k, v in src.items() if k in ("min", "max", "mean", "std")})
    return (out, spacing, stats, box) if return_box else (out, spacing, stats)
