"""voxmix.laws/1: the structure checks of formats.laws, and that lawfit's reader applies them."""

import json

import pytest

from voxmix.formats.laws import LawsError, read_laws, validate_laws, write_laws
from voxmix.lawfit.errors import LawfitError
from voxmix.lawfit.laws import TargetLaw
from voxmix.lawfit.lawsfile import Laws


def _data(**change) -> dict:
    """A valid `fit.data` of two domains and one point, with `change` applied."""
    return {"run_ids": ["r1"], "run": [0], "samples_seen": [[1.0, 0.0]], "loss": [[0.5, None]], **change}


def _laws() -> dict:
    targets = {d: TargetLaw(target=d, E=0.5, A=2.0, alpha=0.3, transfer={}) for d in ("a", "b")}
    return Laws(form="no_transfer", domains=["a", "b"], targets=targets).to_json()


def test_round_trip_through_the_writer_and_both_readers(tmp_path):
    obj = _laws()
    write_laws(tmp_path / "laws.json", obj)
    assert read_laws(tmp_path / "laws.json") == json.loads(json.dumps(obj))
    laws = Laws.load(tmp_path / "laws.json")
    assert laws.domains == ["a", "b"] and laws.targets["b"].alpha == 0.3


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda o: o.update(format="voxmix.laws/0"), "field 'format'"),
        (lambda o: o.update(domains=["a", "a"]), "duplicate names"),
        (lambda o: o["targets"].pop("b"), r"no law for domain\(s\) \['b'\]"),
        (lambda o: o["targets"].update(c={}), "field 'targets.c': unknown domain"),
        (lambda o: o.update(d0=0), "field 'd0'"),
        (lambda o: o.update(unique_samples={"a": -1}), r"field 'unique_samples.a'"),
        (lambda o: o.update(alternatives=[]), "field 'alternatives'"),
        # #15: JSON's 1e999 is inf; the fit and uncertainty blocks are read by allocate and report.
        (lambda o: o.update(seconds_per_sample={"a": float("inf")}), r"'seconds_per_sample.a'.* got inf"),
        (lambda o: o.update(d0=float("inf")), r"field 'd0': expected a positive finite number, got inf"),
        (lambda o: o.update(fit=5), r"field 'fit': expected an object, got int"),
        (lambda o: o["fit"].update(runs="r1"), r"field 'fit.runs'"),
        (lambda o: o["fit"].update(data=_data(run=[3])), r"field 'fit.data.run': expected indices"),
        (
            lambda o: o["fit"].update(data=_data(loss=[[0.5, "x"]])),
            r"field 'fit.data.loss\[0\]': invalid value 'x'",
        ),
        (
            lambda o: o["fit"].update(data=_data(samples_seen=[[1.0]])),
            r"'fit.data.samples_seen\[0\]': expected a row of 2",
        ),
        (
            lambda o: o.update(uncertainty={"level": 7}),
            r"field 'uncertainty.level': expected a number in \(0, 1\)",
        ),
        (lambda o: o.update(uncertainty={"interval": "median"}), r"field 'uncertainty.interval'"),
        (lambda o: o.update(uncertainty={"samples": {"a": [[1.0]]}}), r"no draws for domain\(s\) \['b'\]"),
        (
            lambda o: o.update(uncertainty={"samples": {"a": [[1.0, float("nan")]], "b": [[1.0, 2.0]]}}),
            r"field 'uncertainty.samples.a\[0\]': invalid value nan",
        ),
        (lambda o: o.update(uncertainty={"intervals": {"a": {"E": [1.0]}}}), r"'uncertainty.intervals.a.E'"),
    ],
)
def test_bad_structure_is_named(tmp_path, edit, match):
    obj = _laws()
    edit(obj)
    with pytest.raises(LawsError, match=match):
        validate_laws(obj, "laws.json")
    (tmp_path / "laws.json").write_text(json.dumps(obj))
    with pytest.raises(LawsError, match=match):
        Laws.load(tmp_path / "laws.json")
    with pytest.raises(LawsError):
        write_laws(tmp_path / "out.json", obj)
    assert not (tmp_path / "out.json").exists()


def test_a_bootstrap_draw_of_the_wrong_length_is_named(tmp_path):
    obj = _laws()
    n = 4  # the no_transfer form: log E, log A, alpha, log d0
    obj["uncertainty"] = {"samples": {"a": [[0.0] * (n + 1)], "b": [[0.0] * (n + 1)]}}
    (tmp_path / "laws.json").write_text(json.dumps(obj))
    with pytest.raises(
        LawfitError,
        match=r"'uncertainty.samples.a': a draw of form 'no_transfer' over 2 domains has 4 parameters, got 5",
    ):
        Laws.load(tmp_path / "laws.json")
