"""`build_loader` / `build_eval_set`: the trainer's single entry point to the data (docs/interfaces.md).

Backends: "dali" (trainer/data/dali.py; CPU pipelines with `device_id=None`, GPU pipelines on CUDA) and
"torch" (trainer/data/torch_loader.py). "auto" takes DALI when it imports and warns when it falls back.
Both consume the sampler's global sequence the same way (batch_size x world_size positions per step)
and give the same crops for the same positions.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from voxmix.formats.manifest import Manifest, VolumeRecord

from .crops import DEFAULT_JITTER, as_crop, augment_array, crop_params, read_roi
from .mixture import MixtureSampler, crop_seed
from .torch_loader import SampleParams, torch_batches
from .volumes import check_volumes

BACKENDS = ("auto", "dali", "torch")


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """The CPU jitter runs on one thread: torch's OpenMP workers spin after each op and starve the
    loader threads (DALI or DataLoader workers) of the few cores; measured 3x slower with 2 threads."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class Loader:
    """Iterable of (x (B, 1, cd, ch, cw) on `device`, domain_ids (B,) int64) from the sampler's position.

    `state_dict()` holds the global position of the next batch not yet returned: batches that a
    backend prefetched but the caller never received are read again after a restart.
    """

    def __init__(
        self,
        manifest: Manifest,
        sampler: MixtureSampler,
        *,
        crop,
        batch_size: int,
        device: str,
        backend: str,
        dtype: torch.dtype,
        num_threads: int,
        seed: int,
        augment: bool,
        jitter: dict[str, tuple[float, float]] | None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if backend == "auto":
            backend = "dali" if dali_available() else "torch"
            if backend == "torch":
                warnings.warn(
                    "NVIDIA DALI is not installed: using the slower torch DataLoader backend "
                    "(pip install nvidia-dali-cuda120)",
                    stacklevel=3,
                )
        elif backend == "dali" and not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120")
        self.backend = backend
        self.manifest = manifest
        self.sampler = sampler
        self.crop = as_crop(crop)
        self.batch_size = batch_size
        self.dtype = dtype
        self.num_threads = max(1, int(num_threads))
        self.params = SampleParams(
            self.crop, seed=seed, augment=augment, jitter={**DEFAULT_JITTER, **(jitter or {})}
        )
        self.position = sampler.position

    @property
    def step_size(self) -> int:
        return self.batch_size * self.sampler.world_size

    def __len__(self) -> int:
        """Batches left from the current position (the last partial global batch is dropped)."""
        return max(0, (len(self.sampler) - self.position) // self.step_size)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.backend == "dali":
            from .dali import dali_batches

            return dali_batches(
                self.manifest,
                self.sampler,
                self.params,
                start=self.position,
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                device=self.device,
            )
        return torch_batches(
            self.manifest,
            self.sampler,
            self.params,
            start=self.position,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            pin_memory=self.device.type == "cuda",
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, d, jit in self._batches():
            self.position += self.step_size
            self.sampler.position = self.position
            x = x.to(self.device, non_blocking=True)
            # Identity jitter (jitter set to zero) is skipped: on the CPU it is a third of the work.
            if self.params.augment and not (bool((jit[:, 0] == 1).all()) and bool((jit[:, 1] == 0).all())):
                jit = jit.to(self.device, non_blocking=True).view(-1, 2, 1, 1, 1, 1)
                # float32 math, one rounding to the batch dtype: identical on both backends (a GPU may
                # fuse the multiply-add, so CPU and GPU batches can differ in the last bit).
                with _one_cpu_thread(self.device):
                    x = torch.addcmul(jit[:, 1], x.float(), jit[:, 0])
            yield x.to(self.dtype), d.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "position": self.position, "backend": self.backend}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self.position = self.sampler.position


def build_loader(
    manifest: Manifest,
    sampler: MixtureSampler,
    *,
    crop,
    batch_size: int,
    device: str = "cpu",
    backend: str = "auto",
    dtype: torch.dtype = torch.float16,
    num_threads: int = 2,
    seed: int = 0,
    augment: bool = True,
    jitter: dict[str, tuple[float, float]] | None = None,
) -> Loader:
    """See docs/data.md. `jitter` overrides the per-modality intensity jitter, keyed by domain or modality.

    Every training volume the sampler can draw is checked against its manifest record first (header
    only, trainer/data/volumes.py): a bad file stops every rank here, named, before the first step,
    instead of training silently on mismatched data or failing mid-run inside a loader worker."""
    check_volumes(manifest, (r for vols in sampler.volumes.values() for r in vols), purpose="training")
    return Loader(
        manifest,
        sampler,
        crop=crop,
        batch_size=batch_size,
        device=device,
        backend=backend,
        dtype=dtype,
        num_threads=num_threads,
        seed=seed,
        augment=augment,
        jitter=jitter,
    )


def build_eval_set(
    manifest: Manifest, domains, *, crops_per_domain: int, crop, seed: int
) -> dict[str, torch.Tensor]:
    """Fixed crops from each domain's validation volumes, no augmentation; float32 (n, 1, cd, ch, cw).

    Crop i of a domain comes from validation volume i mod V (volumes sorted by id) at an offset drawn
    from (seed, domain, i), so the set depends on nothing else (not on world size or the allocation).
    """
    c = as_crop(crop)
    if crops_per_domain < 1:
        raise ValueError(f"crops_per_domain must be >= 1, got {crops_per_domain}")
    out: dict[str, torch.Tensor] = {}
    used: dict[str, list[VolumeRecord]] = {}
    for d in domains:
        vols = manifest.select(domain=d, split="val")
        if not vols:
            raise ValueError(f"build_eval_set: domain {d!r} has no 'val' volumes in {manifest.root}")
        used[d] = vols
    # The volumes the set reads (crop i comes from volume i mod V), all checked before any is read.
    check_volumes(
        manifest, (v for vols in used.values() for v in vols[:crops_per_domain]), purpose="evaluation"
    )
    for d, vols in used.items():
        dseed = seed ^ zlib.crc32(d.encode())
        crops = np.empty((crops_per_domain, 1, *c), dtype=np.float32)
        for i in range(crops_per_domain):
            rec = vols[i % len(vols)]
            p = crop_params(rec.shape, c, crop_seed(dseed, i), augment=False)
            crops[i, 0] = augment_array(read_roi(manifest.abspath(rec), p, c, rec), p)
        out[d] = torch.from_numpy(crops)
    return out
