"""Dataset.se: the run log's per-point standard errors, in the rows and columns of y, carried by every
way a Dataset is cut or resampled."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lawfit.lawfit_helpers import make_truth
from voxmix.formats.runlog import RunLogWriter
from voxmix.lawfit.bootstrap import parametric_resample
from voxmix.lawfit.dataset import Dataset, build_dataset, load_runs
from voxmix.lawfit.simulate import default_design, simulate_runs


def _write_run(path, run_id: str, evals: list[tuple[dict, dict | None]]) -> None:
    w = RunLogWriter(path)
    w.start(run_id=run_id, domains=["a", "b"], mixture={"a": 0.5, "b": 0.5}, budget_samples=100,
            unique_samples={"a": 50, "b": 50}, seed=0)  # fmt: skip
    for k, (loss, se) in enumerate(evals):
        w.eval(step=k + 1, samples_seen={"a": 10 * (k + 1), "b": 10 * (k + 1)}, loss=loss, loss_se=se)
    w.end(status="completed", step=len(evals))


def test_build_dataset_places_se_like_y_and_nan_where_not_logged(tmp_path):
    _write_run(
        tmp_path / "r0", "r0", [({"a": 0.5, "b": 0.8}, {"a": 0.01, "b": 0.02}), ({"a": 0.4}, {"a": 0.005})]
    )
    # r1: an old log without loss_se, and one event with it for one domain only.
    _write_run(tmp_path / "r1", "r1", [({"a": 0.6, "b": 0.9}, None), ({"a": 0.3, "b": 0.7}, {"b": 0.03})])
    ds = build_dataset(load_runs([str(tmp_path / "r0"), str(tmp_path / "r1")]))
    assert ds.domains == ["a", "b"] and ds.se.shape == ds.y.shape == (4, 2)
    expected = np.array([[0.01, 0.02], [0.005, np.nan], [np.nan, np.nan], [np.nan, 0.03]])
    np.testing.assert_array_equal(ds.se, expected)
    # A domain subset keeps the chosen columns.
    only_b = build_dataset(load_runs([str(tmp_path / "r0"), str(tmp_path / "r1")]), domains=["b"])
    np.testing.assert_array_equal(only_b.se, expected[:, [1]])


def _tagged(n_runs: int = 6, per_run: int = 3) -> Dataset:
    """se = y * tag with a tag unique to each cell: a row or column mixed up shows as a wrong tag."""
    run = np.repeat(np.arange(n_runs), per_run)
    n = len(run)
    y = np.exp(np.random.default_rng(0).normal(size=(n, 2)))
    tag = (np.arange(2 * n).reshape(n, 2) + 1) * 1e-3
    return Dataset(["a", "b"], [f"r{i}" for i in range(n_runs)], np.ones((n, 2)), np.full((n, 2), np.inf), y,
                   run, {}, {}, [], se=y * tag)  # fmt: skip


def test_subset_and_resample_runs_carry_se_with_their_rows():
    ds = _tagged()
    tag = ds.se / ds.y
    rows = np.array([5, 0, 0, 17])
    sub = ds.subset(rows)
    np.testing.assert_allclose(sub.se / sub.y, tag[rows], rtol=1e-12)
    boot = ds.resample_runs(np.random.default_rng(1))
    assert len(boot.run) == len(ds.run)
    # Each resampled row is one original row: find it by its y and check its se came along.
    for i in range(len(boot.run)):
        (j,) = np.flatnonzero((ds.y == boot.y[i]).all(axis=1))
        np.testing.assert_allclose(boot.se[i], ds.se[j], rtol=0)
        assert ds.run[j] == boot.run[i]


def test_parametric_resample_keeps_se_and_the_default_is_nan():
    ds = _tagged()
    logfit = np.log(ds.y)
    new = parametric_resample(ds, logfit, np.full(2, 0.01), np.zeros(2), np.random.default_rng(0))
    assert not np.array_equal(new.y, ds.y)  # new noise was drawn ...
    np.testing.assert_array_equal(new.se, ds.se)  # ... the measured errors stay the run log's
    plain = Dataset(
        ["a"], ["r"], np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)), np.zeros(3, int), {}, {}, []
    )
    assert plain.se.shape == (3, 1) and np.isnan(plain.se).all()
    assert np.isnan(plain.subset(np.array([2, 0])).se).all()
    with pytest.raises(ValueError, match="field 'se'"):
        Dataset(["a"], ["r"], np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)), np.zeros(3, int), {}, {}, [],
                se=np.ones((2, 1)))  # fmt: skip


def test_simulated_logs_carry_se_equal_to_the_per_evaluation_noise(tmp_path):
    truth = make_truth(m=2)
    plan = default_design(truth, budget_per_run=2000, n_mixtures=2, n_evals=4, seed=0)
    simulate_runs(truth, plan, tmp_path, noise=0.03, run_noise=0.05, seed=0)
    ds = build_dataset(load_runs([str(tmp_path)]))
    seen = np.isfinite(ds.y)
    assert seen.any() and np.array_equal(np.isfinite(ds.se), seen)
    np.testing.assert_allclose(ds.se[seen] / ds.y[seen], 0.03, rtol=1e-12)
