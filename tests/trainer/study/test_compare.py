"""The demo's statistics and report (trainer/study/compare.py, report.py) against SciPy / NumPy and
closed forms, on synthetic numbers and synthetic files: fast, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from voxmix.formats.allocation import write_allocation
from voxmix.formats.runlog import RunLogWriter
from voxmix.lawfit.allocate import Budget, allocate
from voxmix.lawfit.laws import TargetLaw, TransferTerm
from voxmix.lawfit.lawsfile import Laws
from voxmix.trainer.study.compare import (
    NEAR_ZERO,
    POSITIVE_MIN,
    FinalBudget,
    accuracy,
    compare,
    control_checks,
    overlap,
    paired_gains,
    prediction_check,
    t_interval,
)
from voxmix.trainer.study.report import render, summary


# ---- statistics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_t_interval_matches_scipy(n):
    x = np.random.default_rng(n).normal(0.02, 0.01, n)
    got = t_interval(x)
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert got["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert got["sd"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert got["interval"] == pytest.approx([lo, hi], rel=1e-10)
    # 90%: narrower, same centre
    lo90, hi90 = t_interval(x, level=0.9)["interval"]
    assert lo < lo90 < hi90 < hi and (lo90 + hi90) / 2 == pytest.approx(x.mean())


def test_t_interval_of_one_seed_has_no_interval():
    got = t_interval([0.3])
    assert got["n"] == 1 and got["mean"] == 0.3 and got["interval"] is None and got["sd"] is None


def test_paired_gains_are_relative_to_proportional():
    prop, opt = np.array([0.50, 0.40, 0.60]), np.array([0.45, 0.42, 0.60])
    np.testing.assert_allclose(paired_gains(prop, opt), [0.1, -0.05, 0.0], atol=1e-15)


def test_accuracy_r_and_mape():
    pred, meas = np.array([0.5, 0.6, 0.7, 0.9]), np.array([0.55, 0.58, 0.75, 0.8])
    got = accuracy(pred, meas)
    assert got["r"] == pytest.approx(stats.pearsonr(pred, meas)[0], rel=1e-12)
    mape = 100 / 4 * (0.05 / 0.55 + 0.02 / 0.58 + 0.05 / 0.75 + 0.1 / 0.8)
    assert got["mape"] == pytest.approx(mape, rel=1e-12) and got["n"] == 4
    assert accuracy([0.5, 0.6], [0.5, 0.7])["r"] is None  # r needs 3 points
    assert accuracy([0.5, 0.5, 0.5], [0.5, 0.6, 0.7])["r"] is None  # and spread


def test_overlap():
    assert overlap([0, 1], [1, 2]) and overlap([0, 3], [1, 2]) and not overlap([0, 1], [1.1, 2])
    assert overlap(None, [0, 1]) is None


# ---- controls ----------------------------------------------------------------------------------------
def _rates(ab, ba, iv_ab, iv_ba):
    rate = {"a": {"a": 1.0, "b": ab}, "b": {"a": ba, "b": 1.0}}
    ivs = None if iv_ab is None else {"a": {"b": iv_ab}, "b": {"a": iv_ba}}
    return rate, ivs


@pytest.mark.parametrize(
    ("iv_ab", "iv_ba", "passed"),
    [
        ([0.6, 1.3], [0.4, 1.1], True),
        ([0.01, 0.5], [0.4, 1.1], True),  # hi exactly POSITIVE_MIN covers it
        ([0.01, 0.49], [0.4, 1.1], False),  # does not reach 0.5
        ([0.0, 1.2], [0.4, 1.1], False),  # touches 0: does not exclude it
        ([0.3, 1.2], [-0.2, 0.9], False),  # one direction includes 0
    ],
)
def test_positive_control_rules(iv_ab, iv_ba, passed):
    rate, ivs = _rates(0.9, 0.8, iv_ab, iv_ba)
    got = control_checks("positive", ("a", "b"), rate, ivs)
    assert got["passed"] is passed
    e = got["directions"]["a <- b"]
    assert e["estimate"] == 0.9 and e["interval"] == iv_ab
    assert e["excludes_0"] == (iv_ab[0] > 0) and e["covers_min"] == (iv_ab[1] >= POSITIVE_MIN)


@pytest.mark.parametrize(
    ("iv_ab", "passed"),
    [
        ([-0.05, 0.02], True),
        ([0.1, 0.4], True),  # touches NEAR_ZERO
        ([0.11, 0.4], False),
        ([-0.5, -0.1000001], False),
        ([-3.0, 3.0], True),  # a wide interval is "near 0" too: the rule says intersects
    ],
)
def test_negative_control_rule(iv_ab, passed):
    rate, ivs = _rates(0.02, 0.0, iv_ab, [-0.01, 0.01])
    got = control_checks("negative", ("a", "b"), rate, ivs)
    assert got["passed"] is passed
    assert got["directions"]["a <- b"]["near_0"] == (iv_ab[0] <= NEAR_ZERO and iv_ab[1] >= -NEAR_ZERO)


def test_controls_without_intervals_or_domains_are_na():
    rate, _ = _rates(0.9, 0.8, None, None)
    got = control_checks("positive", ("a", "b"), rate, None)
    assert got["passed"] is None and got["directions"]["b <- a"]["excludes_0"] is None
    missing = control_checks("negative", ("a", "zz"), rate, None)
    assert missing["passed"] is None and missing["directions"] == {} and "n/a" in missing["note"]
    assert control_checks("negative", ("a", "b"), None, None)["passed"] is None


# ---- prediction vs measurement -----------------------------------------------------------------------
def test_prediction_check_below_inside_above():
    m = [0.48, 0.49, 0.47]
    below = prediction_check(m, 0.62, [0.60, 0.65])
    assert below["outside"] and below["side"] == "below"
    assert below["miss"] == pytest.approx(0.60 - 0.48)
    assert below["miss_log"] == pytest.approx(math.log(0.60 / 0.48))
    assert below["seed_sd_log"] == pytest.approx(np.std(np.log(m), ddof=1))
    # the seeds' 95% t-interval of the mean, 0.48 +- 4.303 * 0.01 / sqrt(3) = [0.455, 0.505], misses
    # [0.60, 0.65]: seed noise does not explain the miss
    lo, hi = stats.t.interval(0.95, 2, loc=0.48, scale=stats.sem(m))
    assert below["measured_interval"] == pytest.approx([lo, hi]) and below["seed_noise_explains"] is False
    inside = prediction_check(m, 0.48, [0.46, 0.50])
    assert inside["outside"] is False and inside["miss"] == 0.0 and inside["seed_noise_explains"] is None
    above = prediction_check(m, 0.40, [0.39, 0.41])
    assert above["side"] == "above" and above["miss"] == pytest.approx(0.48 - 0.41)
    # two seeds far apart: their interval (t = 12.7) reaches the prediction interval
    noisy = prediction_check([0.45, 0.55], 0.62, [0.60, 0.65])
    assert noisy["outside"] and noisy["seed_noise_explains"] is True
    na = prediction_check([0.5], 0.5, None)
    assert na["outside"] is None and na["measured_sd"] is None and na["measured_interval"] is None


# ---- compare() on synthetic files, and the report ------------------------------------------------------
DOMS = ["a", "b"]
PILOT = 96
SEEDS = [0, 1, 2]
# measured final losses per (allocation, seed), per domain; chosen by hand
LOSS = {
    "proportional": [{"a": 0.50, "b": 0.70}, {"a": 0.52, "b": 0.69}, {"a": 0.49, "b": 0.72}],
    "transfer_aware": [{"a": 0.47, "b": 0.71}, {"a": 0.50, "b": 0.69}, {"a": 0.47, "b": 0.70}],
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    laws = Laws(
        form="transfer",
        domains=DOMS,
        targets={
            "a": TargetLaw("a", 0.3, 4.0, 0.35, {"b": TransferTerm(0.5, 0.9)}),
            "b": TargetLaw("b", 0.4, 6.0, 0.3, {"a": TransferTerm(0.05, 0.9)}),
        },
        unique_samples={"a": 10.0, "b": 30.0},
    )
    laws.save(out / "laws.json")
    fb = FinalBudget(4.0, 4 * PILOT)
    alloc = allocate(laws, Budget(samples=fb.samples), weights={}, seed=0)
    write_allocation(out / fb.allocation, alloc)
    counts = {
        "proportional": alloc["baselines"]["proportional"]["domains"],
        "transfer_aware": alloc["domains"],
    }
    for name, per_seed in LOSS.items():
        n = {d: counts[name][d]["samples"] for d in DOMS}
        for s, final in zip(SEEDS, per_seed):
            w = RunLogWriter(out / "final" / fb.run_id(name, s))
            w.start(run_id=fb.run_id(name, s), domains=DOMS, mixture={d: n[d] / fb.samples for d in DOMS},
                    budget_samples=fb.samples, unique_samples={"a": 10, "b": 30}, seed=s)  # fmt: skip
            # one evaluation at the pilots' budget (not unseen: left out), one halfway, the final one
            for frac, loss in (
                (PILOT / fb.samples, {"a": 0.8, "b": 0.9}),
                (0.5, {"a": 0.6, "b": 0.8}),
                (1.0, final),
            ):
                seen = {d: int(round(frac * n[d])) for d in DOMS}
                w.eval(step=int(frac * 48), samples_seen=seen, loss=loss)
            w.end(status="completed", step=48)
    return out, laws, fb, counts


def test_compare_reads_the_files_and_matches_numpy(synthetic):
    out, laws, fb, counts = synthetic
    res = compare(out, [fb], SEEDS, PILOT)
    b = res["budgets"][0]
    P = np.array([[x[d] for d in DOMS] for x in LOSS["proportional"]])
    T = np.array([[x[d] for d in DOMS] for x in LOSS["transfer_aware"]])
    g = (P.sum(1) - T.sum(1)) / P.sum(1)
    lo, hi = stats.t.interval(0.95, 2, loc=g.mean(), scale=stats.sem(g))
    assert b["gain"]["sum"]["per_seed"] == pytest.approx(g.tolist())
    assert b["gain"]["sum"]["interval"] == pytest.approx([lo, hi])
    ga = (P[:, 0] - T[:, 0]) / P[:, 0]
    assert b["gain"]["a"]["mean"] == pytest.approx(ga.mean())
    # predicted gain: the laws at the samples the runs saw, per domain and summed
    Dp = np.array([[counts["proportional"][d]["samples"] for d in DOMS]], float)
    Dt = np.array([[counts["transfer_aware"][d]["samples"] for d in DOMS]], float)
    lp, lt = laws.predict(Dp)[0], laws.predict(Dt)[0]
    assert b["gain"]["sum"]["predicted"] == pytest.approx((lp.sum() - lt.sum()) / lp.sum())
    assert b["gain"]["b"]["predicted"] == pytest.approx((lp[1] - lt[1]) / lp[1])
    assert b["gain"]["sum"]["predicted_interval"] is None and b["gain"]["sum"]["overlap"] is None
    # r / MAPE over the evaluations beyond the pilot: 2 per run x 6 runs x 2 domains
    pts = np.array([[p[3], p[4]] for p in b["points"]])
    assert len(pts) == 24 and all(p[2] > PILOT for p in b["points"])
    assert b["accuracy"]["all_points"]["r"] == pytest.approx(np.corrcoef(pts[:, 0], pts[:, 1])[0, 1])
    meas_fin = np.concatenate([P.ravel(), T.ravel()])
    pred_fin = np.concatenate([np.tile(lp, 3), np.tile(lt, 3)])
    assert b["accuracy"]["final_points"]["mape"] == pytest.approx(
        100 * np.mean(np.abs(pred_fin - meas_fin) / meas_fin)
    )
    # the controls' domains are not in this study: n/a, not a failure
    assert res["transfer"]["controls"]["positive"]["passed"] is None


def test_report_renders_with_absent_fields(synthetic):
    out, *_ = synthetic
    res = compare(out, [FinalBudget(4.0, 4 * PILOT)], SEEDS, PILOT)
    md = render(res)  # no margin, identifiability, noise, timing, intervals, pilots: must not raise
    assert "CV margin over the runner-up: n/a" in md
    assert "n/a: the fit wrote no identifiability check" in md
    assert "positive control: n/a" in md
    g = res["budgets"][0]["gain"]["sum"]
    assert f"{100 * g['mean']:+.2f}%" in md and "| **all (sum)** |" in md
    assert "Total demo time: 0 s" in md
    assert "controls: positive n/a, negative n/a" in summary(res)


def test_report_shows_the_new_fields_and_flags_a_miss(synthetic):
    out, *_ = synthetic
    res = compare(out, [FinalBudget(4.0, 4 * PILOT)], SEEDS, PILOT)
    res["law"]["margin"] = {
        "runner_up": "no_transfer",
        "value": 0.0123,
        "interval": [0.004, 0.02],
        "definition": "d",
    }
    res["law"]["identifiability"] = {"a": {"ok": True, "problems": [], "suggest": []},
                                     "b": {"ok": False, "problems": ["k_ba unbounded"], "suggest": ["pair run"]}}  # fmt: skip
    res["law"]["noise"] = {"a": {"eval_se_log": 0.011, "residual_per_eval": 0.03, "residual_per_run": 0.02}}
    res["timing"] = {"stages": {"pilots": 100.0, "final_runs": 50.5}}
    chk = res["budgets"][0]["runs"]["proportional"]["check"]["a"]
    chk.update(prediction_check([0.50, 0.52, 0.49], 0.62, [0.60, 0.65]))
    md = render(res)
    assert "CV margin over the runner-up no_transfer: 0.0123 (interval [0.0040, 0.0200]; d)" in md
    assert (
        "**b**: k_ba unbounded (suggested: pair run)" in md
        and "**a**:" not in md.split("## Identifiability")[1]
    )
    assert "| a | 0.0110 | 0.0300 | 0.0200 |" in md and "Total demo time: 150 s" in md
    # the miss: 0.60 - mean(0.50, 0.52, 0.49) = 0.0967; the seeds' 95% interval of the mean
    # 0.5033 +- 4.303 * 0.0153 / sqrt(3) = [0.4654, 0.5413] does not reach 0.60: the law is biased
    assert "**a** (proportional): measured 0.5033 is 0.0967" in md
    assert "[0.4654, 0.5413]" in md and "the law is biased at this budget" in md
