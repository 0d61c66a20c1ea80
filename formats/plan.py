"""The pilot plan, `voxmix.plan/1` (docs/formats.md): written by `lawfit plan` (or a study's own
stages), read by the sweep that runs it.

One reader for both: `read_plan` checks every field the sweep and lawfit rely on and returns typed runs.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .allocation import MAX_SAMPLES
from .errors import FormatError
from .io import atomic_write_json, read_json

FORMAT = "voxmix.plan/1"
ROLES = ("fit", "validate", "final")


class PlanError(FormatError):
    """A plan that does not follow `voxmix.plan/1`; the message names the file and field."""


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    run_id: str
    """Also the run's folder name under the sweep's runs directory."""
    role: str
    """"fit" (the laws are fitted on it), "validate" (held out) or "final" (a study's final runs)."""
    mixture: dict[str, float]
    budget_samples: int
    eval_at: list[int]
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "role": self.role,
            "mixture": dict(self.mixture),
            "budget_samples": self.budget_samples,
            "eval_at": list(self.eval_at),
            "seed": self.seed,
        }


@dataclass(frozen=True, kw_only=True)
class Plan:
    domains: list[str]
    runs: list[PlannedRun]
    source: str = "<memory>"
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other top-level field (unique_samples, target_budget, warnings, ...), kept as written."""

    @property
    def global_batch(self) -> int | None:
        """Samples per optimizer step the plan was made for (every budget and eval point a multiple)."""
        return self.extra.get("global_batch")

    @property
    def design(self) -> str | None:
        """The design that chose the runs ("pairs", "random", "pairs+loo" from `lawfit plan`)."""
        return self.extra.get("design")

    def run(self, run_id: str) -> PlannedRun:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise KeyError(run_id)


def _number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


# A run id becomes a folder name (<runs_dir>/<run_id>), a file name (`_sweep/<run_id>.attempt1.log`) and a
# word of the SLURM script: plain characters only, so that no id can name a path outside the runs folder
# (`../x`, `/abs`, `.`), hide (`.x`), clash with the sweep's own folder (`_sweep`) or read as an option
# (`-x`). The characters are those of lawfit's ids (`pair-ct_chest+mri_brain`, `final-x4-s0`).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=@,-]*")
RUN_ID_MAX = 200  # leaves room for the sweep's suffixes (.failed12, .attempt3.log) within a 255-byte name
# The names the sweep gives the folders it moves aside (resume.py): a plan's run may not take them.
_ASIDE = re.compile(r".*\.(failed|stale)[0-9]+")


def check_run_id(rid: Any, where: str) -> str:
    """`rid` if it is a plain folder name; otherwise a PlanError naming `where` and the value."""
    plain = isinstance(rid, str) and RUN_ID.fullmatch(rid) is not None and len(rid) <= RUN_ID_MAX
    if plain and not _ASIDE.fullmatch(rid):
        return rid
    why = (
        "names ending in .failedN or .staleN are those of the runs the sweep moves aside"
        if plain
        else f"expected a plain name of at most {RUN_ID_MAX} characters: letters, digits and _ . + = @ , - "
        "(not first)"
    )
    raise PlanError(f"{where}: field 'run_id' {rid!r} is not a usable folder name: {why}")


def _check_mixture(mix: Any, domains: list[str] | None, where: str) -> dict[str, float]:
    if not isinstance(mix, dict) or not mix:
        raise PlanError(f"{where}: field 'mixture': expected an object of domain weights")
    unknown = [d for d in mix if domains is not None and d not in domains]
    if unknown:
        raise PlanError(
            f"{where}: field 'mixture': unknown domain(s) {unknown} (the plan's domains: {domains})"
        )
    for d, w in mix.items():
        # Each weight by name: the trainer would refuse a NaN or negative one only at launch.
        if not (_number(w) and w >= 0):
            raise PlanError(f"{where}: field 'mixture.{d}': expected a finite weight >= 0, got {w!r}")
    total = math.fsum(mix.values())
    if total == 0:
        raise PlanError(f"{where}: field 'mixture': every weight is 0 (a run needs a domain to train on)")
    if abs(total - 1) > 1e-6:
        raise PlanError(
            f"{where}: field 'mixture': weights must sum to 1, got {total!r} ({list(mix.values())})"
        )
    return {str(d): float(x) for d, x in mix.items()}


def _parse_run(r: Any, domains: list[str] | None, where: str) -> PlannedRun:
    """One run, checked field by field; with `domains` None, mixture keys are not checked yet."""
    if not isinstance(r, dict):
        raise PlanError(f"{where}: expected an object")
    for key in ("run_id", "mixture", "budget_samples", "eval_at"):
        if key not in r:
            raise PlanError(f"{where}: field '{key}' is missing")
    rid = check_run_id(r["run_id"], where)
    where = f"{where} ({rid!r})"
    mix = _check_mixture(r["mixture"], domains, where)
    budget = r["budget_samples"]
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise PlanError(f"{where}: field 'budget_samples': expected a positive integer, got {budget!r}")
    if budget > MAX_SAMPLES:
        # Each planned run trains on an allocation of its budget: refused here, before the sweep starts
        # anything, rather than by the trainer of that run (or by numpy deep inside it).
        raise PlanError(
            f"{where}: field 'budget_samples' {budget} exceeds the maximum of {MAX_SAMPLES} samples an "
            "allocation may hold (voxmix.formats.allocation.MAX_SAMPLES); plan smaller runs"
        )
    ev = r["eval_at"]
    ints = isinstance(ev, list) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in ev)
    if not ints or ev != sorted(set(ev)):
        raise PlanError(f"{where}: field 'eval_at': expected increasing positive integers, got {ev!r}")
    role, seed = r.get("role", "fit"), r.get("seed", 0)
    if role not in ROLES:
        raise PlanError(f"{where}: field 'role': expected one of {list(ROLES)}, got {role!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PlanError(f"{where}: field 'seed': expected an integer, got {seed!r}")
    return PlannedRun(
        run_id=rid,
        role=role,
        mixture=mix,
        budget_samples=budget,
        eval_at=list(ev),
        seed=seed,
    )


def _check_header(obj: dict, where: str) -> int | None:
    """The optional `design` and `global_batch` fields; returns the global batch (None when absent)."""
    # Optional means absent: a field that is present (even null) must be valid.
    design = obj.get("design")
    if "design" in obj and (not isinstance(design, str) or not design):
        raise PlanError(f"{where}: field 'design': expected a non-empty string, got {design!r}")
    g = obj.get("global_batch")
    if "global_batch" in obj and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise PlanError(f"{where}: field 'global_batch': expected a positive integer, got {g!r}")
    return g


def _check_multiples(run: PlannedRun, g: int, where: str) -> None:
    # The trainer trains whole optimizer steps of g samples: any other count is trained (or evaluated)
    # at a different sample count than planned.
    if run.budget_samples % g:
        raise PlanError(
            f"{where} ({run.run_id!r}): field 'budget_samples' {run.budget_samples} is not a multiple of "
            f"global_batch {g}"
        )
    off = [x for x in run.eval_at if x % g]
    if off:
        raise PlanError(
            f"{where} ({run.run_id!r}): field 'eval_at' {off[0]} is not a multiple of global_batch {g}"
            + (f" ({len(off)} such points: {off})" if len(off) > 1 else "")
        )


def parse_plan(obj: Any, where: str = "<memory>") -> Plan:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise PlanError(f"{where}: field 'format': expected '{FORMAT}', got {got!r}")
    runs = obj.get("runs")
    if not isinstance(runs, list) or not runs:
        raise PlanError(f"{where}: field 'runs': expected a non-empty list")
    domains = obj.get("domains")
    good_domains = isinstance(domains, list) and domains and all(isinstance(d, str) and d for d in domains)
    if not good_domains:
        # Each run's own fields are checked first (the more specific message), then the domain list.
        for i, r in enumerate(runs):
            _parse_run(r, None, f"{where}: runs[{i}]")
        raise PlanError(f"{where}: field 'domains': expected a non-empty list of names")
    g = _check_header(obj, where)
    parsed, seen = [], set()
    for i, r in enumerate(runs):
        run = _parse_run(r, domains, f"{where}: runs[{i}]")
        if g is not None:
            _check_multiples(run, g, f"{where}: runs[{i}]")
        if run.run_id in seen:
            raise PlanError(f"{where}: runs[{i}]: field 'run_id': duplicate id {run.run_id!r}")
        seen.add(run.run_id)
        parsed.append(run)
    extra = {k: v for k, v in obj.items() if k not in ("format", "domains", "runs")}
    return Plan(domains=list(domains), runs=parsed, source=where, extra=extra)


def validate_plan(obj: Any, where: str) -> dict:
    """Check a decoded plan; returns `obj` unchanged."""
    parse_plan(obj, where)
    return obj


def read_plan(path: str | os.PathLike) -> Plan:
    obj = read_json(path, PlanError)
    return parse_plan(obj, str(Path(path)))


def plan_json(plan: Plan) -> dict[str, Any]:
    # The format first, so that `head -c 40 plan.json` says what the file is; runs last (the long part).
    head = {"format": FORMAT, "domains": list(plan.domains)}
    return {**head, **plan.extra, "runs": [r.to_json() for r in plan.runs]}


def write_plan(path: str | os.PathLike, obj: dict[str, Any] | Plan) -> Path:
    """Validate, then write atomically."""
    data = plan_json(obj) if isinstance(obj, Plan) else obj
    validate_plan(data, str(path))
    return atomic_write_json(path, data)
