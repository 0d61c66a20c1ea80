"""The evaluation protocol: report statistics by hand, and `python -m trainer.evaluate_encoders` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as st

from tests.trainer.downstream.downstream_helpers import make_encoder
from voxmix.formats.io import atomic_write_json
from voxmix.trainer import evaluate_encoders
from voxmix.trainer.downstream import report
from voxmix.trainer.downstream.evaluate import INTENSITY


def _values(control_shift: float, seeds: int = 5) -> dict:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.6, size=seeds).tolist()
    other = rng.uniform(0.4, 0.6, size=seeds).tolist()
    return {
        INTENSITY: {"anatomy/a/probe": base, "context/a/lesion": other},
        "random": {"anatomy/a/probe": base, "context/a/lesion": other},
        "control": {"anatomy/a/probe": [v + control_shift for v in base], "context/a/lesion": other},
    }


def test_positive_control_is_separated_only_when_it_is_better():
    # A constant shift has a zero-variance difference: t is infinite, p = 0 (scipy's convention).
    sep = report.positive_control(_values(0.05), 0.95, 0.05)
    assert sep["counts"] and sep["separated_on"] == ["anatomy/a/probe"] == sep["separated_on_probe"]
    worse = report.positive_control(_values(-0.05), 0.95, 0.05)
    assert not worse["counts"]  # significant, but in the random encoder's favour: not a separation
    assert worse["random_better_on"] == ["anatomy/a/probe"]
    same = report.positive_control(_values(0.0), 0.95, 0.05)
    assert not same["counts"] and same["family"] == 2


def test_mixture_and_per_domain_tables_by_hand():
    rng = np.random.default_rng(1)
    values = {n: {} for n in ("p-s0", "p-s1", "p-s2", "t-s0", "t-s1", "t-s2")}
    for d in ("a", "b", "c"):
        for n in values:
            values[n][f"anatomy/{d}/probe"] = rng.uniform(0.5, 0.7, size=4).tolist()
    mix = report.mixtures(values, {"p": ["p-s0", "p-s1", "p-s2"], "t": ["t-s0", "t-s1", "t-s2"]}, 0.95, 0.05)
    for d in ("a", "b", "c"):
        m = f"anatomy/{d}/probe"
        pa = [np.mean(values[f"p-s{i}"][m]) for i in range(3)]
        tb = [np.mean(values[f"t-s{i}"][m]) for i in range(3)]
        ref = st.ttest_rel(tb, pa)
        assert mix["tests"][m]["mean_diff"] == pytest.approx(np.mean(np.subtract(tb, pa)))
        assert mix["tests"][m]["p"] == pytest.approx(ref.pvalue)
    shares = {"p": {"a": 0.3, "b": 0.3, "c": 0.4}, "t": {"a": 0.5, "b": 0.2, "c": 0.3}}
    pdt = report.per_domain(mix, shares)
    shifts = [r["shift"] for r in pdt["rows"]]
    assert shifts == pytest.approx([0.2, -0.1, -0.1])
    deltas = [r["delta"]["mean_diff"] for r in pdt["rows"]]
    assert pdt["summary"]["spearman"] == pytest.approx(st.spearmanr(shifts, deltas)[0])
    with pytest.raises(ValueError, match="same number"):
        report.mixtures(values, {"p": ["p-s0", "p-s1"], "t": ["t-s0"]}, 0.95, 0.05)


def test_arms_vs_random_by_hand():
    rng = np.random.default_rng(2)
    names = ("p-s0", "p-s1", "p-s2")
    metrics = ("anatomy/a/probe", "anatomy/a/knn", "context/a/lesion")
    values = {n: {m: rng.uniform(0.5, 0.7, size=5).tolist() for m in metrics} for n in (*names, "random")}
    values["p-s2"].pop("context/a/lesion")  # a metric one arm encoder lacks is not tested
    rows = report.arms_vs_random(values, {"p": list(names)}, 0.95, 0.05)["p"]
    assert sorted(rows) == sorted(metrics[:2])
    ps = []
    for m in sorted(rows):
        arm = np.mean([values[n][m] for n in names], axis=0)  # per evaluation seed, over pretraining seeds
        ref = st.ttest_rel(arm, values["random"][m])
        assert rows[m]["mean_diff"] == pytest.approx(np.mean(arm - np.array(values["random"][m])))
        assert rows[m]["p"] == pytest.approx(ref.pvalue)
        ps.append(ref.pvalue)
    lo, hi = sorted(ps)  # Holm over two tests by hand: 2 p_(1), then max(that, p_(2))
    assert sorted(r["p_holm"] for r in rows.values()) == pytest.approx(
        sorted([min(1, 2 * lo), min(1, max(2 * lo, hi))])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arm", "prop"], "expected NAME=PATH"),
        (["--arm", "random=x"], "is taken"),
        (["--allocation", "x=a.json"], "not arms"),
        (["--seeds", "1"], "paired test needs"),
        (["--efficiency", "4,x"], "comma-separated integers"),
    ],
)
def test_bad_arguments_are_named(tmp_path, capsys, args, message):
    code = evaluate_encoders.main(["--control", str(tmp_path / "c.pt"), "--data", str(tmp_path), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_evaluate_encoders_end_to_end(phantom_data, tmp_path, capsys):
    enc = {
        n: make_encoder(tmp_path / f"{n}.pt", seed=s) for s, n in enumerate(["ctl", "p0", "p1", "t0", "t1"])
    }
    for name, w in (("p", 0.5), ("t", 0.8)):
        atomic_write_json(tmp_path / f"{name}.json", {"format": "voxmix.allocation/1", "budget": {"samples": 10},
                          "domains": {"ct_abdomen": {"weight": w, "samples": int(10 * w)},
                                      "pet_wholebody": {"weight": 1 - w, "samples": 10 - int(10 * w)}}})  # fmt: skip
    out, md = tmp_path / "ev.json", tmp_path / "ev.md"
    code = evaluate_encoders.main([
        "--control", enc["ctl"], "--data", str(phantom_data), "--domains", "ct_abdomen",
        "--arm", f"p={enc['p0']},{enc['p1']}", "--arm", f"t={enc['t0']},{enc['t1']}",
        "--allocation", f"p={tmp_path / 'p.json'}", "--allocation", f"t={tmp_path / 't.json'}",
        "--seeds", "2", "--efficiency", "2", "--finetune-steps", "1", "--out", str(out), "--report", str(md),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert rep["format"] == report.FORMAT and rep["seeds"] == 2
    vals = rep["values"]
    assert set(vals) == {INTENSITY, "control", "random", "p-s0", "p-s1", "t-s0", "t-s1"}
    # Every metric has one value per seed; curves only for the control, random and the baseline.
    assert all(len(v) == 2 for n in vals for v in vals[n].values())
    assert (
        "anatomy/ct_abdomen/probe_n2" in vals["control"] and "anatomy/ct_abdomen/probe_n2" not in vals["p-s0"]
    )
    assert (
        "finetune/ct_abdomen/dice_n2" in vals["random"] and "finetune/ct_abdomen/dice_n2" not in vals["p-s0"]
    )
    # The encoder-free baseline and the fixed encoders do not depend on which other encoders ran; the
    # random encoder is drawn anew each seed, while a fixed untrained encoder gives the same features.
    assert vals["control"]["anatomy/ct_abdomen/probe"] != vals["random"]["anatomy/ct_abdomen/probe"]
    text = md.read_text()
    assert text.startswith("## 1. Positive control") and "## 5. Per domain" in text
    assert "### MAE-pretrained `p` (mean of its pretraining seeds) - random" in text
    arm = rep["arms_vs_random"]["t"]["anatomy/ct_abdomen/probe"]
    t_mean = np.mean(
        [vals["t-s0"]["anatomy/ct_abdomen/probe"], vals["t-s1"]["anatomy/ct_abdomen/probe"]], axis=0
    )
    assert arm["mean_diff"] == pytest.approx(np.mean(t_mean - vals["random"]["anatomy/ct_abdomen/probe"]))
    assert [r["domain"] for r in rep["per_domain"]["rows"]] == ["ct_abdomen"]
    assert rep["per_domain"]["rows"][0]["shift"] == pytest.approx(0.3)


def test_target_domain_controls_and_reported_encoders(phantom_data, tmp_path, capsys):
    """A {domain: encoder} control scores each domain with its own encoder: there its values equal those of
    the same encoder given as a plain one (same seeds and crops). Then the CLI's `--control DOMAIN=ENC`
    and `--encoder NAME=ENC`, and round 2's readouts (every layer, the side task)."""
    from voxmix.formats.encoder import read_encoder
    from voxmix.trainer.downstream.evaluate import EvalConfig, evaluate

    a, b = (make_encoder(tmp_path / f"{n}.pt", seed=s) for s, n in ((7, "a"), (8, "b")))
    ba, bb = read_encoder(a), read_encoder(b)
    cfg = EvalConfig(domains=["ct_abdomen", "pet_wholebody"], every_layer=False, side=False, finetune_steps=0,
                     efficiency=[2], curve_encoders=["control", "a", "b"])  # fmt: skip
    vals = evaluate(
        {"control": {"ct_abdomen": ba, "pet_wholebody": bb}, "a": ba, "b": bb}, phantom_data, cfg, 1
    )
    for d, twin, other in (("ct_abdomen", "a", "b"), ("pet_wholebody", "b", "a")):
        mine = {m: v for m, v in vals["control"].items() if f"/{d}/" in m}
        assert mine and all(vals[twin][m] == v for m, v in mine.items())
        assert vals[other][f"anatomy/{d}/probe"] != mine[f"anatomy/{d}/probe"]
    assert set(vals["control"]) == set(vals["a"])
    common = ["--data", str(phantom_data), "--seeds", "2", "--efficiency", "2", "--finetune-steps", "0"]
    assert (
        evaluate_encoders.main(
            ["--control", f"ct_abdomen={a}", "--domains", "ct_abdomen,pet_wholebody", *common]
        )
        == 2
    )
    assert "no control for the probed domains ['pet_wholebody']" in capsys.readouterr().err
    out = tmp_path / "ev.json"
    code = evaluate_encoders.main(
        ["--control", f"ct_abdomen={a}", "--encoder", f"control_mix={a}", "--domains", "ct_abdomen", *common,
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    vals = json.loads(out.read_text())["values"]
    assert all(vals["control_mix"][m] == v for m, v in vals["control"].items() if "_n" not in m)
    # Round 2's readouts: every layer for the encoders; the side task, the intensity baseline beside it.
    for m in ("anatomy/ct_abdomen/probe_all", "anatomy/ct_abdomen/knn_all", "side/ct_abdomen/probe_all"):
        assert m in vals["random"] and m not in vals[INTENSITY]
    assert "side/ct_abdomen/probe" in vals[INTENSITY]
    assert all(0 <= x <= 1 for v in vals["control"].values() for x in v)
    assert "| metric | intensity | control | random | control_mix |" in capsys.readouterr().out
