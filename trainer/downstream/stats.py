"""Statistics of seed-paired comparisons: t-intervals, paired t-test, Wilcoxon signed-rank, Holm, AUROC.

Closed forms are written out here (scipy supplies only the t distribution and, for Wilcoxon, the exact
null distribution) so that tests can check them against scipy's own routines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    lo: float
    hi: float
    """Two-sided t confidence interval [lo, hi] of the mean (nan when n < 2)."""


def t_interval(x, level: float = 0.95) -> Summary:
    """mean +- t_{(1+level)/2, n-1} * sd / sqrt(n), sd with n - 1 degrees of freedom."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("t_interval: no values")
    m = float(x.mean())
    if n < 2:
        return Summary(n, m, math.nan, math.nan)
    half = float(st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Summary(n, m, m - half, m + half)


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_diff: float
    """mean of b - a over the pairs"""
    lo: float
    hi: float
    t: float
    p_t: float
    """two-sided paired t-test p-value"""
    p_wilcoxon: float | None = None
    """two-sided Wilcoxon signed-rank p-value (exact for n <= 25 without ties), when asked for"""


def paired_test(a, b, level: float = 0.95, wilcoxon: bool = False) -> PairedTest:
    """Paired comparison of b against a (same seeds): t = mean(d) / (sd(d) / sqrt(n)), d = b - a."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test: shapes {a.shape} and {b.shape} must be equal and 1-D")
    d = b - a
    n = len(d)
    ci = t_interval(d, level)
    if n < 2:
        t, p = math.nan, math.nan
    else:
        sd = d.std(ddof=1)
        if sd == 0:  # every pair differs by the same amount: no variance to test against
            t = math.copysign(math.inf, ci.mean) if ci.mean != 0 else math.nan
            p = 0.0 if ci.mean != 0 else 1.0
        else:
            t = float(ci.mean / (sd / math.sqrt(n)))
            p = float(2 * st.t.sf(abs(t), n - 1))
    pw = None
    if wilcoxon:
        pw = float(st.wilcoxon(d).pvalue) if n >= 1 and np.any(d != 0) else 1.0
    return PairedTest(n, ci.mean, ci.lo, ci.hi, t, p, pw)


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over all tests of a table).

    Sorted ascending, p_(i) is multiplied by (m - i) (i from 0), then made non-decreasing by a running
    maximum and clipped at 1. nan p-values (untestable comparisons) stay nan and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
        out[order] = np.minimum(adj, 1.0)
    return [float(v) for v in out]


def auroc(scores, labels) -> float:
    """Area under the ROC curve = Mann-Whitney U / (n_pos n_neg), ties counted 1/2 (average ranks)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return math.nan
    ranks = st.rankdata(s)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))
