"""voxmix.laws/1: the structure checks of formats.laws, and that lawfit's reader applies them."""

import json

import pytest

from voxmix.formats.laws import LawsError, read_laws, validate_laws, write_laws
from voxmix.lawfit.laws import TargetLaw
from voxmix.lawfit.lawsfile import Laws


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
