"""Options of the study and the pure pieces of the sweep and the demo: fast, no subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxmix.formats.plan import PlannedRun
from voxmix.trainer.study.launchers import sbatch_script, trainer_args
from voxmix.trainer.study.local import plan_slots
from voxmix.trainer.study.options import REPO, DemoOptions, StudyError, SweepError, SweepOptions

PATHS = {"plan": Path("plan.json"), "runs_dir": Path("runs"), "manifest": Path("m.jsonl")}


def test_sweep_options_defaults_match_the_command_line():
    o = SweepOptions(**PATHS)
    assert (o.launcher, o.gpus_per_run, o.parallel, o.retries, o.dry_run) == ("local", 1, 0, 1, False)
    assert o.config == Path("configs/tiny.yaml") and o.deepspeed.endswith("deepspeed")
    assert o.summary_name == "summary.json"
    assert SweepOptions(**PATHS, only=("a", "b")).summary_name == "summary.a+b.json"


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("gpus_per_run", 0, "--gpus-per-run"),
        ("parallel", -1, "--parallel"),
        ("retries", -1, "--retries"),
        ("launcher", "k8s", "--launcher"),
        ("only", ("",), "--only"),
        # a newline in a value would start a line of its own in the SLURM script (#15)
        (
            "sbatch",
            ("--partition=gpu\nrm -rf ~",),
            r"--sbatch '--partition=gpu\\nrm -rf ~': control character\(s\) \['\\n'\]",
        ),
        ("overrides", ("optim.lr=1\n#SBATCH --x",), "--set"),
        ("only", ("a\tb",), "--only"),
        ("plan", Path("plan\nx.json"), "plan 'plan"),
        ("config", Path("c\r.yaml"), "--config"),
        ("rerun_stale", True, "--rerun-stale and --keep-stale exclude each other"),
    ],
)
def test_sweep_options_name_the_bad_field(field, value, flag):
    kw = {field: value, "keep_stale": True} if field == "rerun_stale" else {field: value}
    with pytest.raises(SweepError, match=flag):
        SweepOptions(**{**PATHS, **kw})


def test_demo_options_defaults_and_normalisation():
    o = DemoOptions()
    assert o.out == REPO / "demo" and o.domains == (
        "ct_abdomen", "ct_abdomen_twin", "ct_chest", "mri_brain", "pet_wholebody"
    )  # fmt: skip
    assert (o.pilot_samples, o.scales, o.evals, o.min_eval, o.final_evals) == (2400, (4.0,), 8, 400, 5)
    assert (o.parallel, o.bootstrap, o.workers, o.seed, o.downstream) == (2, 20, 2, 0, "auto")
    # comma- or space-separated, as `python -m trainer.phantoms --domains` takes them
    assert DemoOptions(domains=("ct_abdomen,mri_brain", "pet_wholebody")).domains == (
        "ct_abdomen",
        "mri_brain",
        "pet_wholebody",
    )
    # the demo always ran its commands in the repository: a relative preset is the repository's
    assert DemoOptions().config_path == REPO / "configs" / "tiny.yaml"
    assert DemoOptions(config=Path("/x/y.yaml")).config_path == Path("/x/y.yaml")
    assert DemoOptions(overrides=("a.b=1",)).trainer_overrides[-1] == "a.b=1"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"domains": ("ct_abdomen", "liver")}, "--domains: unknown \\['liver'\\]"),
        ({"domains": ("ct_abdomen", "ct_abdomen")}, "--domains: duplicate"),
        ({"domains": (",",)}, "--domains"),
        ({"per_domain": 0}, "--per-domain"),
        ({"size": 8}, "--size"),
        ({"pilot_samples": 0}, "--pilot-samples"),
        ({"evals": 0}, "--evals"),
        ({"min_eval": -1}, "--min-eval"),
        ({"final_evals": 0}, "--final-evals"),
        ({"bootstrap": -1}, "--bootstrap"),
        ({"scales": (0.0,)}, "--scales"),
        ({"downstream": "maybe"}, "--downstream"),
        ({"time_budget": -1.0}, "--time-budget"),
    ],
)
def test_demo_options_name_the_bad_field(kw, match):
    with pytest.raises(StudyError, match=match):
        DemoOptions(**kw)


def test_slots_on_cpu_share_the_cores():
    s = plan_slots(0, 2, 1, 2, {})
    assert s.groups == [None, None] and s.env["DS_ACCELERATOR"] == "cpu" and s.env["OMP_NUM_THREADS"] == "1"
    assert plan_slots(0, 2, 1, 2, {"OMP_NUM_THREADS": "2"}).env["OMP_NUM_THREADS"] == "2"  # the user's wins
    assert plan_slots(0, 16, 1, 0, {}).parallel == 1  # one run at a time on CPU unless asked
    assert "OMP_NUM_THREADS" not in plan_slots(0, 16, 1, 1, {}).env


def test_slots_on_gpus_are_disjoint_groups():
    s = plan_slots(4, 64, 2, 0, {})
    assert s.groups == [[0, 1], [2, 3]] and "DS_ACCELERATOR" not in s.env
    assert plan_slots(8, 64, 2, 3, {}).groups == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(SweepError, match="--gpus-per-run 4: only 2 GPU"):
        plan_slots(2, 64, 4, 0, {})


def test_trainer_args_and_sbatch_script():
    mix = {"b": 0.7, "a": 0.3}
    run = PlannedRun(run_id="r1", role="fit", mixture=mix, budget_samples=96, eval_at=[48, 96], seed=3)
    o = SweepOptions(**PATHS, overrides=("optim.lr=1e-3",), launcher="slurm", parallel=2, sbatch=("--qos=x",))
    args = trainer_args(run, o, Path("/out/r1"))
    assert args[args.index("--mixture") + 1] == "a=0.3,b=0.7"
    assert args[args.index("--eval-at") + 1] == "48,96" and args[-2:] == ["--set", "optim.lr=1e-3"]
    text = sbatch_script(o, [run], Path("/runs"))
    assert "#SBATCH --array=0-0%2" in text and "#SBATCH --qos=x" in text and "RUNS=(r1)" in text
    assert "--set optim.lr=1e-3" in text and "--retries 1" in text and "stale" not in text
    # the array tasks treat stale runs as the submitting sweep was told to
    assert "--rerun-stale" in sbatch_script(SweepOptions(**PATHS, rerun_stale=True), [run], Path("/runs"))
    assert "--keep-stale" in sbatch_script(SweepOptions(**PATHS, keep_stale=True), [run], Path("/runs"))
