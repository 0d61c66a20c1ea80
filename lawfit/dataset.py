"""Evaluation points of many runs, as arrays the fitter works on."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    se: np.ndarray = None  # type: ignore[assignment]  # None -> all nan (filled in __post_init__)
    """(n, m) standard error of each observed loss over its evaluation crops (the run log's `loss_se`);
    nan where not logged. se / y is the measured noise of log y at that point."""

    def __post_init__(self) -> None:
        # A default, so that Datasets built without per-point errors (older callers) stay valid.
        if self.se is None:
            self.se = np.full(self.y.shape, np.nan)
        self.se = np.asarray(self.se, dtype=np.float64)
        if self.se.shape != self.y.shape:
            raise ValueError(f"Dataset field 'se': shape {self.se.shape} differs from y's {self.y.shape}")

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
            se=self.se[rows],
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


def _select_domains(runs: list[RunLog], domains: list[str] | None) -> list[str]:
    all_domains = sorted({d for r in runs for d in r.domains})
    if domains is None:
        return all_domains
    unknown = sorted(set(domains) - set(all_domains))
    if unknown:
        raise LawfitError(f"domain(s) {unknown} do not appear in any run (runs have {all_domains})")
    return domains


def _fill(row: np.ndarray, values: Mapping[str, float], col: dict[str, int]) -> np.ndarray:
    """Set row's entries of the domains in col to their values; other entries keep their fill."""
    for d, v in values.items():
        if d in col:
            row[col[d]] = v
    return row


@dataclass
class _Rows:
    """The dataset's rows and per-domain measurements, gathered run by run."""

    m: int  # columns: the number of domains asked for
    col: dict[str, int]  # column of each domain
    D: list[np.ndarray] = field(default_factory=list)
    U: list[np.ndarray] = field(default_factory=list)
    Y: list[np.ndarray] = field(default_factory=list)
    S: list[np.ndarray] = field(default_factory=list)
    R: list[int] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    costs: dict[str, list[float]] = field(default_factory=dict)
    uniq: dict[str, list[int]] = field(default_factory=dict)

    def add_run(self, r_idx: int, run: RunLog) -> None:
        m = self.m
        self.warns.extend(run.warnings)
        if not run.evals:
            self.warns.append(f"{run.path}: run '{run.run_id}' has no evaluation events; skipped")
        u = np.full(m, np.inf)
        for d, n in run.unique_samples.items():
            if d in self.col and n > 0:
                u[self.col[d]] = n
                self.uniq.setdefault(d, []).append(n)
        for ev in run.evals:
            self.D.append(_fill(np.zeros(m), ev.samples_seen, self.col))
            self.U.append(u)
            self.Y.append(_fill(np.full(m, np.nan), ev.loss, self.col))
            self.S.append(_fill(np.full(m, np.nan), ev.loss_se, self.col))
            self.R.append(r_idx)
        for d, s in run.seconds_per_sample().items():
            self.costs.setdefault(d, []).append(s)


def build_dataset(runs: list[RunLog], domains: list[str] | None = None) -> Dataset:
    if not runs:
        raise LawfitError("no runs given")
    domains = _select_domains(runs, domains)
    rows = _Rows(m=len(domains), col={d: c for c, d in enumerate(domains)})
    for r_idx, run in enumerate(runs):
        rows.add_run(r_idx, run)
    if not rows.D:
        raise LawfitError("the runs hold no evaluation events: nothing to fit")
    Y = np.asarray(rows.Y)
    for c, d in enumerate(domains):
        if not np.isfinite(Y[:, c]).any():
            raise LawfitError(f"domain '{d}' is never evaluated in the runs given")
    return Dataset(
        domains=list(domains),
        run_ids=[r.run_id for r in runs],
        D=np.asarray(rows.D),
        U=np.asarray(rows.U),
        y=Y,
        run=np.asarray(rows.R),
        warnings=rows.warns,
        seconds_per_sample={d: float(np.median(v)) for d, v in rows.costs.items()},
        unique_samples={d: float(max(v)) for d, v in rows.uniq.items()},
        se=np.asarray(rows.S),
    )
