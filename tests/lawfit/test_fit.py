import numpy as np
import pytest

from voxmix.lawfit.dataset import build_dataset, load_runs
from voxmix.lawfit.fit import FitConfig
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.validate import validate


def test_fit_recovers_the_truth(truth, fitted):
    """5 domains, 1% noise: every alpha within 10%, every k >= 0.1 within 25%, E within 2%."""
    assert fitted.form == "transfer"
    for d in truth.domains:
        t, f = truth.targets[d], fitted.targets[d]
        assert f.alpha == pytest.approx(t.alpha, rel=0.10), d
        assert f.E == pytest.approx(t.E, rel=0.02), d
        for j, tt in t.transfer.items():
            if tt.k >= 0.1:
                assert f.transfer[j].k == pytest.approx(tt.k, rel=0.25), f"k[{d}<-{j}]"
            else:
                assert f.transfer[j].k < 0.05, f"k[{d}<-{j}] should be ~0, got {f.transfer[j].k}"


def test_form_selection_prefers_transfer_by_held_out_error(fitted):
    cv = fitted.fit["selection"]["cv_rmse_log"]
    # no repetition in the data: not a candidate
    assert set(cv) == {"no_transfer", "transfer", "interference"}
    assert cv["transfer"] < cv["no_transfer"]
    assert any("repetition" in n for n in fitted.fit["notes"])
    sel = fitted.fit["selection"]
    # The folds hold out mixtures only: every single-domain pilot stays in training.
    held = {fitted.fit["data"]["run_ids"][r] for fold in sel["folds"] for r in fold}
    assert held and not any(r.startswith("pilot-") and "mix" not in r for r in held), held
    mg = sel["margin"]
    assert mg["value"] == pytest.approx(cv[mg["runner_up"]] - cv["transfer"], rel=1e-9)
    assert mg["interval"][0] <= mg["value"] <= mg["interval"][1]


def test_bootstrap_intervals_bracket_the_resampled_laws(fitted):
    """Coverage itself is a statistical claim, tested over many studies in test_coverage.py; here: the
    intervals in laws.json are those of the stored resamples under the file's rule, and prediction
    intervals are ordered and of positive width."""
    from voxmix.lawfit.intervals import interval

    unc = fitted.uncertainty
    assert unc["interval"] == FitConfig().interval and unc["resample"] == FitConfig().bootstrap_method
    for d in fitted.domains:
        alphas = [t[d].alpha for t in fitted.bootstrap_targets()]
        want = interval(alphas, 0.9, unc["interval"], estimate=fitted.targets[d].alpha)
        assert unc["intervals"][d]["alpha"] == pytest.approx(list(want), rel=1e-9)
    lo, hi = fitted.predict_interval(np.array([[1000.0] * 5]))
    assert np.all(lo <= hi) and np.all(hi - lo > 0)


def test_laws_file_roundtrip(fitted, tmp_path):
    p = fitted.save(tmp_path / "laws.json")
    back = Laws.load(p)
    D = np.array([[100.0, 2000.0, 0.0, 50.0, 7.0]])
    np.testing.assert_allclose(back.predict(D), fitted.predict(D), rtol=1e-12)
    assert back.form == fitted.form and len(back.bootstrap_targets()) == 24


def test_held_out_budget_predictions(study_runs):
    """Fit on evaluations up to 4,000 samples, predict every later one (up to 5x further): r >= 0.99."""
    ds = build_dataset(load_runs([str(study_runs)]))
    res = validate(ds, 4000, FitConfig(progress=False))
    assert res["n_predicted_points"] > 50
    assert res["overall"]["pearson_r"] >= 0.99
    for d, s in res["per_domain"].items():
        assert s["pearson_r"] >= 0.99, d
        assert s["mape"] < 0.03, d


def test_repetition_form_wins_when_data_repeats(tmp_path):
    """A truth with repetition (small unique data, R* = 2): CV must choose the repetition form."""
    from tests.lawfit.lawfit_helpers import make_truth
    from voxmix.lawfit.laws import TargetLaw
    from voxmix.lawfit.simulate import default_design, simulate_runs
    from voxmix.lawfit.study import fit_laws

    t = make_truth(seed=5, m=2)
    t.targets = {d: TargetLaw(d, x.E, x.A, x.alpha, x.transfer, r_star=2.0) for d, x in t.targets.items()}
    t.form = "transfer_repetition"
    t.unique_samples = {d: 2000.0 for d in t.domains}
    plan = default_design(t, budget_per_run=30000, n_mixtures=4, n_evals=10, seed=1)
    simulate_runs(t, plan, tmp_path, noise=0.01, seed=1)
    laws = fit_laws(build_dataset(load_runs([str(tmp_path)])), FitConfig(bootstrap=0, progress=False))
    assert laws.form == "transfer_repetition", laws.fit["selection"]
    for d in t.domains:
        assert laws.targets[d].r_star == pytest.approx(2.0, rel=0.3)
