import json
import math

import pytest

from tests.trainer.data.data_helpers import manifest_with
from voxmix.formats.allocation import (
    FORMAT,
    AllocationError,
    make_allocation,
    parse_allocation,
    read_allocation,
)
from voxmix.trainer.data.allocation import validate_allocation


def _alloc(domains, budget=None, **extra):
    total = sum(v["samples"] for v in domains.values()) if budget is None else budget
    return {"format": FORMAT, "budget": {"samples": total}, "domains": domains, **extra}


def test_read_valid_allocation_ignores_extra_keys(tmp_path):
    obj = _alloc(
        {"mri_brain": {"weight": 0.69, "samples": 690}, "ct_abdomen": {"weight": 0.31, "samples": 310}},
        predicted_loss={"ct_abdomen": 0.4},
        objective={"kind": "mean"},
    )
    obj["budget"]["seconds"] = 3600
    p = tmp_path / "allocation.json"
    p.write_text(json.dumps(obj))
    a = read_allocation(p)
    assert a.domains == ["ct_abdomen", "mri_brain"]
    assert a.weights == {"ct_abdomen": 0.31, "mri_brain": 0.69}
    assert a.samples == {"ct_abdomen": 310, "mri_brain": 690} and a.total == 1000
    assert a.domain_id("mri_brain") == 1
    assert a.extra["objective"] == {"kind": "mean"}
    assert parse_allocation(a.to_json()) == parse_allocation(obj)


@pytest.mark.parametrize(
    "domains, budget, expect",
    [
        ({"a": {"weight": 0.5, "samples": 5}, "b": {"weight": 0.4, "samples": 5}}, None, "sum to 1"),
        ({"a": {"weight": -0.1, "samples": 0}, "b": {"weight": 1.1, "samples": 10}}, None, "'a'.*'weight'"),
        (
            {"a": {"weight": math.nan, "samples": 0}, "b": {"weight": 1.0, "samples": 10}},
            None,
            "'a'.*'weight'",
        ),
        ({"a": {"weight": 0.5, "samples": -5}, "b": {"weight": 0.5, "samples": 15}}, None, "'a'.*'samples'"),
        ({"a": {"weight": 0.5, "samples": 5.5}, "b": {"weight": 0.5, "samples": 5}}, 10, "'a'.*'samples'"),
        (
            {"a": {"weight": 0.5, "samples": 5}, "b": {"weight": 0.5, "samples": 5}},
            11,
            "budget.samples' is 11",
        ),
        ({}, 0, "'domains'"),
    ],
)
def test_bad_allocations(domains, budget, expect):
    with pytest.raises(AllocationError, match=expect):
        parse_allocation(_alloc(domains, budget))


def test_bad_format_and_file(tmp_path):
    with pytest.raises(AllocationError, match="field 'format'"):
        parse_allocation({"format": "voxmix.allocation/2"})
    p = tmp_path / "a.json"
    p.write_text("{")
    with pytest.raises(AllocationError, match="a.json: line 1: invalid JSON"):
        read_allocation(p)


def test_make_allocation_exact_total():
    a = make_allocation({"a": 1, "b": 1, "c": 1}, 100)
    assert sum(a.samples.values()) == 100 and sorted(a.samples.values()) == [33, 33, 34]
    assert abs(sum(a.weights.values()) - 1) < 1e-12
    with pytest.raises(AllocationError, match="'b'"):
        make_allocation({"a": 1.0, "b": -1.0}, 10)


def test_validate_against_manifest():
    m = manifest_with({"ct": 4, "mri": 2}, val=1)
    ok = make_allocation({"ct": 0.5, "mri": 0.5}, 10)
    assert validate_allocation(ok, m) == {"ct": 4, "mri": 2}
    with pytest.raises(AllocationError, match="domain 'pet' is not in the manifest"):
        validate_allocation(make_allocation({"ct": 0.5, "pet": 0.5}, 10), m)
    # A domain that has only validation volumes is empty for training.
    m2 = manifest_with({"ct": 4}, val=0)
    m2.records.extend(manifest_with({"mri": 0}, val=2).records)
    with pytest.raises(AllocationError, match="domain 'mri' has 5 samples allocated but no 'train' volumes"):
        validate_allocation(make_allocation({"ct": 0.5, "mri": 0.5}, 10), m2)
    # Caps: mri has 2 train volumes; 5 samples need 2.5 epochs.
    validate_allocation(ok, m, max_epochs=2.5)
    with pytest.raises(
        AllocationError, match="domain 'mri': field 'samples' = 5 exceeds its cap of 2 volumes"
    ):
        validate_allocation(ok, m, max_epochs=2)
