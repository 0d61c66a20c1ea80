import numpy as np
import pytest
from scipy.optimize import approx_fprime

from voxmix.lawfit.forms import FORMS
from voxmix.lawfit.laws import TargetLaw, TransferTerm, effective_data, law_value_grad

DOMS = ["a", "b", "c"]
LAW = TargetLaw(
    "b",
    E=0.3,
    A=5.0,
    alpha=0.35,
    transfer={"a": TransferTerm(0.4, 0.9), "c": TransferTerm(0.1, 1.1)},
    r_star=4.0,
    d0=150.0,
    interference={"a": 0.3, "c": -0.2},
    dbar=2000.0,
)


def _points(seed=0, n=25):
    rng = np.random.default_rng(seed)
    D = rng.uniform(0, 5000, size=(n, 3))
    D[0, 0] = 0.0  # a point with no data of a transfer source
    return D, np.array([1000.0, 800.0, 3000.0])


@pytest.mark.parametrize("name", sorted(FORMS))
@pytest.mark.parametrize("ref", [1.0, 1234.0])
def test_jacobian_matches_finite_differences(name, ref):
    form = FORMS[name]
    D, U = _points()
    others = ["a", "c"]
    th = form.pack(LAW, others, ref)
    args = (D[:, 1], D[:, [0, 2]], U[1], U[[0, 2]])
    _, J = form.evaluate(th, *args, ref=ref)
    for r in range(len(D)):
        num = approx_fprime(th, lambda t, r=r: form.evaluate(t, *args, ref=ref)[0][r], 1e-7)
        np.testing.assert_allclose(J[r], num, rtol=1e-4, atol=1e-6, err_msg=f"point {r}")


@pytest.mark.parametrize("name", sorted(FORMS))
def test_pack_unpack_roundtrip_and_prediction_agree(name):
    form = FORMS[name]
    others = ["a", "c"]
    D, U = _points(1)
    for ref in (1.0, 777.0):
        back = form.unpack(form.pack(LAW, others, ref), "b", others, ref)
        assert back.A == pytest.approx(LAW.A, rel=1e-12) and back.alpha == LAW.alpha
        if form.transfer:
            assert back.transfer["a"].k == pytest.approx(0.4, rel=1e-12)
        logL, _ = form.evaluate(form.pack(LAW, others, ref), D[:, 1], D[:, [0, 2]], U[1], U[[0, 2]], ref=ref)
        np.testing.assert_allclose(np.exp(logL), law_value_grad(back, DOMS, D, U)[0], rtol=1e-12)


def test_closed_form_of_the_transfer_law():
    D = np.array([[100.0, 400.0, 0.0]])
    law = TargetLaw("b", E=0.3, A=5.0, alpha=0.35, transfer={"a": TransferTerm(0.4, 0.9)})
    expected = 0.3 + 5.0 * (1.0 + 400.0 + 0.4 * 100.0**0.9) ** -0.35
    assert law_value_grad(law, DOMS, D)[0][0] == pytest.approx(expected, rel=1e-14)


def test_closed_form_of_the_interference_law():
    D = np.array([[100.0, 400.0, 250.0]])
    law = TargetLaw(
        "b", E=0.3, A=5.0, alpha=0.35, transfer={"a": TransferTerm(0.4, 1.0)}, d0=120.0,
        interference={"a": 0.5, "c": -0.25}, dbar=900.0,
    )  # fmt: skip
    base = 0.3 + 5.0 * (120.0 + 400.0 + 0.4 * 100.0) ** -0.35
    expected = base * np.exp((0.5 * 100.0 - 0.25 * 250.0) / (900.0 + 750.0))
    assert law_value_grad(law, DOMS, D)[0][0] == pytest.approx(expected, rel=1e-14)
    # Its own data never enters the interference numerator; a pure pilot of b sees none of it.
    assert law_value_grad(law, DOMS, np.array([[0.0, 400.0, 0.0]]))[0][0] == pytest.approx(
        0.3 + 5.0 * (120.0 + 400.0) ** -0.35, rel=1e-14
    )


def test_data_gradient_matches_finite_differences():
    D, U = _points(2)
    L, G = law_value_grad(LAW, DOMS, D, U)
    for r in range(1, len(D)):
        num = approx_fprime(D[r], lambda x: law_value_grad(LAW, DOMS, x[None], U)[0][0], 1e-3)
        np.testing.assert_allclose(G[r], num, rtol=1e-4, atol=1e-10)


def test_repetition_effective_data():
    U = 1000.0
    f, _ = effective_data(np.array([0.0, 500.0, 1000.0]), U, 5.0)
    np.testing.assert_allclose(f, [0.0, 500.0, 1000.0])  # no repetition: every sample counts
    f, _ = effective_data(np.array([2000.0, 1e9]), U, 5.0)
    assert f[0] == pytest.approx(U + U * 5.0 * (1 - np.exp(-1 / 5.0)))
    assert f[1] == pytest.approx(U * (1 + 5.0))  # infinite repetition saturates at U (1 + R*)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_prepared_law_matches_the_definition_in_a_solver_call_sequence(name):
    """`LawForm.at` keeps the last forward pass and its work arrays between calls (#18). Called as a solver
    calls it (trial values at new points, the Jacobian at the point just tried, a point revisited), every
    value must equal `law_value_grad` (the named-parameter definition) and every Jacobian a fresh
    `evaluate`'s (which test_jacobian_matches_finite_differences checks against finite differences)."""
    form = FORMS[name]
    D, U = _points(2)
    others = ["a", "c"]
    args = (D[:, 1], D[:, [0, 2]], U[1], U[[0, 2]])
    ref = 900.0
    law = form.at(*args, ref=ref)
    rng = np.random.default_rng(3)
    th0 = form.pack(LAW, others, ref)
    points = [th0 + 0.05 * rng.standard_normal(len(th0)) * (np.arange(len(th0)) != 2) for _ in range(4)]
    for th, jac in [(points[0], False), (points[0], True), (points[1], False), (points[2], True),
                    (points[1], True), (points[3], False), (points[0], True)]:  # fmt: skip
        logL, J = law(th, jac)
        expected = law_value_grad(form.unpack(th, "b", others, ref), DOMS, D, U)[0]
        np.testing.assert_allclose(np.exp(logL), expected, rtol=1e-12)
        if jac:
            np.testing.assert_allclose(J, form.evaluate(th, *args, ref=ref)[1], rtol=1e-12, atol=1e-300)
