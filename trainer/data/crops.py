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

from voxmix.formats.manifest import VolumeRecord

from .volumes import open_volume

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


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic): a counter-based generator, so the
    parameters of any sample are computed directly, vectorized, without a stateful RNG per sample."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seeds: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) doubles, one per seed, independent across `stream` numbers."""
    bits = _mix(seeds ^ _mix(np.full(1, stream, dtype=np.uint64)))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def crop_params_batch(
    shapes: np.ndarray,
    crop: tuple[int, int, int],
    seeds: np.ndarray,
    *,
    augment: bool = True,
    jitter: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Parameters of n samples: start (n, 3) int32, flip (n, 3) int32, scale (n,), shift (n,) float32.

    Uniform crop offset per axis; a volume smaller than the crop lands at a uniform offset inside it.
    `jitter` (n, 2) holds each sample's (scale amplitude, shift amplitude).
    """
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 3)
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    n = len(seeds)
    c = np.asarray(crop, dtype=np.int64)[None, :]
    room = np.abs(shapes - c) + 1  # number of valid offsets per axis
    u = np.stack([_uniform(seeds, k) for k in range(3)], axis=1)
    off = np.minimum(np.floor(u * room).astype(np.int64), room - 1)
    start = np.where(shapes >= c, off, -off).astype(np.int32)
    out = {
        "start": start,
        "flip": np.zeros((n, 3), np.int32),
        "scale": np.ones(n, np.float32),
        "shift": np.zeros(n, np.float32),
    }
    if augment:
        out["flip"] = (np.stack([_uniform(seeds, 3 + k) for k in range(3)], axis=1) < 0.5).astype(np.int32)
        jit = np.zeros((n, 2)) if jitter is None else np.asarray(jitter, dtype=np.float64).reshape(n, 2)
        out["scale"] = (1.0 + (2 * _uniform(seeds, 6) - 1) * jit[:, 0]).astype(np.float32)
        out["shift"] = ((2 * _uniform(seeds, 7) - 1) * jit[:, 1]).astype(np.float32)
    return out


def crop_params(
    shape: tuple[int, int, int],
    crop: tuple[int, int, int],
    seed: int,
    *,
    augment: bool = True,
    jitter: tuple[float, float] = (0.0, 0.0),
) -> CropParams:
    """One sample's parameters (the same numbers as `crop_params_batch`)."""
    p = crop_params_batch(
        np.asarray([shape]),
        crop,
        np.asarray([seed], dtype=np.uint64),
        augment=augment,
        jitter=np.asarray([jitter]),
    )
    return CropParams(
        start=tuple(int(v) for v in p["start"][0]),  # type: ignore[arg-type]
        flip=tuple(bool(v) for v in p["flip"][0]),  # type: ignore[arg-type]
        scale=float(p["scale"][0]),
        shift=float(p["shift"][0]),
    )


def read_roi(
    path: str | Path, params: CropParams, crop: tuple[int, int, int], record: VolumeRecord | None = None
) -> np.ndarray:
    """Read only the crop from a `.npy` through a memory map; zero padding outside the volume. The header
    is checked against `record` (or as a 3D C-order array) first: a VolumeError names a bad file."""
    return _roi(open_volume(path, record), params, crop)


def _roi(vol: np.ndarray, params: CropParams, crop: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(crop, dtype=vol.dtype)
    src, dst = [], []
    for s, c, st in zip(vol.shape, crop, params.start):
        lo, hi = max(st, 0), min(st + c, s)
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def read_crop(
    path: str | Path, params: CropParams, crop: tuple[int, int, int], record: VolumeRecord | None = None
) -> np.ndarray:
    """ROI read and flips in the stored dtype; a crop inside the volume costs one copy (a strided,
    reversed view of the memory map made contiguous). The header is checked as in `read_roi`."""
    vol = open_volume(path, record)
    if all(0 <= st and st + c <= s for s, c, st in zip(vol.shape, crop, params.start)):
        view = vol[tuple(slice(st, st + c) for st, c in zip(params.start, crop))]
        for ax, f in enumerate(params.flip):
            if f:
                view = view[(slice(None),) * ax + (slice(None, None, -1),)]
        return np.array(view, order="C")  # always a copy: never hand out memory of the read-only map
    return flip_array(_roi(vol, params, crop), params)


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
