"""`lawfit plan`: the pilot runs to fit the laws with, inside a fraction of the target budget."""

from __future__ import annotations

import numpy as np

from voxmix.formats.plan import FORMAT

from .errors import LawfitError

# One planned run before it gets its budget: (role, run_id, mixture weights by domain).
_Run = tuple[str, str, dict[str, float]]


def eval_points(budget: int, n: int, span: float = 64.0) -> list[int]:
    """n log-spaced evaluation points from budget/span to budget (distinct integers, the last = budget)."""
    if budget < 1:
        return []
    pts = np.geomspace(max(1.0, budget / span), budget, n)
    return sorted({max(1, int(round(p))) for p in pts} | {int(budget)})


def _check_domains(domains: list[str], unique: dict[str, int]) -> None:
    if not domains:
        raise LawfitError("--domains: give at least one domain")
    if len(set(domains)) != len(domains):
        raise LawfitError(f"--domains: duplicate names in {domains}")
    missing = [d for d in domains if d not in unique]
    if missing:
        raise LawfitError(f"--unique: no unique-sample count for domain(s) {missing} (give d=N for each)")
    extra = sorted(set(unique) - set(domains))
    if extra:
        raise LawfitError(f"--unique: domain(s) {extra} are not in --domains")
    for d, u in unique.items():
        if u <= 0:
            raise LawfitError(f"--unique {d}={u}: must be a positive integer")


def _check_budget(target_budget: int, pilot_fraction: float) -> None:
    if target_budget <= 0:
        raise LawfitError(f"--target-budget must be positive, got {target_budget}")
    if not 0 < pilot_fraction <= 1:
        raise LawfitError(f"--pilot-fraction must be in (0, 1], got {pilot_fraction}")


def _pilot_runs(
    domains: list[str], unique: dict[str, int], n_mix: int, rng: np.random.Generator
) -> list[_Run]:
    m = len(domains)
    runs: list[_Run] = []
    # Single-domain runs identify each domain's own law, and (evaluated on every domain) the transfer to
    # the others; random mixtures fit the joint form; proportional and uniform mixes are held out.
    for d in domains:
        runs.append(("fit", f"pilot-{d}", {x: float(x == d) for x in domains}))
    for a in range(n_mix if m > 1 else 0):
        w = rng.dirichlet(np.ones(m))
        runs.append(("fit", f"pilot-mix{a}", dict(zip(domains, map(float, w)))))
    if m > 1:
        total_u = sum(unique.values())
        runs.append(("validate", "holdout-proportional", {d: unique[d] / total_u for d in domains}))
        runs.append(("validate", "holdout-uniform", {d: 1.0 / m for d in domains}))
    return runs


def _per_run_budget(target_budget: int, pilot_fraction: float, n_runs: int) -> int:
    pilot_total = int(pilot_fraction * target_budget)
    per_run = pilot_total // n_runs
    if per_run < 8:
        raise LawfitError(
            f"pilot budget {pilot_total} samples over {n_runs} runs leaves {per_run} per run; "
            "raise --pilot-fraction or --target-budget"
        )
    return per_run


def _epoch_warnings(
    run_id: str, mix: dict[str, float], per_run: int, unique: dict[str, int], max_epochs: float | None
) -> list[str]:
    if max_epochs is None:
        return []
    return [
        f"run '{run_id}' repeats domain '{d}' beyond {max_epochs} epochs"
        for d, w in mix.items()
        if w * per_run > unique[d] * max_epochs
    ]


def _rounded_mixture(mix: dict[str, float]) -> dict[str, float]:
    out = {d: round(w, 6) for d, w in mix.items()}
    # Rounding to 6 digits must keep weights summing to 1 exactly enough for the trainer's check.
    s = sum(out.values())
    last = max(out, key=out.get)
    out[last] = round(out[last] + 1.0 - s, 6)
    return out


def make_plan(
    domains: list[str],
    unique: dict[str, int],
    target_budget: int,
    pilot_fraction: float,
    *,
    n_mixtures: int | None = None,
    n_evals: int = 8,
    seed: int = 0,
    max_epochs: float | None = None,
) -> dict:
    _check_domains(domains, unique)
    _check_budget(target_budget, pilot_fraction)
    m = len(domains)
    rng = np.random.default_rng(seed)
    n_mix = max(2, m // 2) if n_mixtures is None else n_mixtures
    runs = _pilot_runs(domains, unique, n_mix, rng)
    per_run = _per_run_budget(target_budget, pilot_fraction, len(runs))
    warnings = []
    if target_budget / per_run > 100:
        warnings.append(
            f"each pilot run sees {per_run} samples, {target_budget / per_run:.0f}x less than the "
            "target budget: predictions extrapolate more than 100x"
        )
    out_runs = []
    for i, (role, run_id, mix) in enumerate(runs):
        warnings += _epoch_warnings(run_id, mix, per_run, unique, max_epochs)
        out_runs.append(
            {
                "run_id": run_id,
                "role": role,
                "mixture": _rounded_mixture(mix),
                "budget_samples": per_run,
                "eval_at": eval_points(per_run, n_evals),
                "seed": seed + i,
            }
        )
    return {
        "format": FORMAT,
        "domains": list(domains),
        "unique_samples": dict(unique),
        "target_budget": int(target_budget),
        "pilot_fraction": pilot_fraction,
        "pilot_samples": per_run * len(out_runs),
        "runs": out_runs,
        "warnings": warnings,
    }
