"""`lawfit plan`: the pilot runs to fit the laws with (docs/lawfit.md, "Planning pilots").

Designs (docs/notes/law_study_2026-11-28.md, Q3): "pairs" (the default) = every single-domain run + 50/50
pairwise mixtures + held-out mixtures far apart; "pairs+loo" adds leave-one-out mixtures; "random" is the
earlier design (singles + random mixtures + proportional/uniform holdouts), kept for comparison. Every
budget and evaluation point is a positive multiple of the trainer's global batch: the trainer trains whole
optimizer steps only, so any other count would be trained (or evaluated) at a different sample count than
planned, and the sweep would refuse the finished run.
"""

from __future__ import annotations

import re

import numpy as np

from voxmix.formats.allocation import MAX_SAMPLES
from voxmix.formats.plan import FORMAT

from .design import identifies
from .errors import LawfitError

DESIGNS = ("pairs", "random", "pairs+loo")
MAX_ALL_PAIRS = 6
"""Up to this many domains every pair is planned (15 pairs at 6); above, 2m sampled pairs."""
HOLDOUT_TV = 0.3
"""Minimum total-variation distance between held-out mixtures: closer ones are near-replicates."""
SKEW_ALPHA = 0.5
"""Dirichlet concentration of the skewed holdouts (< 1: mass on few domains)."""
SKEW_TRIES = 1000
NEAR_FIT_TV = 0.1
# A domain name becomes part of run ids (`pilot-<d>`, `pair-<a>+<b>`), i.e. of folder names: the
# characters of the ingest spec's domain names.
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A held-out mixture this close to a fitted one validates little: warned."""

# One planned run before it gets its budget: (role, run_id, mixture weights by domain).
_Run = tuple[str, str, dict[str, float]]


def eval_points(
    budget: int, n: int, span: float = 64.0, *, multiple: int = 1, first: int | None = None
) -> list[int]:
    """n log-spaced evaluation points up to `budget` (a multiple of `multiple`), each a positive multiple
    of `multiple`, distinct, the last = budget; fewer than n where rounding merges points.

    Start: `first` rounded UP to a multiple (a floor, e.g. past the warm-up plateau), else budget/span
    (at least one multiple); the others are rounded to the nearest multiple. With multiple 1 and no
    `first`, these are the points lawfit planned before the global batch existed.
    """
    if budget < 1:
        return []
    if n <= 1:
        return [int(budget)]
    g = multiple
    lo = max(float(g), budget / span) if first is None else float(-(-first // g) * g)
    pts = np.geomspace(min(lo, budget), budget, n)
    return sorted({g * max(1, int(round(p / g))) for p in pts} | {int(budget)})


def tv_distance(p: dict[str, float] | np.ndarray, q: dict[str, float] | np.ndarray) -> float:
    """Total-variation distance between two mixtures: half the L1 distance of the weights."""
    if isinstance(p, dict):
        keys = sorted(set(p) | set(q))
        p, q = np.array([p.get(k, 0.0) for k in keys]), np.array([q.get(k, 0.0) for k in keys])
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def _check_domains(domains: list[str], unique: dict[str, int]) -> None:
    if not domains:
        raise LawfitError("--domains: give at least one domain")
    if len(set(domains)) != len(domains):
        raise LawfitError(f"--domains: duplicate names in {domains}")
    bad = [d for d in domains if not DOMAIN_NAME.fullmatch(d)]
    if bad:
        raise LawfitError(
            f"--domains {bad[0]!r}: a domain name is letters, digits and _ . - (not first); it becomes "
            "part of the runs' folder names"
        )
    missing = [d for d in domains if d not in unique]
    if missing:
        raise LawfitError(f"--unique: no unique-sample count for domain(s) {missing} (give d=N for each)")
    extra = sorted(set(unique) - set(domains))
    if extra:
        raise LawfitError(f"--unique: domain(s) {extra} are not in --domains")
    for d, u in unique.items():
        if u <= 0:
            raise LawfitError(f"--unique {d}={u}: must be a positive integer")


def _positive_int(opt: str, value, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LawfitError(f"{opt} must be a positive integer, got {value!r}")


def _check_options(target_budget, pilot_fraction, design, global_batch, pilot_samples, first_eval, n_evals):
    if design not in DESIGNS:
        raise LawfitError(f"--design must be one of {list(DESIGNS)}, got {design!r}")
    if not 0 < target_budget <= MAX_SAMPLES:
        raise LawfitError(
            f"--target-budget must be in [1, {MAX_SAMPLES}] (the most samples an allocation may hold, "
            f"voxmix.formats.allocation.MAX_SAMPLES), got {target_budget}"
        )
    # pilot_samples replaces the fraction: an unused --pilot-fraction is not checked.
    if pilot_samples is None and not 0 < pilot_fraction <= 1:
        raise LawfitError(f"--pilot-fraction must be in (0, 1], got {pilot_fraction}")
    _positive_int("--global-batch", global_batch, optional=False)
    _positive_int("--pilot-samples", pilot_samples)
    if pilot_samples is not None and pilot_samples > MAX_SAMPLES:
        raise LawfitError(f"--pilot-samples must be at most {MAX_SAMPLES}, got {pilot_samples}")
    _positive_int("--first-eval", first_eval)
    _positive_int("--evals", n_evals, optional=False)


def pair_indices(m: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The planned pairs (i < j) of m domains: all of them up to MAX_ALL_PAIRS domains, else 2m.

    Above 6 domains all m(m-1)/2 pairs cost too much (28 at 8, 45 at 10). 2m pairs keep the fitted runs
    at 3m (m singles + 2m pairs), the ratio of the full design at m = 5 (15 runs) and continuous with it
    at m = 6 -> 7 (21 runs each), and above the 2m a transfer form needs (`_transfer_warning`). The pairs
    are a random cycle through all domains (each domain in 2 pairs, and the pair graph connected, so
    every domain's transfer is tied to every other's through mixtures), plus m more drawn uniformly from
    the remaining pairs: each domain is in at least 2 pairs, 4 on average.
    """
    every = [(i, j) for i in range(m) for j in range(i + 1, m)]
    if m <= MAX_ALL_PAIRS:
        return every
    perm = [int(x) for x in rng.permutation(m)]
    cycle = {tuple(sorted((perm[k], perm[(k + 1) % m]))) for k in range(m)}
    rest = [p for p in every if p not in cycle]
    extra = {rest[int(k)] for k in rng.choice(len(rest), size=m, replace=False)}
    return sorted(cycle | extra)


def fallback_skewed(prop: np.ndarray) -> list[np.ndarray]:
    """Two deterministic skewed mixtures at total-variation distance >= 0.3 from `prop` and each other.

    m >= 3: 0.85 on each of the two domains with the smallest proportional share (p1 <= p2 <= 1/2), 0.15
    spread over the rest: TV to prop >= 0.85 - 1/2 = 0.35, to each other 0.85 - 0.15/(m-1) >= 0.775, and
    >= 0.15 from every single, pair and leave-one-out mixture. m = 2 (a = the smaller share, <= 1/2): 0.97
    on it (TV >= 0.47), the second at (a + 0.97)/2 if a <= 0.35 (TV >= 0.31 to both), else 0.03 (TV
    a - 0.03 > 0.32 to prop, 0.94 to the first); on one axis these may lie near a fitted run (warned).
    """
    m = len(prop)
    order = np.argsort(prop, kind="stable")
    if m == 2:
        j, a = int(order[0]), float(prop[order[0]])
        firsts = [0.97, (a + 0.97) / 2 if a <= 0.35 else 0.03]
        return [np.array([f, 1 - f]) if j == 0 else np.array([1 - f, f]) for f in firsts]
    out = []
    for j in order[:2]:
        w = np.full(m, 0.15 / (m - 1))
        w[j] = 0.85
        out.append(w)
    return out


def skewed_mixtures(
    prop: np.ndarray, fits: list[np.ndarray], rng: np.random.Generator
) -> tuple[list[np.ndarray], bool]:
    """Two Dirichlet(0.5) draws, each accepted once at TV >= HOLDOUT_TV from `prop` and from the draw
    accepted before, and >= NEAR_FIT_TV from every fitted mixture in `fits` (a draw next to a single run
    would validate nothing); after SKEW_TRIES draws without both, `fallback_skewed` (flag True)."""
    chosen: list[np.ndarray] = []
    for _ in range(SKEW_TRIES):
        w = rng.dirichlet(np.full(len(prop), SKEW_ALPHA))
        # The margin keeps the distance >= HOLDOUT_TV after plan.json's 6-digit rounding of weights.
        far = all(tv_distance(w, x) >= HOLDOUT_TV + 1e-4 for x in (prop, *chosen))
        if far and all(tv_distance(w, f) >= NEAR_FIT_TV for f in fits):
            chosen.append(w)
            if len(chosen) == 2:
                return chosen, False
    return fallback_skewed(prop), True


def _pairs_design(
    domains: list[str], unique: dict[str, int], loo: bool, rng: np.random.Generator
) -> tuple[list[_Run], list[str]]:
    m, warnings = len(domains), []
    runs: list[_Run] = [("fit", f"pilot-{d}", {x: float(x == d) for x in domains}) for d in domains]
    if m == 1:
        return runs, warnings
    # Pairwise 50/50 mixtures identify transfer in both directions of each pair (law study Q3).
    for i, j in pair_indices(m, rng):
        a, b = domains[i], domains[j]
        runs.append(("fit", f"pair-{a}+{b}", {x: 0.5 * (x in (a, b)) for x in domains}))
    if loo:
        for d in domains:
            mix = {x: float(x != d) / (m - 1) for x in domains}
            same = [rid for _, rid, w in runs if tv_distance(w, mix) < 1e-9]
            if same:  # m = 2: the other domain's single run; m = 3: the other two's pair
                warnings.append(f"leave-one-out mixture without '{d}' is run {same[0]!r}: not planned twice")
            else:
                runs.append(("fit", f"loo-{d}", mix))
    fits = [np.array([w[d] for d in domains]) for _, _, w in runs]
    total_u = sum(unique.values())
    prop = np.array([unique[d] / total_u for d in domains])
    runs.append(("validate", "holdout-proportional", dict(zip(domains, map(float, prop)))))
    skewed, fell_back = skewed_mixtures(prop, fits, rng)
    if fell_back:
        warnings.append(
            f"no two Dirichlet({SKEW_ALPHA}) draws in {SKEW_TRIES} were at total-variation distance "
            f">= {HOLDOUT_TV} from the proportional mixture and each other (and >= {NEAR_FIT_TV} from "
            "every fitted run): deterministic skewed holdouts instead"
        )
    for k, w in enumerate(skewed, start=1):
        runs.append(("validate", f"holdout-skewed{k}", dict(zip(domains, map(float, w)))))
    return runs, warnings


def _random_design(
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


def _per_run_budget(
    target_budget: int, pilot_fraction: float, n_runs: int, g: int, pilot_samples: int | None
) -> tuple[int, list[str]]:
    """Samples per run, rounded DOWN to a multiple of the global batch `g` (rounding up would overspend)."""
    if pilot_samples is None:
        pilot_total = int(pilot_fraction * target_budget)
        per_run = pilot_total // n_runs // g * g
        if per_run < 8:
            raise LawfitError(
                f"pilot budget {pilot_total} samples over {n_runs} runs leaves {per_run} per run "
                f"(whole global batches of {g}); raise --pilot-fraction or --target-budget, or give "
                "--pilot-samples"
            )
        return per_run, []
    per_run = pilot_samples // g * g
    if per_run == 0:
        raise LawfitError(
            f"--pilot-samples {pilot_samples} is less than one global batch ({g} samples): give at least {g}"
        )
    if per_run == pilot_samples:
        return per_run, []
    return per_run, [f"--pilot-samples {pilot_samples} rounded down to {per_run}, a multiple of {g}"]


def _eval_schedule(per_run: int, n_evals: int, g: int, first_eval: int | None) -> tuple[list[int], list[str]]:
    if first_eval is not None and first_eval > per_run:
        raise LawfitError(f"--first-eval {first_eval} exceeds the per-run budget of {per_run} samples")
    pts = eval_points(per_run, n_evals, multiple=g, first=first_eval)
    notes = []
    if first_eval is not None and first_eval % g:
        notes.append(f"--first-eval {first_eval} rounded up to {pts[0]}, a multiple of {g}")
    if len(pts) < n_evals:
        notes.append(
            f"rounding the evaluation points to multiples of the global batch {g} left {len(pts)} of "
            f"{n_evals} distinct per run ({pts}); lower --first-eval or --evals, or raise the budget"
        )
    return pts, notes


def _transfer_warning(n_fit: int, m: int, design: str) -> list[str]:
    """The interference form has 5 + 2(m-1) parameters per target. The 5 of the target's own scale law
    are pinned by each run's evaluation curve (n_evals points along the budget); the 2(m-1) per-source
    ones (transfer and interference from each other domain) only by differences between mixtures. So a
    transfer form needs at least 2(m-1) + 2 = 2m fitted runs (the +2: the target's own single run and
    one more to separate own data from the others'); the law study saw 1.5m runs fail (Q3)."""
    need = 2 + 2 * (m - 1)
    if m < 2 or n_fit >= need:
        return []
    fix = (
        "plan --design pairs"
        if design == "random"
        else "2 domains have no more distinct 50/50 mixtures: add mixtures by hand or expect no transfer"
    )
    return [
        f"{n_fit} fitted runs < {need} = 2 + 2(m-1) for m = {m} domains: too few to identify a transfer "
        f"form (5 + 2(m-1) parameters per target); {fix}"
    ]


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


def _near_fit_warnings(runs: list[_Run]) -> list[str]:
    fits = [(rid, w) for role, rid, w in runs if role == "fit"]
    out = []
    for role, rid, w in runs:
        near = [(tv_distance(w, fw), fid) for fid, fw in fits] if role == "validate" else []
        close = min(near, default=(1.0, ""))
        if close[0] < NEAR_FIT_TV:
            out.append(
                f"held-out '{rid}' is at total-variation distance {close[0]:.2f} from fitted run "
                f"'{close[1]}': it validates little"
            )
    return out


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
    pilot_fraction: float = 0.1,
    *,
    design: str = "pairs",
    global_batch: int = 8,
    pilot_samples: int | None = None,
    first_eval: int | None = None,
    n_mixtures: int | None = None,
    n_evals: int = 8,
    seed: int = 0,
    max_epochs: float | None = None,
) -> dict:
    """A `voxmix.plan/1` dict: the design's runs, each with the same budget and evaluation points.

    `pilot_samples` (per run) replaces `pilot_fraction` x `target_budget` split over the runs. Budgets
    are rounded down, evaluation points to the nearest multiple of `global_batch` (the first up from
    `first_eval`, default budget/64); what rounding changed is said in "warnings". `n_mixtures`: the
    random design's mixtures (default max(2, m//2)); an error with another design.
    """
    _check_domains(domains, unique)
    _check_options(target_budget, pilot_fraction, design, global_batch, pilot_samples, first_eval, n_evals)
    if n_mixtures is not None and n_mixtures < 0:
        raise LawfitError(f"--mixtures must be >= 0, got {n_mixtures}")
    if n_mixtures is not None and design != "random":
        raise LawfitError(
            f"--mixtures {n_mixtures} applies to --design random only (design {design!r} plans its own "
            "mixtures); pass design='random' for random mixtures"
        )
    m = len(domains)
    rng = np.random.default_rng(seed)
    warnings: list[str] = []
    if design == "random":
        runs = _random_design(domains, unique, max(2, m // 2) if n_mixtures is None else n_mixtures, rng)
    else:
        runs, warnings = _pairs_design(domains, unique, design == "pairs+loo", rng)
    g = int(global_batch)
    per_run, notes = _per_run_budget(target_budget, pilot_fraction, len(runs), g, pilot_samples)
    eval_at, eval_notes = _eval_schedule(per_run, n_evals, g, first_eval)
    warnings += notes + eval_notes
    warnings += _transfer_warning(sum(role == "fit" for role, _, _ in runs), m, design)
    warnings += _near_fit_warnings(runs)
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
                "eval_at": list(eval_at),
                "seed": seed + i,
            }
        )
    return {
        "format": FORMAT,
        "domains": list(domains),
        "design": design,
        "global_batch": g,
        "unique_samples": dict(unique),
        "target_budget": int(target_budget),
        # null when --pilot-samples set every run's budget (the fraction was not used)
        "pilot_fraction": pilot_fraction if pilot_samples is None else None,
        "pilot_samples": per_run * len(out_runs),
        "runs": out_runs,
        "identifies": identifies(list(domains), [mix for role, _, mix in runs if role == "fit"]),
        "warnings": warnings,
    }
