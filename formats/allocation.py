"""The training-data allocation, `voxmix.allocation/1` (docs/formats.md): written by `lawfit allocate`,
read by the trainer and by `lawfit report`.

`validate_allocation` checks the parts every reader relies on (format, integer `budget.samples`,
per-domain `weight` and `samples`); the rest (predicted loss, objective, baselines) is kept untouched in
`Allocation.extra`. Whether a manifest can serve an allocation is the data loader's question
(voxmix.trainer.data.allocation).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FormatError
from .io import atomic_write_json, read_json

FORMAT = "voxmix.allocation/1"
WEIGHT_TOL = 1e-6


class AllocationError(FormatError):
    """A bad allocation, or one the manifest cannot satisfy; the message names the domain and field."""


def is_integral(x) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and math.isfinite(x) and x == int(x))


def _check_domain(where: str, name: str, entry: Any) -> tuple[float, int]:
    if not isinstance(entry, dict):
        raise AllocationError(f"{where}: domain {name!r}: expected an object with weight and samples")
    w, n = entry.get("weight"), entry.get("samples")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise AllocationError(f"{where}: domain {name!r}: field 'weight' must be finite and >= 0, got {w!r}")
    if not is_integral(n) or n < 0:
        raise AllocationError(f"{where}: domain {name!r}: field 'samples' must be an integer >= 0, got {n!r}")
    return float(w), int(n)


def validate_allocation(obj: Any, where: str) -> dict:
    """Check format, integer `budget.samples`, per-domain `weight` (finite, >= 0, summing to 1) and
    `samples` (integers >= 0 summing to the budget). Returns `obj` unchanged."""
    if not isinstance(obj, dict):
        raise AllocationError(f"{where}: expected a JSON object")
    if obj.get("format") != FORMAT:
        raise AllocationError(f"{where}: field 'format' must be {FORMAT!r}, got {obj.get('format')!r}")
    budget = obj.get("budget")
    if not isinstance(budget, dict) or "samples" not in budget:
        raise AllocationError(f"{where}: field 'budget.samples' is missing")
    total = budget["samples"]
    if not is_integral(total) or total < 0:
        raise AllocationError(f"{where}: field 'budget.samples' must be an integer >= 0, got {total!r}")
    doms = obj.get("domains")
    if not isinstance(doms, dict) or not doms:
        raise AllocationError(f"{where}: field 'domains' must be a non-empty object")
    entries = [_check_domain(where, name, doms[name]) for name in sorted(doms)]
    wsum, nsum = sum(w for w, _ in entries), sum(n for _, n in entries)
    if abs(wsum - 1.0) > WEIGHT_TOL:
        raise AllocationError(
            f"{where}: field 'domains.*.weight' must sum to 1 (tolerance 1e-6), got {wsum!r}"
        )
    if nsum != int(total):
        raise AllocationError(
            f"{where}: field 'domains.*.samples' sums to {nsum}, but 'budget.samples' is {int(total)}"
        )
    return obj


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
    """A validated `voxmix.allocation/1` object as an `Allocation`."""
    validate_allocation(obj, source)
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
    obj = read_json(path, AllocationError)
    return parse_allocation(obj, str(Path(path)))


def write_allocation(path: str | os.PathLike, obj: dict[str, Any] | Allocation) -> Path:
    """Validate, then write atomically (a reader never sees a half-written or invalid allocation)."""
    data = obj.to_json() if isinstance(obj, Allocation) else obj
    validate_allocation(data, str(path))
    return atomic_write_json(path, data)


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
