"""Coverage of lawfit's bootstrap intervals over many simulated truths (docs/notes/coverage_study_2026-11-30.md).

    python scripts/coverage_study.py run --condition iid --trials 100            # appends rows, resumable
    python scripts/coverage_study.py summary                                     # markdown tables
    python scripts/coverage_study.py decide --label round2                       # the protocol's rule

Each trial (lawfit/coverage.py) draws known laws, a pilot design and noisy run logs, fits them, bootstraps
with every method asked for, and records for each group of quantities how many intervals held the truth.
Rows go to benchmarks/results/coverage.jsonl, one per (trial, method, quantile rule); a trial already
there under the same label is not run again, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from scipy.stats import beta

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxmix.lawfit.coverage import CONDITIONS, GROUPS, coverage_trial  # noqa: E402
from voxmix.lawfit.fit import BOOTSTRAP_METHODS  # noqa: E402
from voxmix.lawfit.intervals import RULES  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "coverage.jsonl"
SEED0 = 1000  # trial t uses seed SEED0 + t (the unit tests use seeds below 10)


def _sha() -> str | None:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return r.stdout.strip() or None


def _trial(condition: str, seed: int, methods: tuple[str, ...], rules: tuple[str, ...]) -> list[dict]:
    t = time.perf_counter()
    rows = coverage_trial(CONDITIONS[condition], seed, methods=methods, rules=rules)
    for r in rows:
        r["seconds"] = round(time.perf_counter() - t, 2)
    return rows


def _done(path: Path, label: str, condition: str) -> set[int]:
    if not path.exists():
        return set()
    seeds = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("label") == label and r.get("condition") == condition:
                seeds.add(r["seed"])
    return seeds


def cmd_run(a) -> None:
    methods, rules = tuple(a.methods), tuple(a.rules)
    done = _done(a.out, a.label, a.condition)
    seeds = [a.seed0 + t for t in range(a.trials) if a.seed0 + t not in done]
    print(f"{a.condition}/{a.label}: {len(done)} trials done, {len(seeds)} to run", file=sys.stderr)
    base = {
        "condition": a.condition,
        "label": a.label,
        "design": CONDITIONS[a.condition].to_json(),
        "git_sha": _sha(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.workers) as pool, open(a.out, "a") as fh:
        futs = [pool.submit(_trial, a.condition, s, methods, rules) for s in seeds]
        for n, fut in enumerate(as_completed(futs), 1):
            for r in fut.result():
                fh.write(json.dumps({**base, **r}) + "\n")  # append-only: earlier rows are never touched
            fh.flush()
            el = time.perf_counter() - t0
            print(
                f"  {n}/{len(seeds)} trials, {el:.0f} s, ~{el / n * (len(seeds) - n):.0f} s left",
                file=sys.stderr,
            )


def _boot_ci(cov: np.ndarray, cnt: np.ndarray, rng: np.random.Generator, n_boot: int = 2000):
    """Coverage sum(cov)/sum(cnt) and its 95% percentile interval, resampling whole trials (quantities of
    one trial are correlated)."""
    idx = rng.integers(0, len(cov), size=(n_boot, len(cov)))
    stats = cov[idx].sum(1) / np.maximum(cnt[idx].sum(1), 1)
    return cov.sum() / cnt.sum(), np.quantile(stats, 0.025), np.quantile(stats, 0.975)


def _clopper_pearson(k: int, n: int, level: float = 0.95):
    a = (1 - level) / 2
    lo = beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return lo, hi


def cmd_summary(a) -> None:
    rows = [json.loads(x) for x in a.out.read_text().splitlines() if x.strip()]
    keys = sorted({(r["condition"], r["label"], r["method"], r["rule"]) for r in rows})
    rng = np.random.default_rng(0)
    for cond in CONDITIONS:
        sel = [k for k in keys if k[0] == cond]
        if not sel:
            continue
        print(f"\n### `{cond}`\n")
        print("| label | method/rule | trials | " + " | ".join(GROUPS) + " |")
        print("| --- | --- | --- | " + " | ".join("---" for _ in GROUPS) + " |")
        for _, label, method, rule in sel:
            rs = [
                r
                for r in rows
                if (r["condition"], r["label"], r["method"], r["rule"]) == (cond, label, method, rule)
            ]
            cells = []
            for g in GROUPS:
                have = [r["groups"][g] for r in rs if g in r["groups"]]
                if not have:
                    cells.append("")
                    continue
                cov = np.array([h[0] for h in have], dtype=float)
                cnt = np.array([h[1] for h in have], dtype=float)
                p, lo, hi = _boot_ci(cov, cnt, rng)
                width = np.median([h[2] for h in have])
                cells.append(f"{p:.3f} [{lo:.3f}, {hi:.3f}] w{width:.3g}")
            print(f"| {label} | {method}/{rule} | {len(rs)} | " + " | ".join(cells) + " |")
        print("\nSingle indicators per trial (binomial; 95% Clopper-Pearson):\n")
        for _, label, method, rule in sel:
            rs = [
                r
                for r in rows
                if (r["condition"], r["label"], r["method"], r["rule"]) == (cond, label, method, rule)
            ]
            parts = []
            for p in ("alpha_d0", "pred_4x_uniform_d0"):
                k, n = sum(r["probes"][p] for r in rs), len(rs)
                lo, hi = _clopper_pearson(k, n)
                parts.append(f"{p} {k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]")
            print(f"- {label} {method}/{rule}: " + "; ".join(parts))


DECISION_GROUPS = ("E", "A", "alpha", "k_pos", "gamma", "pred_1x", "pred_4x", "pred_10x")


def cmd_decide(a) -> None:
    """The protocol's decision rule over `--label`: per method/rule, the largest |coverage - level| over
    the decision groups in `iid` and `run_correlated`, and whether a prediction group's 95% interval lies
    wholly below the level (under-covering)."""
    rows = [json.loads(x) for x in a.out.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["label"] == a.label and r["condition"] in ("iid", "run_correlated")]
    rng = np.random.default_rng(0)
    print(f"| {a.label}: method/rule | max abs(coverage - 0.9) | worst (condition, group) | under-covers |")
    print("| --- | --- | --- | --- |")
    for method, rule in sorted({(r["method"], r["rule"]) for r in rows}):
        worst, where, under = 0.0, "", []
        for cond in ("iid", "run_correlated"):
            rs = [r for r in rows if (r["condition"], r["method"], r["rule"]) == (cond, method, rule)]
            for g in DECISION_GROUPS:
                have = [r["groups"][g] for r in rs if g in r["groups"]]
                if not have:
                    continue
                p, lo, hi = _boot_ci(
                    np.array([h[0] for h in have], float), np.array([h[1] for h in have], float), rng
                )
                if abs(p - 0.9) > worst:
                    worst, where = abs(p - 0.9), f"{cond}, {g} ({p:.3f})"
                if g.startswith("pred") and hi < 0.9:
                    under.append(f"{cond}/{g}")
        print(f"| {method}/{rule} | {worst:.3f} | {where} | {', '.join(under) or 'no'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--condition", choices=sorted(CONDITIONS), required=True)
    r.add_argument("--trials", type=int, default=100)
    r.add_argument("--methods", nargs="+", default=list(BOOTSTRAP_METHODS), choices=BOOTSTRAP_METHODS)
    r.add_argument("--rules", nargs="+", default=["linear", "weibull"], choices=list(RULES))
    r.add_argument("--label", default="current", help="names this code version in the rows")
    r.add_argument("--seed0", type=int, default=SEED0, help="trial t uses seed SEED0 + t")
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("summary")
    s.set_defaults(fn=cmd_summary)
    d = sub.add_parser("decide")
    d.add_argument("--label", default="round2")
    d.set_defaults(fn=cmd_decide)
    for p in (r, s, d):
        p.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
