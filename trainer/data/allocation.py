"""The training-data allocation, `voxmix.allocation/1` (written by `lawfit allocate`).

Only the parts the trainer uses are validated here (`budget.samples`, `domains.*.weight`,
`domains.*.samples`); the rest (predicted loss, objective, baselines) is kept untouched in `extra`.
`validate_allocation` checks the allocation against a manifest before any volume is opened, so that a
wrong domain name or an impossible cap fails in a second rather than hours into a run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lawfit.allocate import FORMAT, is_integral
from lawfit.allocate import validate_allocation as check_format
from lawfit.errors import LawfitError

from .manifest import Manifest


class AllocationError(ValueError):
    """A bad allocation, or one the manifest cannot satisfy; the message names the domain and field."""


@dataclass(frozen=True, kw_only=True)
class Allocation:
    domains: list[str]
    """Sorted domain names; batch domain ids index this list."""
    weights: dict[str, float]
    samples: dict[str, int]
    """Integer training samples per domain; they sum to `total`."""
    total: int
    source: str = "<memory>"
    extra: dict[str, Any] = field(default_factory=dict)

    def domain_id(self, name: str) -> int:
        return self.domains.index(name)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "format": FORMAT,
            "budget": {**self.extra.get("budget", {}), "samples": self.total},
            "domains": {d: {"weight": self.weights[d], "samples": self.samples[d]} for d in self.domains},
        }


def parse_allocation(obj: Any, source: str = "<memory>") -> Allocation:
    """Validate a decoded `voxmix.allocation/1` object (the checks live with its writer, lawfit)."""
    try:
        check_format(obj, source)
    except LawfitError as exc:
        raise AllocationError(str(exc)) from None
    doms = obj["domains"]
    extra = {k: v for k, v in obj.items() if k not in ("format", "domains")}
    return Allocation(
        domains=sorted(doms),
        weights={d: float(doms[d]["weight"]) for d in sorted(doms)},
        samples={d: int(doms[d]["samples"]) for d in sorted(doms)},
        total=int(obj["budget"]["samples"]),
        source=source,
        extra=extra,
    )


def read_allocation(path: str | os.PathLike) -> Allocation:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AllocationError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise AllocationError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    return parse_allocation(obj, str(path))


def make_allocation(weights: dict[str, float], total: int) -> Allocation:
    """An allocation from weights and a sample budget (largest-remainder rounding, ties by name).

    For tests, sweeps and single-domain pilots that have no `allocation.json`; `lawfit allocate` is the
    normal producer.
    """
    if not is_integral(total) or total < 0:
        raise AllocationError(f"total must be an integer >= 0, got {total!r}")
    wsum = math.fsum(weights.values())
    if not weights or not math.isfinite(wsum) or wsum <= 0:
        raise AllocationError(f"weights must be non-empty with a positive finite sum, got {weights!r}")
    for d, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise AllocationError(f"domain {d!r}: field 'weight' must be finite and >= 0, got {w!r}")
    norm = {d: w / wsum for d, w in weights.items()}
    exact = {d: norm[d] * total for d in norm}
    counts = {d: int(math.floor(v)) for d, v in exact.items()}
    rest = int(total) - sum(counts.values())
    for d in sorted(norm, key=lambda d: (-(exact[d] - counts[d]), d))[:rest]:
        counts[d] += 1
    return parse_allocation(
        {
            "format": FORMAT,
            "budget": {"samples": int(total)},
            "domains": {d: {"weight": norm[d], "samples": counts[d]} for d in norm},
        }
    )


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
