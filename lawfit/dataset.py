"""Evaluation points of many runs, as arrays the fitter works on."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from voxmix.formats.runlog import RunLog, find_runlogs, read_runlog

from .errors import LawfitError


@dataclass
class Dataset:
    domains: list[str]
    run_ids: list[str]
    D: np.ndarray  # (n, m) samples of each domain seen at each evaluation point
    U: np.ndarray  # (n, m) unique samples of each domain in that point's run (inf when unknown)
    y: np.ndarray  # (n, m) observed held-out loss of each domain (nan when not evaluated)
    run: np.ndarray  # (n,) index into run_ids
    seconds_per_sample: dict[str, float]
    unique_samples: dict[str, float]
    warnings: list[str]

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)

    def subset(self, rows: np.ndarray) -> Dataset:
        return Dataset(
            self.domains,
            self.run_ids,
            self.D[rows],
            self.U[rows],
            self.y[rows],
            self.run[rows],
            self.seconds_per_sample,
            self.unique_samples,
            self.warnings,
        )

    def resample_runs(self, rng: np.random.Generator) -> Dataset:
        """Bootstrap over runs: draw runs with replacement, keep all points of each drawn run."""
        picks = rng.integers(0, self.n_runs, size=self.n_runs)
        rows = np.concatenate([np.flatnonzero(self.run == r) for r in picks])
        return self.subset(rows)

    def target_points(self, i: int) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.y[:, i]))


def load_runs(patterns: list[str]) -> list[RunLog]:
    paths = find_runlogs(patterns)
    runs = []
    for p in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collected in run.warnings and reported once
            runs.append(read_runlog(p))
    ids = [r.run_id for r in runs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        where = [str(r.path) for r in runs if r.run_id in dup]
        raise LawfitError(f"duplicate run_id {dup} in {where}: each run must have its own id")
    return runs


def build_dataset(runs: list[RunLog], domains: list[str] | None = None) -> Dataset:
    if not runs:
        raise LawfitError("no runs given")
    all_domains = sorted({d for r in runs for d in r.domains})
    if domains is None:
        domains = all_domains
    else:
        unknown = sorted(set(domains) - set(all_domains))
        if unknown:
            raise LawfitError(f"domain(s) {unknown} do not appear in any run (runs have {all_domains})")
    m = len(domains)
    col = {d: c for c, d in enumerate(domains)}
    D, U, Y, R = [], [], [], []
    warns: list[str] = []
    costs: dict[str, list[float]] = {}
    uniq: dict[str, list[int]] = {}
    for r_idx, run in enumerate(runs):
        warns.extend(run.warnings)
        if not run.evals:
            warns.append(f"{run.path}: run '{run.run_id}' has no evaluation events; skipped")
        u = np.full(m, np.inf)
        for d, n in run.unique_samples.items():
            if d in col and n > 0:
                u[col[d]] = n
                uniq.setdefault(d, []).append(n)
        for ev in run.evals:
            row_d = np.zeros(m)
            row_y = np.full(m, np.nan)
            for d, n in ev.samples_seen.items():
                if d in col:
                    row_d[col[d]] = n
            for d, v in ev.loss.items():
                if d in col:
                    row_y[col[d]] = v
            D.append(row_d)
            U.append(u)
            Y.append(row_y)
            R.append(r_idx)
        for d, s in run.seconds_per_sample().items():
            costs.setdefault(d, []).append(s)
    if not D:
        raise LawfitError("the runs hold no evaluation events: nothing to fit")
    Y = np.asarray(Y)
    for c, d in enumerate(domains):
        if not np.isfinite(Y[:, c]).any():
            raise LawfitError(f"domain '{d}' is never evaluated in the runs given")
    return Dataset(
        domains=list(domains),
        run_ids=[r.run_id for r in runs],
        D=np.asarray(D),
        U=np.asarray(U),
        y=Y,
        run=np.asarray(R),
        warnings=warns,
        seconds_per_sample={d: float(np.median(v)) for d, v in costs.items()},
        unique_samples={d: float(max(v)) for d, v in uniq.items()},
    )
