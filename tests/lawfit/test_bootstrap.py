"""The pieces behind the intervals: quantile positions, the noise model, resampling, warm refits."""

import tempfile

import numpy as np
import pytest

from voxmix.lawfit.bootstrap import fitted_curves, noise_model, parametric_resample
from voxmix.lawfit.dataset import Dataset, build_dataset, load_runs
from voxmix.lawfit.errors import LawfitError
from voxmix.lawfit.fit import FitConfig, _objective, _problem, fit_forms, fit_target
from voxmix.lawfit.forms import FORMS
from voxmix.lawfit.intervals import bias_corrected_interval, interval, percentile_interval
from voxmix.lawfit.simulate import default_design, random_laws, simulate_runs


@pytest.mark.parametrize("B", [24, 100])
def test_weibull_positions_cover_a_new_draw_at_the_level(B):
    """Closed form: for B iid Uniform(0, 1) draws and one more, the new draw falls below the value at
    (fractional) order position h with probability h / (B + 1) (exact for the uniform, where F is linear,
    so interpolating between order statistics interpolates their expected quantiles). Weibull positions
    p (B + 1) give 0.9 exactly; NumPy's linear default, positions p (B - 1) + 1, gives 0.9 (B - 1) / (B + 1):
    0.828 at B = 24, 0.882 at B = 100. 20,000 sets: the standard error of a coverage near 0.9 is 0.0021;
    the tolerance 0.0075 is 3.5 of them (a correct rule fails with probability 4.6e-4)."""
    rng = np.random.default_rng(0)
    n = 20000
    draws = rng.uniform(size=(n, B))
    new = rng.uniform(size=n)
    lo, hi = percentile_interval(draws, 0.9, axis=1)
    assert np.mean((lo <= new) & (new <= hi)) == pytest.approx(0.9, abs=0.0075)
    lo, hi = percentile_interval(draws, 0.9, axis=1, rule="linear")
    assert np.mean((lo <= new) & (new <= hi)) == pytest.approx(0.9 * (B - 1) / (B + 1), abs=0.0075)


@pytest.mark.parametrize("bias", [0.0, 0.5])
def test_bias_corrected_interval_undoes_a_shift_the_bootstrap_shares(bias):
    """Closed form: truth 0, estimate = bias + Z, bootstrap draws = estimate + bias + Z_i (the bootstrap
    world repeats the estimator's bias). The percentile interval covers 0 iff |2 bias + Z| <= 1.645:
    Phi(1.645 - 2 bias) - Phi(-1.645 - 2 bias) = 0.736 at bias 0.5. BC reads z0 = -bias off the draws and
    covers 0 with probability 0.9 as B grows (at B = 100 the noise of z0 and of the far tail cost about
    0.02; the coverage study measures lawfit at its own B). 5,000 trials of B = 2,000: the coverage's SE
    is 0.0042; tolerance 0.015 = 3.5 SE (a correct rule fails with probability 4.6e-4)."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    n, B = 5000, 2000
    est = bias + rng.standard_normal(n)
    draws = est[:, None] + bias + rng.standard_normal((n, B))
    lo, hi = bias_corrected_interval(draws, est, 0.9, axis=1)
    assert np.mean((lo <= 0) & (0 <= hi)) == pytest.approx(0.9, abs=0.015)
    lo, hi = percentile_interval(draws, 0.9, axis=1)
    want = norm.cdf(1.6449 - 2 * bias) - norm.cdf(-1.6449 - 2 * bias)
    assert np.mean((lo <= 0) & (0 <= hi)) == pytest.approx(want, abs=0.015)
    # no bias in the draws: BC is the percentile interval
    sym = rng.standard_normal((5, 101))
    np.testing.assert_allclose(
        interval(sym, 0.9, "bc", estimate=np.median(sym, axis=1), axis=1),
        percentile_interval(sym, 0.9, axis=1),
    )
    with pytest.raises(ValueError, match="point estimate"):
        interval(sym, 0.9, "bc")


def _dataset_with_noise(sig_e, sig_u, n_runs=200, n_evals=10, seed=0) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    run = np.repeat(np.arange(n_runs), n_evals)
    n = len(run)
    logfit = np.log(np.full((n, 2), 0.5))
    noise = rng.standard_normal((n, 2)) * sig_e + rng.standard_normal((n_runs, 2))[run] * sig_u
    ds = Dataset(
        ["a", "b"],
        [f"r{i}" for i in range(n_runs)],
        np.ones((n, 2)),
        np.full((n, 2), np.inf),
        np.exp(logfit + noise),
        run,
        {},
        {},
        [],
    )
    return ds, logfit


def test_noise_model_recovers_per_run_and_per_evaluation_noise():
    """200 runs x 10 evaluations, sigma_e = 0.01, sigma_u = 0.02 (domain a) and 0 (domain b).
    Standard errors: sigma_e ~0.01 / sqrt(2 * 1800) = 1.7e-4 (tolerance 10% = 6 SE); sigma_u from 200 run
    means, relative SE ~5% (tolerance 20% = 4 SE); sigma_u = 0 stays below 0.004 (the run-mean spread
    from sigma_e alone is 0.0032, and sigma_u^2 is what is left beyond it: at most a few 1e-3 by chance)."""
    ds, logfit = _dataset_with_noise(np.array([0.01, 0.01]), np.array([0.02, 0.0]))
    sig_e, sig_u = noise_model(ds, np.log(ds.y) - logfit)
    assert sig_e == pytest.approx([0.01, 0.01], rel=0.10)
    assert sig_u[0] == pytest.approx(0.02, rel=0.20)
    assert sig_u[1] < 0.004


def test_noise_model_is_unbiased_when_the_fit_absorbs_run_offsets():
    """A linear fit whose parameters include one dummy per run for 10 of 40 runs (as a domain's
    single-domain run alone identifies its own law) plus an intercept and a slope: those runs' offsets
    vanish from the residuals. Over 300 repetitions the mean estimate of sigma_u^2 must match the truth
    within 4 Monte Carlo standard errors (a correct estimator fails with probability 6e-5), where the
    plain between-run variance of the residuals reads it at least 20% low."""
    rng = np.random.default_rng(2)
    G, n_g, sig_e, sig_u = 40, 8, 0.01, 0.02
    run = np.repeat(np.arange(G), n_g)
    t = np.tile(np.linspace(0, 1, n_g), G)
    X = np.column_stack([np.ones(G * n_g), t] + [(run == g).astype(float) for g in range(10)])
    est, naive = [], []
    for _ in range(300):
        eps = rng.standard_normal(G)[run] * sig_u + rng.standard_normal(G * n_g) * sig_e
        r = eps - X @ np.linalg.lstsq(X, eps, rcond=None)[0]
        ds = Dataset(
            ["a"],
            [str(g) for g in range(G)],
            np.ones((len(r), 1)),
            np.ones((len(r), 1)),
            np.exp(r)[:, None],
            run,
            {},
            {},
            [],
        )
        se, su = noise_model(ds, r[:, None], [X])
        est.append(su[0] ** 2)
        means = np.bincount(run, weights=r) / n_g
        naive.append(np.var(means) - sig_e**2 / n_g)
    est = np.array(est)
    assert abs(est.mean() - sig_u**2) < 4 * est.std() / np.sqrt(len(est)), (est.mean(), sig_u**2)
    assert np.mean(naive) < 0.8 * sig_u**2


def test_noise_model_ignores_one_broken_evaluation():
    """One evaluation 50% off (log residual 0.4) must not inflate sigma_e by more than 10% (unclipped it
    adds 0.4^2 / 1800 to sigma_e^2 = 1e-4: sigma_e would read 0.0141 instead of 0.01)."""
    ds, logfit = _dataset_with_noise(np.array([0.01, 0.01]), np.array([0.0, 0.0]))
    clean = noise_model(ds, np.log(ds.y) - logfit)[0][0]
    ds.y[5, 0] *= np.exp(0.4)
    broken = noise_model(ds, np.log(ds.y) - logfit)[0][0]
    assert broken < 1.1 * clean


def _small_study(seed=4, noise=0.01, m=3):
    truth = random_laws(m, seed)
    plan = default_design(truth, budget_per_run=20000, n_mixtures=4, n_evals=8, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        simulate_runs(truth, plan, tmp, noise=noise, seed=seed)
        ds = build_dataset(load_runs([tmp]))
    return truth, ds


def test_resamples_keep_the_design_and_the_missing_points():
    """A parametric resample keeps every run and point (nan stays nan) and adds noise of the given size
    around the fitted curves: with sigma_u only, every run of a domain is shifted by one offset."""
    truth, ds = _small_study()
    ds.y[3, 1] = np.nan  # a point where one domain was not evaluated
    cfg = FitConfig(forms=("transfer",), bootstrap=0, workers=1, progress=False)
    ff = fit_forms(ds, cfg)[0]["transfer"]
    logfit, resid, jacs = fitted_curves(ds, ff)
    assert np.isnan(resid[3, 1]) and [J.shape[0] for J in jacs] == [
        len(ds.target_points(i)) for i in range(3)
    ]
    rng = np.random.default_rng(0)
    p = parametric_resample(ds, logfit, np.zeros(3), np.full(3, 0.01), rng)
    np.testing.assert_array_equal(p.D, ds.D)
    np.testing.assert_array_equal(p.run, ds.run)
    assert np.isnan(p.y[3, 1]) and np.isfinite(np.delete(p.y.ravel(), 3 * 3 + 1)).all()
    shift = np.log(p.y) - logfit
    for g in np.unique(ds.run):
        for i in range(3):
            vals = shift[(ds.run == g) & np.isfinite(shift[:, i]), i]
            assert np.allclose(vals, vals[0])


def test_a_warm_started_refit_reaches_the_cold_fits_optimum():
    """The bug behind #12: warm-started refits (bootstrap, cross-validation) stopped a few steps from the
    start, so the bootstrap barely moved. On fresh noise, a refit from the old optimum must reach the
    objective of a full multi-start fit (to 1e-6 relative) and the same parameters."""
    truth, ds = _small_study()
    cfg = FitConfig(forms=("transfer",), bootstrap=0, workers=1, progress=False)
    ff = fit_forms(ds, cfg)[0]["transfer"]
    logfit = fitted_curves(ds, ff)[0]
    fresh = parametric_resample(ds, logfit, np.full(3, 0.01), np.full(3, 0.005), np.random.default_rng(1))
    form = FORMS["transfer"]
    for i, d in enumerate(ds.domains):
        warm = fit_target(form, fresh, i, cfg, init=[ff.targets[d].theta], ref=ff.targets[d].ref)
        cold = fit_target(form, fresh, i, cfg, ref=ff.targets[d].ref)
        assert warm.objective == pytest.approx(cold.objective, rel=1e-6), d
        assert warm.law.alpha == pytest.approx(cold.law.alpha, rel=1e-3), d
        assert warm.law.E == pytest.approx(cold.law.E, rel=1e-3), d
        # and the start was not already the optimum: the refit moved
        start = _objective(ff.targets[d].theta, form, _problem(fresh, i), cfg.huber_delta, warm.ref)[0]
        assert start > warm.objective * (1 + 1e-4), d


def test_bootstrap_method_is_validated_and_recorded(tmp_path):
    with pytest.raises(LawfitError, match="bootstrap_method"):
        FitConfig(bootstrap_method="jackknife")
    from voxmix.lawfit.study import fit_laws

    _, ds = _small_study()
    for method in ("runs", "parametric"):
        laws = fit_laws(ds, FitConfig(bootstrap=8, bootstrap_method=method, workers=1, progress=False))
        unc = laws.uncertainty
        assert unc["resample"] == method and unc["interval"] == FitConfig().interval and unc["n"] == 8
        assert all(len(unc["samples"][d]) == 8 for d in laws.domains)


def test_run_noise_shifts_whole_runs_and_leaves_the_iid_stream_alone(tmp_path):
    truth = random_laws(2, 0)
    plan = default_design(truth, budget_per_run=2000, n_mixtures=2, n_evals=5, seed=0)
    runs = {}
    for name, kw in {
        "old": {},
        "zero": {"run_noise": 0.0},
        "shift": {"noise": 0.0, "run_noise": 0.05},
    }.items():
        simulate_runs(truth, plan, tmp_path / name, seed=3, **kw)
        runs[name] = build_dataset(load_runs([str(tmp_path / name)]))
    np.testing.assert_array_equal(runs["old"].y, runs["zero"].y)
    s = runs["shift"]
    ratio = np.log(s.y / truth.predict(s.D))
    for g in np.unique(s.run):
        r = ratio[s.run == g]
        assert np.allclose(r, r[0], atol=1e-9)  # one offset per run and domain
    assert np.std(ratio) > 0.01
    with pytest.raises(LawfitError, match="run-noise"):
        simulate_runs(truth, plan, tmp_path / "bad", run_noise=-1.0)
