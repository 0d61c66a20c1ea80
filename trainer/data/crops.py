"""Crop and augmentation parameters shared by every loader backend.

The parameters of a sample (crop offset, flips, intensity jitter) are a pure function of its crop seed,
the volume shape and the crop size, drawn here once with NumPy. The DALI and torch backends only *apply*
them, so both give the same crops for the same sample (tests compare them), and a restart on another
world size reproduces every crop.

Order of operations, identical in all backends: read the ROI (zero padding where the crop leaves the
volume) -> flips (in the stored dtype, an exact copy) -> on the target device, x * scale + shift in
float32 -> cast to the batch dtype. The jitter runs on the target device because there it is one cheap
elementwise op over the batch, while on the CPU loader threads it would cost three passes per crop
(DALI's CPU arithmetic has no float16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Per-modality intensity jitter (scale amplitude, shift amplitude): x * U(1 - a, 1 + a) + U(-b, b).
# CT intensities are physical (HU), so they move least; MRI and PET scanners differ much more in gain.
DEFAULT_JITTER = {"CT": (0.05, 0.02), "MRI": (0.15, 0.05), "PET": (0.20, 0.05)}


@dataclass(frozen=True, kw_only=True)
class CropParams:
    start: tuple[int, int, int]
    """ROI start per axis; negative when the volume is smaller than the crop (it is then padded)."""
    flip: tuple[bool, bool, bool]
    """Flip along (D, H, W)."""
    scale: float = 1.0
    shift: float = 0.0


def as_crop(crop: int | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    c = (crop, crop, crop) if isinstance(crop, int) else tuple(int(x) for x in crop)
    if len(c) != 3 or any(x <= 0 for x in c):
        raise ValueError(f"crop must be a positive int or three positive ints, got {crop!r}")
    return c  # type: ignore[return-value]


def crop_params(
    shape: tuple[int, int, int],
    crop: tuple[int, int, int],
    seed: int,
    *,
    augment: bool = True,
    jitter: tuple[float, float] = (0.0, 0.0),
) -> CropParams:
    """Uniform crop offset per axis; a volume smaller than the crop lands at a uniform offset inside it."""
    rng = np.random.default_rng(seed)
    start = []
    for s, c in zip(shape, crop):
        if s >= c:
            start.append(int(rng.integers(0, s - c + 1)))
        else:
            start.append(-int(rng.integers(0, c - s + 1)))
    if not augment:
        return CropParams(start=tuple(start), flip=(False, False, False))  # type: ignore[arg-type]
    flip = tuple(bool(b) for b in rng.integers(0, 2, size=3))
    a, b = jitter
    scale = float(1.0 + rng.uniform(-a, a)) if a > 0 else 1.0
    shift = float(rng.uniform(-b, b)) if b > 0 else 0.0
    return CropParams(start=tuple(start), flip=flip, scale=scale, shift=shift)  # type: ignore[arg-type]


def read_roi(path: str | Path, params: CropParams, crop: tuple[int, int, int]) -> np.ndarray:
    """Read only the crop from a `.npy` through a memory map; zero padding outside the volume."""
    vol = np.load(path, mmap_mode="r")
    if vol.ndim != 3:
        raise ValueError(f"{path}: expected a 3D array, got shape {vol.shape}")
    out = np.zeros(crop, dtype=vol.dtype)
    src, dst = [], []
    for s, c, st in zip(vol.shape, crop, params.start):
        lo, hi = max(st, 0), min(st + c, s)
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def flip_array(x: np.ndarray, params: CropParams) -> np.ndarray:
    """Flips, keeping the dtype (the jitter is applied later, on the target device)."""
    axes = tuple(i for i, f in enumerate(params.flip) if f)
    return np.ascontiguousarray(np.flip(x, axis=axes) if axes else x)


def augment_array(x: np.ndarray, params: CropParams) -> np.ndarray:
    """Flips then intensity jitter, in float32 (single samples: the eval set, tests)."""
    y = flip_array(x, params).astype(np.float32)
    if params.scale != 1.0 or params.shift != 0.0:
        y = y * np.float32(params.scale) + np.float32(params.shift)
    return y


def crop_ref(volume: np.ndarray, params: CropParams, crop: tuple[int, int, int]) -> np.ndarray:
    """Reference for tests: pad the whole volume with zeros, slice, flip, jitter (no ROI tricks)."""
    pad = [(max(0, -st), max(0, st + c - s)) for s, c, st in zip(volume.shape, crop, params.start)]
    padded = np.pad(np.asarray(volume, dtype=np.float32), pad)
    lo = [max(st, 0) + p[0] + min(st, 0) for st, p in zip(params.start, pad)]
    sl = padded[lo[0] : lo[0] + crop[0], lo[1] : lo[1] + crop[1], lo[2] : lo[2] + crop[2]]
    for ax, f in enumerate(params.flip):
        if f:
            sl = sl[(slice(None),) * ax + (slice(None, None, -1),)]
    return sl * np.float32(params.scale) + np.float32(params.shift)
