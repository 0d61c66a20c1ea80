"""The comparison statistics against scipy's own routines on fixed numbers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from voxmix.trainer.downstream.compare import compare, format_table
from voxmix.trainer.downstream.stats import auroc, holm, paired_test, t_interval

A = [0.712, 0.684, 0.731, 0.695, 0.702]
B = [0.741, 0.690, 0.752, 0.731, 0.709]


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_t_interval_matches_scipy(level):
    s = t_interval(A, level)
    lo, hi = st.t.interval(level, len(A) - 1, loc=np.mean(A), scale=st.sem(A))
    assert s.mean == pytest.approx(np.mean(A), abs=1e-15)
    assert (s.lo, s.hi) == pytest.approx((lo, hi), rel=1e-12)


def test_paired_t_matches_ttest_rel():
    r = paired_test(A, B, wilcoxon=True)
    ref = st.ttest_rel(B, A)
    assert r.t == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p_t == pytest.approx(ref.pvalue, rel=1e-10)
    d = np.subtract(B, A)
    lo, hi = st.t.interval(0.95, 4, loc=d.mean(), scale=st.sem(d))
    assert (r.mean_diff, r.lo, r.hi) == pytest.approx((d.mean(), lo, hi), rel=1e-12)
    # Exact Wilcoxon by enumeration of the 2^5 sign patterns: W+ = sum of ranks of positive d.
    ranks = st.rankdata(np.abs(d))
    w_obs = ranks[d > 0].sum()
    null = [sum(r_ for r_, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=5)]
    mu = np.mean(null)
    p_exact = np.mean([abs(w - mu) >= abs(w_obs - mu) - 1e-12 for w in null])
    assert r.p_wilcoxon == pytest.approx(p_exact, rel=1e-12)
    # Sign flips of the pairing flip t and keep p.
    r2 = paired_test(B, A)
    assert (r2.t, r2.p_t) == pytest.approx((-r.t, r.p_t))


def test_paired_test_rejects_unpaired():
    with pytest.raises(ValueError, match="shapes"):
        paired_test([1, 2, 3], [1, 2])


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=40), 1)  # rounding makes ties
    y = rng.random(40) < 0.4
    pos, neg = s[y], s[~y]
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(s, y) == pytest.approx(ref, rel=1e-12)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_comparison_table_statistics():
    values = {"prop": {"seg/x/dice": A}, "transfer": {"seg/x/dice": B}}
    table = compare(values, level=0.95, alpha=0.05, wilcoxon=False)
    row = table["seg/x/dice"]
    e = row["encoders"]["transfer"]
    lo, hi = st.t.interval(0.95, 4, loc=np.mean(B), scale=st.sem(B))
    assert (e["mean"], e["lo"], e["hi"]) == pytest.approx((np.mean(B), lo, hi), rel=1e-12)
    d = row["vs_prop"]["transfer"]
    ref = st.ttest_rel(B, A)
    assert d["p_t"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert d["significant"] == (ref.pvalue < 0.05)
    text = format_table(table, ["prop", "transfer"], 0.95, False)
    assert f"{np.mean(B):.3f}" in text and f"p_t={ref.pvalue:.3g}" in text


def test_comparison_with_nan_metric():
    """A metric that is nan for every seed (a label missing from validation) is reported, not a crash."""
    nan = float("nan")
    table = compare({"a": {"m": [nan, nan]}, "b": {"m": [nan, nan]}}, level=0.95, alpha=0.05, wilcoxon=True)
    d = table["m"]["vs_a"]["b"]
    assert d["n"] == 0 and math.isnan(d["p_t"]) and not d["significant"]
    assert "b - a" in format_table(table, ["a", "b"], 0.95, True)


def test_holm_closed_form():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06.
    nan = float("nan")
    adj = holm([0.01, 0.04, nan, 0.03, 0.005])
    assert adj[:2] + adj[3:] == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12) and math.isnan(adj[2])
    p = np.random.default_rng(1).random(12) ** 3
    h = np.array(holm(p))
    assert np.all(h >= p) and np.all(h <= np.minimum(1, len(p) * p) + 1e-15)  # between raw and Bonferroni
    assert np.all(np.diff(h[np.argsort(p)]) >= 0)  # order of the raw p-values kept


def test_comparison_significance_is_holm_corrected_over_the_table():
    rng = np.random.default_rng(3)
    values = {"a": {}, "b": {}, "c": {}}
    for m in range(5):
        base = rng.normal(size=5)
        values["a"][f"m{m}"] = list(base)
        values["b"][f"m{m}"] = list(base + 0.3 * m + rng.normal(0, 0.2, 5))
        values["c"][f"m{m}"] = list(base + rng.normal(0, 0.2, 5))
    raw = [
        st.ttest_rel(values[n][f"m{m}"], values["a"][f"m{m}"]).pvalue for m in range(5) for n in ("b", "c")
    ]
    ref = np.minimum(1, np.maximum.accumulate(np.sort(raw) * (10 - np.arange(10))))[
        np.argsort(np.argsort(raw))
    ]
    for corr, want in (("holm", ref), ("none", np.array(raw))):
        table = compare(values, level=0.95, alpha=0.05, wilcoxon=False, correction=corr)
        got = [table[f"m{m}"]["vs_a"][n] for m in range(5) for n in ("b", "c")]
        assert [d["p_adj"] for d in got] == pytest.approx(list(want), rel=1e-10)
        assert [d["significant"] for d in got] == list(want < 0.05)
    assert (np.array(raw) < 0.05).sum() > (ref < 0.05).sum() >= 1  # the correction changes decisions here
    with pytest.raises(ValueError, match="correction"):
        compare(values, level=0.95, alpha=0.05, wilcoxon=False, correction="bh")
