"""lawfit report: which runs get a band, the exchange-rate intervals, the fit-curve legend, and the files.

The laws here are written down by hand (no fitting), with gamma = 1 so that the exchange rate has a closed
form: T_ij = (dL_i/dD_j) / (dL_i/dD_i) = k_ij for L_i = E + A (d0 + D_i + sum_j k_ij D_j)^-alpha.
"""

from __future__ import annotations

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest

from voxmix.lawfit.cli import main
from voxmix.lawfit.dataset import Dataset
from voxmix.lawfit.laws import TargetLaw, TransferTerm
from voxmix.lawfit.lawsfile import Laws
from voxmix.lawfit.report import band_mask, exchange_rates, run_points, write_report
from voxmix.lawfit.report_figures import RunPoints, fig_fit_curves, fig_transfer
from voxmix.lawfit.simulate import simulate_runs

DOMS = ["a", "b", "c"]
# k[(target, source)]: b's data helps a; nothing reaches c; a helps b a little.
K = {("a", "b"): 0.5, ("b", "a"): 0.2}
MIXES = {"pilot-a": (1, 0, 0), "pilot-b": (0, 1, 0), "pilot-c": (0, 0, 1), "pilot-mix0": (0.2, 0.5, 0.3)}
EVALS = [500.0, 1000.0, 2000.0, 4000.0]


def make_laws(transfer: bool, k: dict | None = None) -> Laws:
    k = K if k is None else k
    targets = {}
    for n, d in enumerate(DOMS):
        tr = {j: TransferTerm(k.get((d, j), 0.0), 1.0) for j in DOMS if j != d} if transfer else {}
        targets[d] = TargetLaw(d, E=0.3 + 0.05 * n, A=4.0, alpha=0.4, transfer=tr)
    laws = Laws(
        form="transfer" if transfer else "no_transfer",
        domains=list(DOMS),
        targets=targets,
        unique_samples={d: 1e6 for d in DOMS},
    )
    # The fitted points: each run's samples along its mixture, its losses the law's own.
    D = np.array([s * np.array(w, dtype=float) for w in MIXES.values() for s in EVALS])
    laws.fit = {
        "runs": list(MIXES),
        "data": {
            "run_ids": list(MIXES),
            "run": [r for r in range(len(MIXES)) for _ in EVALS],
            "samples_seen": D.tolist(),
            "loss": laws.predict(D).tolist(),
        },
    }
    return laws


def with_boots(laws: Laws, boots: list[dict]) -> Laws:
    """Bootstrap laws handed over directly (the file's parameter-vector layout belongs to lawfit.forms)."""
    laws.uncertainty = {"level": 0.9, "interval": "percentile"}
    laws.bootstrap_targets = lambda: boots
    return laws


def holdout_dataset(laws: Laws) -> Dataset:
    """Held-out runs with the domains in another order, one duplicate of a fitted run, and a domain the
    laws do not have ('z', never sampled)."""
    doms = ["c", "z", "b", "a"]
    mixes = {"holdout-uniform": {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, "pilot-a": {"a": 1.0}}
    D = np.array([[s * mx.get(d, 0.0) for d in doms] for mx in mixes.values() for s in EVALS])
    cols = [doms.index(d) for d in laws.domains]
    y = np.full(D.shape, np.nan)
    y[:, cols] = laws.predict(D[:, cols]) * 1.05
    n = len(D)
    return Dataset(
        domains=doms,
        run_ids=list(mixes),
        D=D,
        U=np.full(D.shape, np.inf),
        y=y,
        run=np.repeat(np.arange(len(mixes)), len(EVALS)),
        seconds_per_sample={},
        unique_samples={},
        warnings=[],
        se=np.full((n, len(doms)), np.nan),
    )


def points(runs: list[list[list[float]]]) -> RunPoints:
    """RunPoints of runs given as their samples seen (a, b, c) at each evaluation (losses unused)."""
    D = np.array([row for r in runs for row in r], dtype=float)
    run = np.repeat(np.arange(len(runs)), [len(r) for r in runs])
    return RunPoints([f"r{r}" for r in range(len(runs))], [True] * len(runs), run, D, np.ones_like(D))


def test_band_only_for_runs_whose_data_moves_the_target_off_its_floor():
    # Runs: 0 saw a only; 1 b only; 2 c only; 3 nothing at its first evaluation and b later; 4 nothing.
    pts = points(
        [
            [[1000, 0, 0], [2000, 0, 0]],
            [[0, 1000, 0], [0, 2000, 0]],
            [[0, 0, 1000], [0, 0, 2000]],
            [[0, 0, 0], [0, 500, 0]],
            [[0, 0, 0], [0, 0, 0]],
        ]
    )
    # b helps a (k = 0.5); a's help to b is negligible: with d0 = 1, L_b moves by about
    # A alpha k D / L_b = 4 * 0.4 * 1e-7 * 2000 / 4.35 = 7e-5 of itself, under the 0.5% tolerance.
    laws = make_laws(True, {("a", "b"): 0.5, ("b", "a"): 1e-7})
    expected = [
        # targets a, b, c
        [True, False, False],  # run 0: own a only
        [True, True, False],  # run 1: b helps a; own b
        [False, False, True],  # run 2: own c; c reaches nobody
        [True, True, False],  # run 3: b seen at its second evaluation
        [False, False, False],  # run 4: no data
    ]
    assert band_mask(laws, pts).tolist() == expected
    # k = 0.01 moves b's loss far from its floor (d0 + 0.01 * 2000 = 21 samples' worth instead of 1).
    assert band_mask(make_laws(True, {("a", "b"): 0.5, ("b", "a"): 0.01}), pts)[0].tolist() == [
        True,
        True,
        False,
    ]
    # Without transfer only a run's own data counts.
    assert band_mask(make_laws(False), pts).tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
        [False, True, False],
        [False] * 3,
    ]


def test_band_rule_follows_interference():
    # a's data raises c's loss (rho = 0.3, a share term); b's data neither helps nor hurts c. L_c along b's
    # run is exactly its floor (no share of a), along a's run exp(0.3 * 2000 / 3000) = 1.22 times it.
    laws = make_laws(False)
    laws.targets["c"] = replace(laws.targets["c"], interference={"a": 0.3, "b": 0.0}, dbar=1000.0)
    pts = points([[[1000, 0, 0], [2000, 0, 0]], [[0, 1000, 0], [0, 2000, 0]], [[0, 500, 0], [500, 1000, 0]]])
    assert band_mask(laws, pts)[:, 2].tolist() == [True, False, True]


def test_exchange_rate_interval_is_the_interval_of_each_bootstrap_laws_rates():
    rng = np.random.default_rng(0)
    B = 40
    ks = rng.uniform(0.1, 0.9, size=(B, 2))
    boots = [make_laws(True, {("a", "b"): kb[0], ("b", "a"): kb[1]}).targets for kb in ks]
    laws = with_boots(make_laws(True), boots)
    at = np.array([3000.0, 1000.0, 500.0])  # an uneven point: with gamma = 1, T = k wherever it is read
    hubs, T, (lo, hi) = exchange_rates(laws, at, boots)
    np.testing.assert_allclose(T, [[1, 0.5, 0], [0.2, 1, 0], [0, 0, 1]], atol=1e-12)
    # Reference: the 'percentile' rule of laws.json, 5% and 95% at Weibull positions p (B + 1), of the
    # closed-form T = k of every bootstrap law.
    for (i, j), col in (((0, 1), 0), ((1, 0), 1)):
        ref = np.quantile(ks[:, col], [0.05, 0.95], method="weibull")
        np.testing.assert_allclose([lo[i, j], hi[i, j]], ref, rtol=1e-10)
    zero = ~np.isin(np.arange(9).reshape(3, 3), [1, 3]) & ~np.eye(3, dtype=bool)
    assert np.all(lo[zero] == 0) and np.all(hi[zero] == 0)
    # The figure prints each cell's interval and centres its signed colour map at 0.
    fig = fig_transfer(laws, T, (lo, hi), float(at.sum()), 0.9, B)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"0.50\n[{lo[0, 1]:.2f}, {hi[0, 1]:.2f}]" in texts
    im = fig.axes[0].images[0]
    assert im.norm.vmin == -im.norm.vmax and im.norm.vmax >= hi[~np.eye(3, dtype=bool)].max() - 1e-12
    assert not any("no transfer" in t for t in texts)
    plt.close(fig)


def test_no_transfer_form_says_so_in_the_transfer_figure():
    laws = make_laws(False)
    _, T, iv = exchange_rates(laws, np.full(3, 1000.0), [])
    assert iv is None and np.all(T[~np.eye(3, dtype=bool)] == 0)
    fig = fig_transfer(laws, T, iv, 3000.0, 0.9, 0)
    assert any("no transfer in the chosen form (no_transfer)" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def _floor_lines(ax) -> int:
    return sum(line.get_linestyle() == "--" for line in ax.get_lines())


def test_fit_curve_legend_markers_and_bands():
    rng = np.random.default_rng(1)
    boots = [
        make_laws(True, {("a", "b"): 0.5 * s, ("b", "a"): 0.2 * s}).targets for s in rng.uniform(0.8, 1.2, 8)
    ]
    laws = with_boots(make_laws(True), boots)
    pts, notes = run_points(laws, holdout_dataset(laws))
    # pilot-a is in laws.json already: drawn once, as fitted; 'z' was never sampled, so no note about it.
    assert pts.run_ids == [*MIXES, "holdout-uniform"] and pts.fitted == [True] * 4 + [False]
    assert len(notes) == 1 and "pilot-a" in notes[0]
    np.testing.assert_allclose(pts.D[pts.run == 4][-1], [4000 / 3] * 3)
    band = band_mask(laws, pts)
    fig = fig_fit_curves(laws, pts, band, boots, 0.9)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[:5] == [
        "fitted: pilot-a",
        "fitted: pilot-b",
        "fitted: pilot-c",
        "fitted: pilot-mix0",
        "held out: holdout-uniform",
    ]
    assert "hollow square: held-out run (observed)" in texts and "90% bootstrap band (8 refits)" in texts
    assert any(t.startswith("law at its no-data floor") for t in texts)
    # Per target: one band per run whose data reaches it, a dashed floor line for every other run.
    for t, ax in enumerate(fig.axes[: len(DOMS)]):
        assert len(ax.collections) == band[:, t].sum(), DOMS[t]
        assert _floor_lines(ax) == (~band[:, t]).sum(), DOMS[t]
    # Target c: only pilot-c, the mixture and the held-out run saw c.
    assert band[:, 2].tolist() == [False, False, True, True, True]
    # Fitted markers filled, held-out ones hollow.
    marks = [line for line in fig.axes[0].get_lines() if line.get_linestyle() in ("None", "none", "")]
    assert [line.get_markerfacecolor() == "none" for line in marks] == [False] * 4 + [True]
    plt.close(fig)


def test_held_out_prefix_fitted_is_drawn_as_fitted_and_noted():
    laws = make_laws(True)
    laws.fit["runs"] = laws.fit["data"]["run_ids"] = ["holdout-x", *list(MIXES)[1:]]
    pts, notes = run_points(laws)
    assert pts.fitted == [True] * 4 and any("holdout-x" in n and "drawn as fitted" in n for n in notes)
    # Runs of fit.data missing from fit.runs are held out.
    laws.fit["runs"] = ["holdout-x", "pilot-b"]
    assert run_points(laws)[0].fitted == [True, True, False, False]


@pytest.mark.parametrize("transfer", [True, False])
def test_write_report_files(tmp_path, transfer):
    laws = make_laws(transfer)
    if transfer:
        with_boots(laws, [make_laws(True, {("a", "b"): s}).targets for s in (0.4, 0.5, 0.6, 0.55)])
    files = write_report(laws, None, tmp_path, holdout=holdout_dataset(laws))
    names = sorted(p.name for p in files)
    assert names == ["fit_curves.png", "hubs.png", "report.md", "transfer_matrix.png"]
    for p in files:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report.md").read_text()
    assert ("No transfer in the chosen form" in md) != transfer
    assert ("Band rule" in md) == transfer  # bands need bootstrap laws
    assert "| holdout-uniform | 12 |" in md  # 4 evaluations x 3 domains


def test_cli_report_with_held_out_runs(tmp_path):
    laws = make_laws(True)
    plan = {
        "format": "voxmix.plan/1",
        "domains": DOMS,
        "runs": [
            {
                "run_id": rid,
                "mixture": dict(zip(DOMS, w)),
                "budget_samples": 4000,
                "eval_at": [int(e) for e in EVALS],
                "role": role,
            }
            for rid, w, role in (
                ("pilot-a", (1, 0, 0), "fit"),
                ("holdout-uniform", (1 / 3, 1 / 3, 1 / 3), "validate"),
            )
        ],
    }
    simulate_runs(laws, plan, tmp_path / "runs", noise=0.0, seed=0)
    laws.save(tmp_path / "laws.json")
    assert (
        main(
            [
                "report",
                str(tmp_path / "laws.json"),
                "-o",
                str(tmp_path / "rep"),
                "--runs",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "hollow squares: 1 held-out run(s) (holdout-uniform)" in md
    # noise=0: the held-out run's losses are the law's own, so its log error is 0.
    assert "| holdout-uniform | 12 | 0.0000 |" in md
