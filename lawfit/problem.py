"""One target's points as arrays (`Problem`), the relative noise weight of each point, and the box of the fit
vector. Split out of lawfit/fit.py (#18), which re-exports these names."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .dataset import Dataset
from .forms import LawForm


class Problem(NamedTuple):
    """One target's points: samples seen of itself and of the others, unique data, observed log loss, and
    each point's relative noise weight (its measured standard error over the target's median; 1 where
    the run log holds none)."""

    D_own: np.ndarray
    D_oth: np.ndarray
    U_own: np.ndarray
    U_oth: np.ndarray
    logy: np.ndarray
    scale: np.ndarray


def _problem(ds: Dataset, i: int, rows: np.ndarray | None = None) -> Problem:
    pts = ds.target_points(i) if rows is None else rows[np.isfinite(ds.y[rows, i])]
    others = [c for c in range(len(ds.domains)) if c != i]
    return Problem(
        ds.D[pts, i], ds.D[pts][:, others], ds.U[pts, i], ds.U[pts][:, others], np.log(ds.y[pts, i]),
        point_scale(ds, i, pts),
    )  # fmt: skip


def point_scale(ds: Dataset, i: int, pts: np.ndarray) -> np.ndarray:
    """Relative noise of each point of target i: sigma_k / median sigma, sigma_k = se_k / y_k the measured
    standard error of the log loss (evaluation crops), so that a residual is weighed by 1 / sigma_k while
    the objective keeps its units (log loss) and the Huber delta its meaning. 1 without measurements."""
    s = ds.se[pts, i] / ds.y[pts, i]
    ok = np.isfinite(s) & (s > 0)
    if not ok.any():
        return np.ones(len(pts))
    med = float(np.median(s[ok]))
    # A point without a measurement counts as typical; none counts more than 10x a typical point.
    return np.where(ok, np.maximum(s, 0.1 * med), med) / med


def box(form: LawForm, others: list[str], prob: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the fit vector for this target's points (E below the lowest loss)."""
    tot = prob.D_own + prob.D_oth.sum(axis=1)
    pos = tot[tot > 0]
    d_range = (float(pos.min()) if len(pos) else 1.0, float(tot.max()) if len(tot) else 2.0)
    lo, hi = np.array(form.bounds(others, float(np.exp(prob.logy.min())), d_range)).T
    return lo, hi
