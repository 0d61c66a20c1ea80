"""The interference form on a simulated truth of its own family: recovery (the sign of rho included), form
selection with folds that keep the single-domain pilots, the margin, and identifiability read-outs."""

from __future__ import annotations

import numpy as np
import pytest

from voxmix.lawfit.dataset import build_dataset, load_runs
from voxmix.lawfit.fit import FitConfig
from voxmix.lawfit.laws import TargetLaw
from voxmix.lawfit.laws import TransferTerm as T
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.select import cv_folds, single_domain_runs
from voxmix.lawfit.simulate import default_design, simulate_runs
from voxmix.lawfit.study import fit_laws

DOMS = ["a", "b", "c"]
# Fixed before any fit: transfer of both kinds, competition (rho > 0), extra help (rho < 0), and zeros.
TRUTH = {
    "a": TargetLaw("a", 0.30, 6.0, 0.35, {"b": T(0.5, 1.0), "c": T(0.0, 1.0)}, d0=200.0,
                   interference={"b": 0.0, "c": 0.25}, dbar=5000.0),
    "b": TargetLaw("b", 0.40, 8.0, 0.40, {"a": T(0.3, 1.0), "c": T(0.1, 1.0)}, d0=100.0,
                   interference={"a": -0.15, "c": 0.3}, dbar=3000.0),
    "c": TargetLaw("c", 0.50, 4.0, 0.30, {"a": T(0.0, 1.0), "b": T(0.0, 1.0)}, d0=300.0,
                   interference={"a": 0.2, "b": 0.0}, dbar=8000.0),
}  # fmt: skip


def _truth() -> Laws:
    u = {d: 1e7 for d in DOMS}
    return Laws(form="interference", domains=DOMS, targets=TRUTH, unique_samples=u)


@pytest.fixture(scope="module")
def interference_fit(tmp_path_factory):
    """`lawfit plan`'s default design (3 pilots, 3 pairs, 3 held-out mixtures), 20,000 samples and 10
    evaluations per run, 1% lognormal noise; the fit runs only."""
    truth = _truth()
    plan = default_design(truth, budget_per_run=20000, n_mixtures=None, n_evals=10, seed=0)
    out = tmp_path_factory.mktemp("interference")
    simulate_runs(truth, plan, out, noise=0.01, seed=0)
    ds = build_dataset(load_runs([str(out / r["run_id"]) for r in plan["runs"] if r["role"] == "fit"]))
    return ds, fit_laws(ds, FitConfig(bootstrap=0, progress=False, seed=0))


def test_interference_form_is_chosen_and_recovers_signed_rho(interference_fit):
    """Tolerances from 10 noise seeds of this design (seeds 0-9, same script): SD of rho 0.013-0.018 for
    the asserted entries (0.046 for c<-a, whose E and alpha trade off: only its sign is asserted, its mean
    0.24 is 5 SD from 0), of k 0.011-0.02. Each bound is >= 4.4 SD from the mean, so with 10 bounds a
    correct fit fails with probability < 1e-4; the CV margin was 0.04 with RMSE 0.011 in all 10 seeds."""
    _, laws = interference_fit
    assert laws.form == "interference"
    cv = laws.fit["selection"]["cv_rmse_log"]
    assert cv["interference"] < cv["transfer"] < cv["no_transfer"]
    got = laws.targets
    assert got["a"].interference["c"] == pytest.approx(0.25, abs=0.08)
    assert got["b"].interference["a"] == pytest.approx(-0.15, abs=0.08)  # a negative rho stays negative
    assert got["b"].interference["c"] == pytest.approx(0.30, abs=0.08)
    assert got["c"].interference["a"] > 0.0
    assert abs(got["a"].interference["b"]) < 0.1 and abs(got["c"].interference["b"]) < 0.1
    assert got["a"].transfer["b"].k == pytest.approx(0.5, abs=0.1)
    assert got["b"].transfer["a"].k == pytest.approx(0.3, abs=0.06)
    assert got["a"].d0 == pytest.approx(200.0, rel=0.5)


def test_folds_keep_single_domain_pilots_in_training(interference_fit):
    ds, laws = interference_fit
    singles = {ds.run_ids[r] for r in single_domain_runs(ds)}
    assert singles == {"pilot-a", "pilot-b", "pilot-c"}
    folds, how = cv_folds(ds, FitConfig(progress=False))
    held = [ds.run_ids[r] for f in folds for r in f]
    assert sorted(held) == ["pair-a+b", "pair-a+c", "pair-b+c"] and all(len(f) == 1 for f in folds)
    assert "leave-one-mixture-out" in how
    assert laws.fit["selection"]["folds"] == [f.tolist() for f in folds]


def test_folds_fall_back_to_all_runs_without_mixtures(interference_fit):
    ds, _ = interference_fit
    singles = single_domain_runs(ds)
    only = ds.subset(np.flatnonzero(np.isin(ds.run, singles)))
    folds, how = cv_folds(only, FitConfig(progress=False, cv_folds=3))
    assert sorted(int(r) for f in folds for r in f) == sorted(int(r) for r in singles)
    assert "no mixture run" in how


def test_margin_is_runner_up_minus_winner_with_an_interval(interference_fit):
    _, laws = interference_fit
    sel = laws.fit["selection"]
    mg = sel["margin"]
    assert mg["runner_up"] == "transfer"
    assert mg["value"] == pytest.approx(sel["cv_rmse_log"]["transfer"] - sel["cv_rmse_log"]["interference"])
    lo, hi = mg["interval"]
    assert lo <= mg["value"] <= hi and lo > 0


def test_identifiability_names_the_missing_run(interference_fit):
    """Without the pair a+b, a's transfer from b and its interference cannot be told apart: the read-out
    names target a and the run that would fix it."""
    ds, _ = interference_fit
    keep = [r for r, rid in enumerate(ds.run_ids) if rid != "pair-a+b"]
    part = ds.subset(np.flatnonzero(np.isin(ds.run, keep)))
    laws = fit_laws(part, FitConfig(bootstrap=0, progress=False, forms=("interference",)))
    ident = laws.fit["identifiability"]
    assert not ident["a"]["ok"]
    assert any("pair-a+b" in s for s in ident["a"]["suggest"]), ident["a"]
    assert any("pair-a+b" in p for p in ident["a"]["problems"])


def test_noise_is_recorded_from_the_logged_standard_errors(interference_fit):
    _, laws = interference_fit
    for d in DOMS:
        n = laws.fit["noise"][d]
        # simulate_runs logs se/loss = the simulated noise, 0.01 exactly.
        assert n["eval_se_log"] == pytest.approx(0.01, rel=1e-9) and n["met"]
        assert n["sigma_log"] == n["eval_se_log"]


def test_laws_file_roundtrip_keeps_d0_and_interference(interference_fit, tmp_path):
    _, laws = interference_fit
    back = Laws.load(laws.save(tmp_path / "laws.json"))
    assert back.targets["b"].interference == laws.targets["b"].interference
    assert back.targets["b"].d0 == laws.targets["b"].d0 and back.targets["b"].dbar == laws.targets["b"].dbar
    D = np.array([[100.0, 2000.0, 50.0], [0.0, 0.0, 9000.0]])
    np.testing.assert_allclose(back.predict(D), laws.predict(D), rtol=1e-12)


def test_fit_weighs_points_by_their_measured_noise(interference_fit):
    """A point's residual is divided by its relative noise (se/y over the target's median, floored at a
    tenth of it; 1 for points without se), then Huber-ed: checked against a NumPy reference."""
    from dataclasses import replace

    from voxmix.lawfit.fit import _objective, _problem, point_scale, reference_scale
    from voxmix.lawfit.forms import FORMS

    ds, laws = interference_fit
    se = ds.se.copy()
    rng = np.random.default_rng(5)
    se[:, 0] *= rng.uniform(0.01, 20.0, size=len(se))  # from far below to far above typical
    se[3, 0] = np.nan  # no measurement: counts as typical
    ds2 = replace(ds, se=se)
    pts = ds2.target_points(0)
    rel = se[pts, 0] / ds2.y[pts, 0]
    med = np.nanmedian(rel)
    want = np.where(np.isnan(rel), med, np.maximum(rel, 0.1 * med)) / med
    np.testing.assert_allclose(point_scale(ds2, 0, pts), want, rtol=1e-12)

    form, prob = FORMS["interference"], _problem(ds2, 0)
    ref = reference_scale(prob)
    th = form.pack(laws.targets["a"], ["b", "c"], ref)
    logL, _ = form.evaluate(th, *prob[:4], ref=ref)
    r = (logL - np.log(ds2.y[pts, 0])) / want
    delta = 0.01
    huber = np.where(np.abs(r) <= delta, 0.5 * r**2 / delta, np.abs(r) - 0.5 * delta).mean()
    idx, ctr = form.ridge(2, ref)
    ridge = 1e-5 * float(((th[idx] - ctr) ** 2).sum())
    assert _objective(th, form, prob, delta, ref)[0] == pytest.approx(huber + ridge, rel=1e-12)
