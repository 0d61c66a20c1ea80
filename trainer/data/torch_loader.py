"""The torch backend: a `torch.utils.data.DataLoader` over the sampler's global positions.

Each worker reads only the crop through a NumPy memory map, then flips and jitters it with the same
parameters as the DALI backend (trainer/data/crops.py). It is the fallback when DALI is not installed
and the reference the DALI backend is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from voxmix.formats.manifest import Manifest

from .crops import CropParams, _mix, crop_params, crop_params_batch, read_crop
from .mixture import MixtureSampler, SampleRef
from .volumes import VolumeError


class SampleParams:
    """Crop parameters of samples: f(sampler's crop seed, loader seed, shape, crop, jitter)."""

    def __init__(self, crop, *, seed: int, augment: bool, jitter: dict[str, tuple[float, float]]):
        self.crop = crop
        self.seed = int(seed)
        self.augment = augment
        self.jitter = jitter
        self._seed_mix = int(_mix(np.asarray([self.seed & (2**64 - 1)], dtype=np.uint64))[0])

    def _jit(self, ref: SampleRef) -> tuple[float, float]:
        return self.jitter.get(ref.domain, self.jitter.get(ref.record.modality, (0.0, 0.0)))

    def batch(self, refs: list[SampleRef]) -> dict[str, np.ndarray]:
        """Vectorized parameters of many samples (start, flip, scale, shift arrays)."""
        seeds = np.asarray([r.crop_seed for r in refs], dtype=np.uint64) ^ np.uint64(self._seed_mix)
        return crop_params_batch(
            np.asarray([r.record.shape for r in refs]).reshape(-1, 3),
            self.crop,
            seeds,
            augment=self.augment,
            jitter=np.asarray([self._jit(r) for r in refs], dtype=np.float64).reshape(-1, 2),
        )

    def __call__(self, ref: SampleRef) -> CropParams:
        seed = ref.crop_seed ^ self._seed_mix
        return crop_params(ref.record.shape, self.crop, seed, augment=self.augment, jitter=self._jit(ref))


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by global sequence position."""

    def __init__(self, manifest: Manifest, sampler: MixtureSampler, params: SampleParams):
        self.manifest = manifest
        self.sampler = sampler
        self.params = params

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(flipped crop (1, cd, ch, cw) in the stored dtype, domain id, (scale, shift))."""
        ref = self.sampler.sample(index)
        p = self.params(ref)
        x = read_crop(self.manifest.abspath(ref.record), p, self.params.crop, ref.record)
        return torch.from_numpy(x)[None], ref.domain_id, torch.tensor([p.scale, p.shift])


def rank_batches(sampler: MixtureSampler, start: int, batch_size: int) -> Iterator[list[int]]:
    """Global positions of this rank's batches from `start`; the last partial global batch is dropped
    so that every rank takes the same number of steps."""
    step = batch_size * sampler.world_size
    for s in range(start, len(sampler) - step + 1, step):
        yield [s + sampler.rank + k * sampler.world_size for k in range(batch_size)]


class _RankBatches:
    """Lazy batch sampler (a list would hold every batch of a long run in memory)."""

    def __init__(self, sampler: MixtureSampler, start: int, batch_size: int):
        self.sampler, self.start, self.batch_size = sampler, start, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        return rank_batches(self.sampler, self.start, self.batch_size)

    def __len__(self) -> int:
        step = self.batch_size * self.sampler.world_size
        return max(0, (len(self.sampler) - self.start) // step)


def torch_batches(
    manifest: Manifest,
    sampler: MixtureSampler,
    params: SampleParams,
    *,
    start: int,
    batch_size: int,
    num_threads: int,
    pin_memory: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of (raw flipped crops, domain ids, (B, 2) scale/shift); the Loader applies the jitter."""
    ds = CropDataset(manifest, sampler, params)
    workers = num_threads if num_threads > 1 else 0
    dl = torch.utils.data.DataLoader(
        ds,
        batch_sampler=_RankBatches(sampler, start, batch_size),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )
    try:
        for x, d, jit in dl:
            yield x, d.to(torch.int64), jit
    except VolumeError as exc:
        # A worker's error comes back with the worker's whole traceback as its message; the user needs the
        # last line only (the file and what is wrong with it).
        text = str(exc)
        if text.startswith("Caught VolumeError"):
            raise VolumeError(text.rstrip().rsplit("VolumeError: ", 1)[-1]) from None
        raise
