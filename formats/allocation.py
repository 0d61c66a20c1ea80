"""The training-data allocation, `voxmix.allocation/1` (docs/formats.md): written by `lawfit allocate`,
read by the trainer and by `lawfit report`.

`validate_allocation` checks the parts every reader relies on (format, integer `budget.samples`,
per-domain `weight` and `samples`); the rest (predicted loss, objective, baselines) is kept untouched in
`Allocation.extra`; `validate_extras` checks those that `lawfit report` reads, where present. Whether a
manifest can serve an allocation is the data loader's question (voxmix.trainer.data.allocation).

`budget.samples` is at most `MAX_SAMPLES`, checked by the reader, the writer and `make_allocation`, so
that a huge budget is refused with a message naming it instead of overflowing an integer or exhausting
memory downstream.
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
MAX_SAMPLES = 2**31 - 1
"""The largest budget an allocation may hold (about 2.1e9 samples, 100x beyond today's largest 3D
pretraining runs). The trainer materialises its whole sample sequence (a domain id and an int32
occurrence number per sample: 6 bytes, 12 GiB at this maximum); beyond it, or beyond int64 (9.2e18), a
budget fails deep in numpy instead of at the option that set it."""


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
    if total > MAX_SAMPLES:
        raise AllocationError(
            f"{where}: field 'budget.samples' {total!r} exceeds the maximum of {MAX_SAMPLES} samples an "
            "allocation may hold (voxmix.formats.allocation.MAX_SAMPLES)"
        )
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


def _at(obj: Any, keys: tuple[str, ...], where: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            raise AllocationError(f"{where}: field '{'.'.join(keys)}' is missing")
        obj = obj[k]
    return obj


def _number_at(obj: Any, keys: tuple[str, ...], where: str) -> float:
    v = _at(obj, keys, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AllocationError(f"{where}: field '{'.'.join(keys)}': expected a finite number, got {v!r}")
    return float(v)


def validate_extras(obj: dict, where: str) -> dict:
    """Check the fields `lawfit allocate` adds and `lawfit report` reads, where present: predicted_loss,
    objective (value, kkt.satisfied), baselines (weights, objective, improvement) and hubs.at_samples,
    each per domain of a validated allocation. Returns `obj` unchanged."""
    doms = sorted(obj["domains"])
    for d in doms if "predicted_loss" in obj else ():
        _number_at(obj, ("predicted_loss", d), where)
    if "objective" in obj:
        _number_at(obj, ("objective", "value"), where)
        if not isinstance(_at(obj, ("objective", "kkt", "satisfied"), where), bool):
            raise AllocationError(f"{where}: field 'objective.kkt.satisfied': expected true or false")
    base = obj.get("baselines", {})
    if not isinstance(base, dict):
        raise AllocationError(f"{where}: field 'baselines': expected an object")
    for name in base:
        for keys in (("objective",), ("improvement", "raw"), ("improvement", "reducible")):
            _number_at(obj, ("baselines", name, *keys), where)
        for d in doms:
            _number_at(obj, ("baselines", name, "domains", d, "weight"), where)
    for d in doms if "hubs" in obj else ():
        _number_at(obj, ("hubs", "at_samples", d), where)
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
    if not is_integral(total) or not 0 <= total <= MAX_SAMPLES:
        raise AllocationError(f"total must be an integer in [0, {MAX_SAMPLES}], got {total!r}")
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
