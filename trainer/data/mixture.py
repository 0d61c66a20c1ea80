"""The mixture sampler: allocation + manifest -> one deterministic global sequence of samples.

Position i of the global sequence is a `SampleRef(index, domain, domain_id, record, crop_seed)`; it is a
pure function of (allocation, manifest, seed, i), so every rank of any world size, before or after a
restart, agrees on it. Three layers:

1. Domain schedule: which domain position i belongs to. Earliest-deadline-first over the integer counts
   n_d (total N): the j-th sample of domain d may go at slot t (1-based) only if j <= w_d t + 1
   (release) and must go by the last slot at which j - 1 >= w_d t - 1 still holds (deadline), w_d =
   n_d / N. EDF is optimal for unit jobs with integer release times, and Tijdeman's theorem says a
   sequence with discrepancy < 1 exists, so every prefix of length n holds each domain within 1 of
   w_d n, and the totals are exactly n_d (tests check both exhaustively on small allocations).
2. Volume: the k-th sample of domain d is volume perm_e[k mod V_d] of its train volumes, with a fresh
   permutation per epoch e = k // V_d (seeded by seed, crc32(domain), e). A domain's "unique samples" is
   V_d (docs/data.md).
3. Crop seed: splitmix64(seed, i), so crops do not depend on world size or batch size either.

Sharding: from a start position s, rank r of W takes s + r, s + r + W, ...; after each rank has taken k
samples the global position is s + k W, whatever W was before the restart.
"""

from __future__ import annotations

import heapq
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from voxmix.formats.allocation import Allocation
from voxmix.formats.manifest import Manifest, VolumeRecord

from .allocation import validate_allocation

_MASK64 = (1 << 64) - 1


class SampleRef(NamedTuple):
    index: int
    """Position in the global sequence."""
    domain: str
    domain_id: int
    """Index of `domain` in `Allocation.domains` (sorted names)."""
    record: VolumeRecord
    crop_seed: int
    """Seed in [0, 2**31) for this sample's crop offset, flips and jitter."""


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def crop_seed(seed: int, index: int) -> int:
    return splitmix64(splitmix64(seed & _MASK64) ^ index) >> 33


def low_discrepancy_schedule(counts: list[int]) -> np.ndarray:
    """Domain index of each slot: exactly counts[d] slots of d, every prefix within 1 of its share.

    Integer arithmetic only (no float rounding drift on long budgets). O(N log D).
    """
    total = sum(counts)
    out = np.empty(total, dtype=np.int16 if len(counts) < 2**15 else np.int32)
    if total == 0:
        return out

    # Job j (1-based) of domain d: release ceil((j - 1) N / n_d), deadline floor(j N / n_d) + 1.
    def release(d: int, j: int) -> int:
        return max(1, -(-(j - 1) * total // counts[d]))

    def deadline(d: int, j: int) -> int:
        return j * total // counts[d] + 1

    nxt = [1] * len(counts)
    pending = [(release(d, 1), d) for d in range(len(counts)) if counts[d] > 0]
    heapq.heapify(pending)
    ready: list[tuple[int, int]] = []
    for t in range(1, total + 1):
        while pending and pending[0][0] <= t:
            _, d = heapq.heappop(pending)
            heapq.heappush(ready, (deadline(d, nxt[d]), d))
        # Sum of weights is 1, so some job is always released by slot t (checked, not assumed).
        if not ready:
            raise AssertionError(f"schedule: no domain eligible at slot {t} of {total} for counts {counts}")
        _, d = heapq.heappop(ready)
        out[t - 1] = d
        nxt[d] += 1
        if nxt[d] <= counts[d]:
            heapq.heappush(pending, (release(d, nxt[d]), d))
    return out


class MixtureSampler:
    """The global sample sequence of an allocation over a manifest, sharded by rank; checkpointable."""

    def __init__(
        self,
        allocation: Allocation,
        manifest: Manifest,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        max_epochs: float | None = None,
    ):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.unique_samples = validate_allocation(allocation, manifest, max_epochs=max_epochs, split=split)
        self.allocation = allocation
        self.manifest = manifest
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.split = split
        self.domains = allocation.domains
        self.volumes = {d: manifest.select(domain=d, split=split) for d in self.domains}
        self._schedule = low_discrepancy_schedule([allocation.samples[d] for d in self.domains])
        # Occurrence number of each position within its domain: the k of "k-th sample of domain d".
        self._occurrence = np.empty(
            len(self._schedule), dtype=np.int32 if len(self._schedule) < 2**31 else np.int64
        )
        for i in range(len(self.domains)):
            where = np.flatnonzero(self._schedule == i)
            self._occurrence[where] = np.arange(len(where))
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.position = 0

    def __len__(self) -> int:
        return len(self._schedule)

    def _perm(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        perm = self._perms.get(key)
        if perm is None:
            name = self.domains[d]
            rng = np.random.default_rng([self.seed & _MASK64, zlib.crc32(name.encode()), epoch])
            perm = rng.permutation(len(self.volumes[name]))
            self._perms[key] = perm
            if len(self._perms) > 4 * len(self.domains) + 8:
                self._perms.popitem(last=False)
        else:
            self._perms.move_to_end(key)
        return perm

    def sample(self, index: int) -> SampleRef:
        """The sample at global position `index` (random access, independent of rank and position)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        d = int(self._schedule[index])
        name = self.domains[d]
        k = int(self._occurrence[index])
        n_vol = len(self.volumes[name])
        record = self.volumes[name][int(self._perm(d, k // n_vol)[k % n_vol])]
        return SampleRef(index, name, d, record, crop_seed(self.seed, index))

    def domain_ids(self) -> np.ndarray:
        """Domain id of every global position (a read-only view)."""
        view = self._schedule.view()
        view.flags.writeable = False
        return view

    def rank_indices(self, start: int, count: int | None = None) -> range:
        """Global positions this rank takes when the shared position is `start`."""
        stop = len(self)
        if count is not None:
            stop = min(stop, start + count * self.world_size)
        return range(start + self.rank, stop, self.world_size)

    def __iter__(self) -> Iterator[SampleRef]:
        start = self.position
        for k, i in enumerate(self.rank_indices(start), 1):
            # Advance before yielding: a checkpoint taken after consuming k samples per rank resumes at
            # start + k * world_size on every rank.
            self.position = start + k * self.world_size
            yield self.sample(i)
        self.position = len(self)

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": int(self.position),
            "seed": self.seed,
            "total": len(self),
            "samples": dict(self.allocation.samples),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pos = state.get("position")
        if not isinstance(pos, int) or not 0 <= pos <= len(self):
            raise ValueError(
                f"sampler state: field 'position' must be an int in [0, {len(self)}], got {pos!r}"
            )
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"sampler state: field 'seed' is {state['seed']}, this sampler uses {self.seed}")
        if "samples" in state and state["samples"] != dict(self.allocation.samples):
            raise ValueError(
                "sampler state: field 'samples' (the allocation it was saved with) differs from this "
                "allocation; resuming would not continue the same sequence"
            )
        self.position = pos
