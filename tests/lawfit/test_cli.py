"""The `lawfit` command end to end, as a user runs it (the installed console script, in a subprocess)."""

import json
from pathlib import Path

import pytest

from tests.lawfit.lawfit_helpers import lawfit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    lawfit(
        "simulate",
        "--truth",
        ROOT / "configs" / "truth_5domains.json",
        "--budget-per-run",
        8000,
        "--mixtures",
        4,
        "-o",
        "runs",
        cwd=d,
    )
    lawfit("fit", "runs", "--bootstrap", 8, "--quiet", "-o", "laws.json", cwd=d)
    return d


def test_fit_allocate_report_validate(workdir):
    laws = json.loads((workdir / "laws.json").read_text())
    assert laws["format"] == "voxmix.laws/1" and len(laws["targets"]) == 5
    r = lawfit(
        "allocate",
        "laws.json",
        "--budget-samples",
        200000,
        "--max-epochs",
        8,
        "--min-share",
        0.02,
        "--weights",
        "pet_wholebody=2",
        "-o",
        "alloc.json",
        cwd=workdir,
    )
    assert "vs proportional" in r.stdout and "KKT" in r.stdout
    alloc = json.loads((workdir / "alloc.json").read_text())
    assert alloc["format"] == "voxmix.allocation/1"
    assert sum(e["samples"] for e in alloc["domains"].values()) == 200000
    assert set(alloc["baselines"]) == {"proportional", "uniform", "no_transfer_optimal"}
    r = lawfit("allocate", "laws.json", "--budget-hours", 0.5, "-o", "alloc_t.json", cwd=workdir)
    assert json.loads((workdir / "alloc_t.json").read_text())["budget"]["seconds"] == 1800.0
    lawfit("report", "laws.json", "alloc.json", "-o", "report", cwd=workdir)
    for f in ("fit_curves.png", "transfer_matrix.png", "hubs.png", "allocation.png", "report.md"):
        assert (workdir / "report" / f).stat().st_size > 1000, f
        if f.endswith(".png"):
            assert (workdir / "report" / f).read_bytes()[:4] == b"\x89PNG"
    md = (workdir / "report" / "report.md").read_text()
    assert "hub" in md and "| proportional |" in md
    r = lawfit("validate", "runs", "--fit-max-samples", 3000, "--quiet", "-o", "val.json", cwd=workdir)
    assert "pearson r" in r.stdout and json.loads((workdir / "val.json").read_text())["overall"]["n"] > 0


@pytest.mark.parametrize(
    "args, match",
    [
        (
            ["allocate", "laws.json", "--budget-samples", "-5", "-o", "x.json"],
            "--budget-samples must be a positive",
        ),
        (
            ["allocate", "laws.json", "--budget-samples", "10000000", "--max-epochs", "1", "-o", "x.json"],
            "infeasible",
        ),
        (
            ["allocate", "missing.json", "--budget-samples", "10", "-o", "x.json"],
            "missing.json: file not found",
        ),
        (["fit", "nope/", "-o", "x.json"], "no such run directory"),
        (
            [
                "simulate",
                "--truth",
                ROOT / "configs" / "truth_5domains.json",
                "--run-noise",
                "-1",
                "-o",
                "x.json",
            ],
            "--run-noise must be >= 0",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(workdir, args, match):
    r = lawfit(*args, cwd=workdir, ok=False)
    assert r.returncode == 2, r.stderr
    assert match in r.stderr
    assert not (workdir / "x.json").exists()


def test_simulate_run_noise_and_fit_bootstrap_method(workdir, tmp_path):
    """--run-noise shifts whole runs; --bootstrap-method is recorded in laws.json (default: the library's)."""
    from voxmix.lawfit.fit import FitConfig

    assert json.loads((workdir / "laws.json").read_text())["uncertainty"]["resample"] == (
        FitConfig().bootstrap_method
    )
    truth = ROOT / "configs" / "truth_5domains.json"
    lawfit(
        "simulate",
        "--truth",
        truth,
        "--budget-per-run",
        4000,
        "--mixtures",
        2,
        "--noise",
        0,
        "--run-noise",
        0.02,
        "-o",
        tmp_path / "rn",
        cwd=tmp_path,
    )
    lines = (tmp_path / "rn" / "pilot-ct_chest" / "runlog.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["config"]["run_noise"] == 0.02
    lawfit(
        "fit",
        tmp_path / "rn",
        "--bootstrap",
        4,
        "--bootstrap-method",
        "runs",
        "--quiet",
        "-o",
        tmp_path / "l.json",
        cwd=tmp_path,
    )
    unc = json.loads((tmp_path / "l.json").read_text())["uncertainty"]
    assert unc["resample"] == "runs" and unc["n"] == 4
    r = lawfit(
        "fit",
        tmp_path / "rn",
        "--bootstrap-method",
        "jackknife",
        "-o",
        tmp_path / "x.json",
        cwd=tmp_path,
        ok=False,
    )
    assert r.returncode == 2 and "invalid choice: 'jackknife'" in r.stderr


def test_fit_names_the_bad_line_of_a_run_log(workdir, tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    src = (workdir / "runs" / "pilot-ct_chest" / "runlog.jsonl").read_text().splitlines()
    ev = json.loads(src[1])
    ev["loss"]["ct_chest"] = None
    src[1] = json.dumps(ev)
    (run / "runlog.jsonl").write_text("\n".join(src) + "\n")
    r = lawfit("fit", run, "-o", tmp_path / "l.json", cwd=workdir, ok=False)
    assert r.returncode == 2 and "runlog.jsonl:2: field 'loss.ct_chest'" in r.stderr
