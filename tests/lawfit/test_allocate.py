import numpy as np
import pytest

from voxmix.formats.allocation import validate_allocation
from voxmix.lawfit.allocate import Budget, allocate, build_problem
from voxmix.lawfit.errors import LawfitError
from voxmix.lawfit.laws import TargetLaw, TransferTerm
from voxmix.lawfit.lawsfile import Laws

T = TransferTerm


TRANSFER3 = {
    "a": TargetLaw("a", 0.3, 6.0, 0.35, {"b": T(0.5, 0.9), "c": T(0.0, 1.0)}),
    "b": TargetLaw("b", 0.4, 8.0, 0.40, {"a": T(0.7, 0.95), "c": T(0.1, 1.0)}),
    "c": TargetLaw("c", 0.5, 4.0, 0.30, {"a": T(0.0, 1.0), "b": T(0.0, 1.0)}),
}
# The interference form: b's data helps a at first and competes as its share grows (rho > 0), a's data
# lowers b's loss beyond transfer (rho < 0); d0 per target.
INTERFERENCE3 = {
    "a": TargetLaw("a", 0.3, 6.0, 0.35, {"b": T(0.5, 1.0)}, d0=200.0, interference={"b": 0.2, "c": 0.1}, dbar=4e4),
    "b": TargetLaw("b", 0.4, 8.0, 0.40, {"a": T(0.7, 1.0)}, d0=80.0, interference={"a": -0.1, "c": 0.3}, dbar=2e4),
    "c": TargetLaw("c", 0.5, 4.0, 0.30, {}, d0=300.0, interference={"a": 0.15, "b": 0.05}, dbar=6e4),
}  # fmt: skip


def _laws3(form: str) -> Laws:
    return Laws(
        form=form,
        domains=["a", "b", "c"],
        targets=TRANSFER3 if form == "transfer" else INTERFERENCE3,
        unique_samples={"a": 20000, "b": 5000, "c": 8000},
        seconds_per_sample={"a": 0.01, "b": 0.02, "c": 0.005},
    )


@pytest.fixture
def laws3():
    return _laws3("transfer")


def _grid_optimum(p, step=1000):
    """Exhaustive search over every share vector on a 1/step grid (vectorized), within the bounds."""
    i, j = np.meshgrid(np.arange(step + 1), np.arange(step + 1), indexing="ij")
    keep = i + j <= step
    X = np.stack([i[keep], j[keep], step - i[keep] - j[keep]], axis=1) / step
    ok = np.all((X >= p.lo - 1e-12) & (X <= p.hi + 1e-12), axis=1)
    X = X[ok]
    v = p.laws.predict(X * p.B / p.c) @ p.w
    b = int(np.argmin(v))
    return float(v[b]), X[b]


@pytest.mark.parametrize(
    "kw", [{}, {"max_epochs": 4.0}, {"min_share": 0.2}, {"weights": {"c": 3.0, "a": 0.5}}]
)
@pytest.mark.parametrize("form", ["transfer", "interference"])
def test_allocation_equals_brute_force_grid(form, kw):
    laws3 = _laws3(form)
    budget = Budget(samples=100_000)
    alloc = allocate(laws3, budget, **kw)
    p = build_problem(laws3, budget, **kw)
    v_grid, x_grid = _grid_optimum(p)
    x = np.array([alloc["domains"][d]["samples"] for d in laws3.domains]) / 100_000
    assert alloc["objective"]["value"] <= v_grid + 1e-9
    np.testing.assert_allclose(x, x_grid, atol=2e-3)
    assert alloc["objective"]["kkt"]["satisfied"]
    assert sum(e["samples"] for e in alloc["domains"].values()) == 100_000
    assert sum(e["weight"] for e in alloc["domains"].values()) == pytest.approx(1.0, abs=1e-12)
    for name, b in alloc["baselines"].items():  # the optimum is never worse than a feasible baseline
        xb = np.array([b["domains"][d]["samples"] for d in laws3.domains]) / 100_000
        if np.any(xb < p.lo - 1e-9) or np.any(xb > p.hi + 1e-9):
            continue  # a baseline outside the floors/caps (e.g. proportional under --min-share) may be lower
        assert b["objective"] >= alloc["objective"]["value"] - 1e-9, name
        assert b["improvement"]["raw"] >= -1e-9
    validate_allocation(alloc, "alloc")


def test_caps_and_floors_are_honoured(laws3):
    alloc = allocate(laws3, Budget(samples=100_000), max_epochs=4.0, min_share=0.1)
    for d, e in alloc["domains"].items():
        assert e["samples"] <= laws3.unique_samples[d] * 4.0
        assert e["samples"] >= 0.1 * 100_000 - 1


def test_time_budget_uses_measured_costs(laws3):
    alloc = allocate(laws3, Budget(seconds=1000.0))
    spent = sum(e["samples"] * laws3.seconds_per_sample[d] for d, e in alloc["domains"].items())
    assert 1000.0 - 0.05 <= spent <= 1000.0
    assert alloc["budget"]["seconds"] == 1000.0 and alloc["budget"]["samples"] == sum(
        e["samples"] for e in alloc["domains"].values()
    )


def test_proportional_baseline_is_proportional_to_unique_data(laws3):
    b = allocate(laws3, Budget(samples=33_000))["baselines"]["proportional"]["domains"]
    assert [b[d]["samples"] for d in "abc"] == [20000, 5000, 8000]


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"budget": Budget(samples=10**6), "max_epochs": 2.0},
            "infeasible: the budget exceeds all domains' caps",
        ),
        ({"budget": Budget(samples=1000), "min_share": 0.4}, "infeasible: --min-share"),
        ({"budget": Budget(samples=1000), "weights": {"zz": 1.0}}, "unknown domain 'zz'"),
        ({"budget": Budget(samples=1000), "weights": {"a": float("nan")}}, "finite and >= 0"),
        ({"budget": Budget(samples=1000), "max_epochs": -1.0}, "--max-epochs must be positive"),
    ],
)
def test_bad_allocation_requests(laws3, kw, match):
    budget = kw.pop("budget")
    with pytest.raises(LawfitError, match=match):
        allocate(laws3, budget, **kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"samples": -5}, "positive"),
        ({"seconds": float("nan")}, "positive"),
        ({}, "exactly one budget"),
        ({"samples": 1, "seconds": 1.0}, "exactly one"),
    ],
)
def test_bad_budgets(kw, match):
    with pytest.raises(LawfitError, match=match):
        Budget(**kw)


def test_time_budget_without_costs_is_an_error(laws3):
    laws3.seconds_per_sample = {"a": 0.01}
    with pytest.raises(LawfitError, match=r"no throughput for \['b', 'c'\]"):
        allocate(laws3, Budget(seconds=100.0))
