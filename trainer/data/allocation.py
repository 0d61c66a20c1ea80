"""Can a manifest serve an allocation? Checked before any volume is opened, so that a wrong domain name
or an impossible cap fails in a second rather than hours into a run. The allocation file itself
(`voxmix.allocation/1`) is read and written by voxmix.formats.allocation.
"""

from __future__ import annotations

import math

from voxmix.formats.allocation import Allocation, AllocationError
from voxmix.formats.manifest import Manifest


def validate_allocation(
    alloc: Allocation, manifest: Manifest, *, max_epochs: float | None = None, split: str = "train"
) -> dict[str, int]:
    """Check that `manifest` can serve `alloc`; return the unique samples (train volumes) per domain.

    Unique samples of a domain = its number of volumes in `split` (one epoch shows every volume once;
    crops are random, so volumes x crops is not a meaningful count). With `max_epochs`, a domain whose
    samples exceed volumes x max_epochs is an error.
    """
    if max_epochs is not None and (not math.isfinite(max_epochs) or max_epochs <= 0):
        raise AllocationError(f"max_epochs must be a positive number, got {max_epochs!r}")
    known = set(manifest.domains())
    unique: dict[str, int] = {}
    for d in alloc.domains:
        if d not in known:
            raise AllocationError(
                f"{alloc.source}: domain {d!r} is not in the manifest {manifest.root} "
                f"(it has: {', '.join(sorted(known)) or 'nothing'})"
            )
        n_vol = len(manifest.select(domain=d, split=split))
        unique[d] = n_vol
        if n_vol == 0 and alloc.samples[d] > 0:
            raise AllocationError(
                f"{alloc.source}: domain {d!r} has {alloc.samples[d]} samples allocated "
                f"but no {split!r} volumes in the manifest"
            )
        if max_epochs is not None and alloc.samples[d] > n_vol * max_epochs:
            raise AllocationError(
                f"{alloc.source}: domain {d!r}: field 'samples' = {alloc.samples[d]} exceeds its cap of "
                f"{n_vol} volumes x max_epochs {max_epochs} = {math.floor(n_vol * max_epochs)}"
            )
    return unique
