"""`lawfit` fed bad input (#15 defects 8, 10, 11, 12, 14): every case ends in `lawfit: error: ...` naming
the file, field or option and the value, exit 2, no traceback, and nothing written from the bad input.

Most cases call `voxmix.lawfit.cli.main(argv)` in-process (what the console script runs, without a
Python start per case); two run the installed `lawfit` script as a user does.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.faults.faults_helpers import assert_clean_error, run_cli
from tests.lawfit.lawfit_helpers import make_truth
from voxmix.formats.allocation import MAX_SAMPLES, write_allocation
from voxmix.formats.plan import write_plan
from voxmix.lawfit.allocate import Budget, allocate
from voxmix.lawfit.cli import main
from voxmix.lawfit.simulate import default_design, simulate_runs


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Known laws of 3 domains, a plan, its simulated runs and an allocation, in one folder."""
    d = tmp_path_factory.mktemp("lawfit_faults")
    truth = make_truth(m=3)
    truth.save(d / "laws.json")
    plan = default_design(truth, budget_per_run=2000, n_mixtures=None, n_evals=4, seed=0)
    write_plan(d / "plan.json", plan)
    simulate_runs(truth, plan, d / "runs", seed=0)
    write_allocation(d / "allocation.json", allocate(truth, Budget(samples=100_000)))
    (d / "empty.json").write_text("")
    (d / "a_folder").mkdir()
    return d


def lawfit(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of `lawfit argv` run in-process."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused(res: tuple[int, str], *needles: str) -> str:
    code, err = res
    assert code == 2, err
    assert err.startswith("lawfit: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def edited(src: Path, dst: Path, edit) -> Path:
    obj = json.loads(src.read_text())
    edit(obj)
    dst.write_text(json.dumps(obj))
    return dst


# ---- defect 8: duplicated evaluations --------------------------------------------------------------------
def test_fit_counts_a_duplicated_evaluation_once_and_refuses_a_conflicting_one(study, tmp_path, capsys):
    runs = shutil.copytree(study / "runs", tmp_path / "runs")
    log = runs / "pilot-d0" / "runlog.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    # An eval line written again further down: two trainers on one folder (lines 2 and 9).
    log.write_text("".join(lines[:8] + [lines[1]] + lines[8:]))
    step = json.loads(lines[1])["step"]
    code, err = lawfit(
        capsys, "fit", runs, "--forms", "no_transfer", "--bootstrap", 0, "--quiet", "-o", tmp_path / "l.json"
    )
    assert code == 0, err
    assert f"lawfit: warning: {log}: 1 'eval' event(s) repeat an earlier one" in err
    assert f"each counted once: step {step} (lines 2, 9)" in err
    fit = json.loads((tmp_path / "l.json").read_text())["fit"]
    assert fit["n_points"] == 9 * 4  # 9 runs of 4 evaluations: the repeat is not a point of its own
    other = json.loads(lines[1])
    other["loss"]["d0"] *= 1.5
    log.write_text("".join(lines[:8] + [json.dumps(other) + "\n"] + lines[8:]))
    refused(
        lawfit(capsys, "fit", runs, "--bootstrap", 0, "--quiet", "-o", tmp_path / "l2.json"),
        f"{log}: lines 2 and 9: two 'eval' events at step {step} disagree: loss",
        str(other["loss"]["d0"]),
    )
    assert not (tmp_path / "l2.json").exists()


# ---- defect 10 and 14: run ids of simulate ---------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["../../x", "/tmp/voxmix_escape", "..", 5, None, "a\x00b", ""])
def test_simulate_refuses_run_ids_that_are_not_plain_names(study, tmp_path, capsys, run_id):
    plan = edited(study / "plan.json", tmp_path / "plan.json", lambda p: p["runs"][0].update(run_id=run_id))
    out = tmp_path / "a" / "b" / "out"
    refused(
        lawfit(capsys, "simulate", "--truth", study / "laws.json", "--plan", plan, "-o", out),
        f"{plan}: runs[0]: field 'run_id' {run_id!r}",
    )
    assert not out.exists() and not (tmp_path / "x").exists() and not Path("/tmp/voxmix_escape").exists()


def test_simulate_refuses_a_run_folder_that_links_out_of_the_output(study, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pilot-d0").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    refused(
        lawfit(capsys, "simulate", "--truth", study / "laws.json", "--plan", study / "plan.json", "-o", out),
        f"{study / 'plan.json'}: runs[0]: run folder {out / 'pilot-d0'} leads outside {out}",
    )
    assert not list((tmp_path / "elsewhere").iterdir())


# ---- defects 11 and 12: budgets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "budget, needle",
    [
        (
            ["--budget-samples", 10**14],
            f"--budget-samples 100000000000000 exceeds the maximum of {MAX_SAMPLES}",
        ),
        (
            ["--budget-samples", 10**19],
            f"--budget-samples 10000000000000000000 exceeds the maximum of {MAX_SAMPLES}",
        ),
        (["--budget-samples", 0], "--budget-samples must be a positive integer, got 0"),
        (["--budget-samples", -5], "--budget-samples must be a positive integer, got -5"),
        (["--budget-hours", 1e9], "--budget-hours 1e+09 buys up to 3.6e+14 samples (domain 'd0'"),
        (["--budget-hours", "nan"], "--budget-hours must be a positive finite number, got nan"),
        (["--budget-hours", "inf"], "--budget-hours must be a positive finite number, got inf"),
        (["--budget-hours", -1], "--budget-hours must be a positive finite number, got -1"),
    ],
)
def test_allocation_budgets_are_checked_before_any_work(study, tmp_path, capsys, budget, needle):
    refused(lawfit(capsys, "allocate", study / "laws.json", *budget, "-o", tmp_path / "a.json"), needle)
    assert not (tmp_path / "a.json").exists()


def test_an_allocation_file_beyond_the_maximum_budget_is_refused_by_its_readers(study, tmp_path, capsys):
    def huge(a):
        a["budget"]["samples"] = 10**14
        a["domains"]["d0"]["samples"] += 10**14 - 100_000

    alloc = edited(study / "allocation.json", tmp_path / "huge.json", huge)
    refused(
        lawfit(capsys, "report", study / "laws.json", alloc, "-o", tmp_path / "rep"),
        f"{alloc}: field 'budget.samples' 100000000000000 exceeds the maximum of {MAX_SAMPLES}",
    )


# ---- defect 14: the report's allocation --------------------------------------------------------------------
def test_report_of_an_allocation_without_predicted_losses_predicts_them(study, tmp_path, capsys):
    alloc = edited(study / "allocation.json", tmp_path / "a.json", lambda a: a.pop("predicted_loss"))
    code, err = lawfit(capsys, "report", study / "laws.json", alloc, "-o", tmp_path / "rep")
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"Note: {alloc} has no predicted losses" in md and "| d0 | " in md


@pytest.mark.parametrize(
    "edit, needle",
    [
        (
            lambda a: a.update(predicted_loss={"d0": "x"}),
            "field 'predicted_loss.d0': expected a finite number, got 'x'",
        ),
        (lambda a: a["predicted_loss"].pop("d2"), "field 'predicted_loss.d2' is missing"),
        (lambda a: a["objective"].pop("kkt"), "field 'objective.kkt.satisfied' is missing"),
        (
            lambda a: a["baselines"]["uniform"].pop("improvement"),
            "field 'baselines.uniform.improvement.raw' is missing",
        ),
        (lambda a: a["hubs"].update(at_samples=[]), "field 'hubs.at_samples.d0' is missing"),
        (lambda a: a.update(format="voxmix.allocation/2"), "field 'format' must be 'voxmix.allocation/1'"),
        (
            lambda a: a.update(domains={"d0": {"weight": 1.0, "samples": 100000}}),
            "field 'domains': ['d0'] are not the laws' domains ['d0', 'd1', 'd2']",
        ),
    ],
)
def test_report_names_a_bad_allocation_field(study, tmp_path, capsys, edit, needle):
    alloc = edited(study / "allocation.json", tmp_path / "a.json", edit)
    refused(lawfit(capsys, "report", study / "laws.json", alloc, "-o", tmp_path / "rep"), str(alloc), needle)
    assert not (tmp_path / "rep").exists()


# ---- defect 14: -o naming a file where a folder is expected, and the reverse ------------------------------
def _commands(study: Path) -> dict[str, tuple[list, str]]:
    """Each subcommand's arguments before -o, and whether its output is a file or a folder."""
    return {
        "fit": (["fit", study / "runs", "--quiet"], "file"),
        "allocate": (["allocate", study / "laws.json", "--budget-samples", 1000], "file"),
        "validate": (["validate", study / "runs", "--fit-max-samples", 1000, "--quiet"], "file"),
        "plan": (
            ["plan", "--domains", "a", "b", "--unique", "a=10", "b=10", "--target-budget", 1000],
            "file",
        ),
        "report": (["report", study / "laws.json"], "folder"),
        "simulate": (["simulate", "--truth", study / "laws.json"], "folder"),
    }


@pytest.mark.parametrize("cmd", ["fit", "allocate", "validate", "plan", "report", "simulate"])
def test_output_of_the_wrong_kind_is_refused_before_any_work(study, capsys, cmd):
    args, kind = _commands(study)[cmd]
    folder, file = study / "a_folder", study / "laws.json"
    wrong = (
        (folder, "is a folder; name the file to write")
        if kind == "file"
        else (file, "is a file, not a folder")
    )
    refused(lawfit(capsys, *args, "-o", wrong[0]), f"-o/--output {wrong[0]}: {wrong[1]}")
    refused(
        lawfit(capsys, *args, "-o", file / "x"), f"-o/--output {file / 'x'}: {file} is a file, not a folder"
    )
    assert not list(folder.iterdir())


# ---- a few bad inputs of every subcommand ------------------------------------------------------------------
def _bad_files(study: Path, tmp: Path) -> dict[str, Path]:
    """Laws with a NaN parameter, another format version and a bad uncertainty block; a run log of
    another format version."""
    (tmp / "v9").mkdir()
    log = (study / "runs" / "pilot-d0" / "runlog.jsonl").read_text()
    (tmp / "v9" / "runlog.jsonl").write_text(log.replace("voxmix.runlog/1", "voxmix.runlog/9", 1))
    laws = study / "laws.json"
    return {
        "nan_E": edited(laws, tmp / "nan_E.json", lambda o: o["targets"]["d0"].update(E=float("nan"))),
        "version": edited(laws, tmp / "v2.json", lambda o: o.update(format="voxmix.laws/2")),
        "level": edited(laws, tmp / "level.json", lambda o: o.update(uncertainty={"level": 7})),
    }


BAD_INPUTS = [
    (["fit", "{study}/nowhere", "-o", "{tmp}/l.json"], "{study}/nowhere: no such run directory or file"),
    (
        ["fit", "{study}/empty.json", "-o", "{tmp}/l.json"],
        "{study}/empty.json: empty run log (no 'start' event)",
    ),
    (["fit", "{study}/runs", "--workers", "-1", "-o", "{tmp}/l.json"], "workers must be >= 0"),
    (
        ["fit", "{tmp}/v9", "-o", "{tmp}/l.json"],
        "{tmp}/v9/runlog.jsonl:1: field 'format': expected 'voxmix.runlog/1', got 'voxmix.runlog/9'",
    ),
    (
        ["allocate", "{study}/nowhere.json", "--budget-samples", "9", "-o", "{tmp}/a.json"],
        "nowhere.json: file not found",
    ),
    (
        ["allocate", "{study}/empty.json", "--budget-samples", "9", "-o", "{tmp}/a.json"],
        "empty.json: line 1: invalid JSON",
    ),
    (
        ["allocate", "{tmp}/v2.json", "--budget-samples", "9", "-o", "{tmp}/a.json"],
        "v2.json: field 'format': expected 'voxmix.laws/1', got 'voxmix.laws/2'",
    ),
    (
        ["allocate", "{tmp}/nan_E.json", "--budget-samples", "9", "-o", "{tmp}/a.json"],
        "nan_E.json: field 'targets.d0.E': expected a finite number, got nan",
    ),
    (
        ["allocate", "{tmp}/level.json", "--budget-samples", "9", "-o", "{tmp}/a.json"],
        "level.json: field 'uncertainty.level': expected a number in (0, 1), got 7",
    ),
    (
        [
            "allocate",
            "{study}/laws.json",
            "--budget-samples",
            "9",
            "--weights",
            "pet=1",
            "-o",
            "{tmp}/a.json",
        ],
        "--weights pet=1.0: unknown domain 'pet'",
    ),
    (
        [
            "allocate",
            "{study}/laws.json",
            "--budget-samples",
            "9",
            "--weights",
            "d0=nan",
            "-o",
            "{tmp}/a.json",
        ],
        "--weights d0=nan: weights must be finite and >= 0",
    ),
    (
        ["allocate", "{study}/laws.json", "--budget-samples", "9", "--max-epochs", "0", "-o", "{tmp}/a.json"],
        "--max-epochs must be positive, got 0",
    ),
    (
        [
            "allocate",
            "{study}/laws.json",
            "--budget-samples",
            "9",
            "--min-share",
            "nan",
            "-o",
            "{tmp}/a.json",
        ],
        "--min-share must be in [0, 1), got nan",
    ),
    (["validate", "{study}/runs", "--fit-max-samples", "nan"], "--fit-max-samples must be positive, got nan"),
    (
        [
            "plan",
            "--domains",
            "a",
            "b",
            "--unique",
            "a=10",
            "b=10",
            "--target-budget",
            "0",
            "-o",
            "{tmp}/p.json",
        ],
        "--target-budget must be in [1, 2147483647]",
    ),
    (
        [
            "plan",
            "--domains",
            "a",
            "b",
            "--unique",
            "a=10",
            "b=10",
            "--target-budget",
            str(10**19),
            "-o",
            "{tmp}/p.json",
        ],
        "got 10000000000000000000",
    ),
    (
        [
            "plan",
            "--domains",
            "../x",
            "b",
            "--unique",
            "../x=10",
            "b=10",
            "--target-budget",
            "900",
            "-o",
            "{tmp}/p.json",
        ],
        "--domains '../x': a domain name is",
    ),
    (
        [
            "plan",
            "--domains",
            "a",
            "b",
            "--unique",
            "a=x",
            "b=10",
            "--target-budget",
            "900",
            "-o",
            "{tmp}/p.json",
        ],
        "--unique 'a=x': 'x' is not a valid number",
    ),
    # The system refuses the path (caught OSError): named, exit 2.
    (
        ["plan", "--domains", "a", "--unique", "a=10", "--target-budget", "900", "-o", "{tmp}/" + "x" * 300],
        "File name too long",
    ),
    (["report", "{study}/nowhere.json", "-o", "{tmp}/rep"], "nowhere.json: file not found"),
    (
        ["report", "{study}/laws.json", "{study}/empty.json", "-o", "{tmp}/rep"],
        "empty.json: line 1: invalid JSON",
    ),
    (
        ["report", "{tmp}/nan_E.json", "-o", "{tmp}/rep"],
        "field 'targets.d0.E': expected a finite number, got nan",
    ),
    (
        ["simulate", "--truth", "{study}/laws.json", "--noise", "nan", "-o", "{tmp}/s"],
        "--noise must be >= 0 and finite, got nan",
    ),
    (
        ["simulate", "--truth", "{study}/laws.json", "--run-noise", "-1", "-o", "{tmp}/s"],
        "--run-noise must be >= 0 and finite, got -1",
    ),
    (
        ["simulate", "--truth", "{study}/laws.json", "--budget-per-run", "0", "-o", "{tmp}/s"],
        "--budget-per-run must be an integer in [1, 2147483647], got 0",
    ),
    (["simulate", "--truth", "{tmp}/v2.json", "-o", "{tmp}/s"], "v2.json: field 'format'"),
    (
        ["simulate", "--truth", "{study}/laws.json", "--plan", "{study}/empty.json", "-o", "{tmp}/s"],
        "empty.json: line 1: invalid JSON",
    ),
]


def test_bad_inputs_of_every_subcommand_are_named(study, tmp_path, capsys):
    _bad_files(study, tmp_path)
    fill = lambda s: s.format(study=study, tmp=tmp_path)  # noqa: E731
    for argv, needle in BAD_INPUTS:
        refused(lawfit(capsys, *map(fill, argv)), fill(needle))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["level.json", "nan_E.json", "v2.json", "v9"]


# ---- the console script, as a user runs it ---------------------------------------------------------------
def test_the_lawfit_command_refuses_an_overflowing_budget_and_an_escaping_run_id(study, tmp_path):
    exe = str(Path(sys.executable).parent / "lawfit")
    p = run_cli(
        [exe, "allocate", str(study / "laws.json"), "--budget-samples", str(10**19), "-o", "a.json"],
        cwd=tmp_path,
    )
    assert_clean_error(p, "lawfit: error: --budget-samples 10000000000000000000 exceeds the maximum", code=2)
    plan = edited(
        study / "plan.json", tmp_path / "plan.json", lambda o: o["runs"][3].update(run_id="../../x")
    )
    p = run_cli(
        [exe, "simulate", "--truth", str(study / "laws.json"), "--plan", str(plan), "-o", "o"], cwd=tmp_path
    )
    assert_clean_error(p, f"{plan}: runs[3]: field 'run_id' '../../x'", code=2)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["plan.json"]
