import numpy as np

from voxmix.lawfit.dataset import build_dataset, load_runs
from voxmix.lawfit.fit import FitConfig
from voxmix.lawfit.hubs import hub_analysis
from voxmix.lawfit.laws import TargetLaw, TransferTerm
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.simulate import default_design, simulate_runs
from voxmix.lawfit.study import fit_laws


def hub_truth() -> Laws:
    """`hub` helps every non-island domain a lot; `island` gives and takes nothing; a and b a little."""
    doms = ["a", "b", "hub", "island"]
    k = {("a", "hub"): 0.6, ("b", "hub"): 0.6, ("a", "b"): 0.1, ("b", "a"): 0.1, ("hub", "a"): 0.1}
    targets = {}
    for i, d in enumerate(doms):
        tr = {j: TransferTerm(k.get((d, j), 0.0), 1.0) for j in doms if j != d}
        targets[d] = TargetLaw(d, E=0.3 + 0.05 * i, A=5.0, alpha=0.35, transfer=tr)
    return Laws(form="transfer", domains=doms, targets=targets, unique_samples={d: 1e7 for d in doms})


def test_exchange_rate_closed_form_with_gamma_one():
    laws = hub_truth()
    h = hub_analysis(laws, np.full(4, 5000.0))
    # With gamma = 1 the exchange rate T_ij is k_ij exactly, whatever the point.
    assert abs(h["exchange_rate"]["a"]["hub"] - 0.6) < 1e-12
    assert abs(h["out_strength"]["hub"] - (0.6 + 0.6 + 0.0) / 3) < 1e-12


def test_hubs_and_islands_classified_as_the_truth_says(tmp_path):
    truth = hub_truth()
    at = np.full(4, 25000.0)
    expected = {"a": "intermediate", "b": "intermediate", "hub": "hub", "island": "island"}
    assert hub_analysis(truth, at)["class"] == expected
    plan = default_design(truth, budget_per_run=20000, n_mixtures=4, n_evals=8, seed=2)
    simulate_runs(truth, plan, tmp_path, noise=0.01, seed=2)
    fitted = fit_laws(build_dataset(load_runs([str(tmp_path)])), FitConfig(bootstrap=0, progress=False))
    assert hub_analysis(fitted, at)["class"] == expected
