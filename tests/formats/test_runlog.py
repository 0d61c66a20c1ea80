import json
import math
import os

import pytest

from voxmix.formats.runlog import RunLogError, RunLogWriter, find_runlogs, read_runlog, read_state


def _write(tmp_path, lines, end="\n"):
    p = tmp_path / "runlog.jsonl"
    p.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + end)
    return p


START = {
    "event": "start",
    "format": "voxmix.runlog/1",
    "run_id": "r",
    "domains": ["ct", "mri"],
    "mixture": {"ct": 0.5, "mri": 0.5},
    "budget_samples": 100,
    "unique_samples": {"ct": 10, "mri": 20},
    "seed": 0,
    "config": {},
}
EVAL = {"event": "eval", "step": 1, "samples_seen": {"ct": 4, "mri": 4}, "loss": {"ct": 0.5, "mri": 0.6}}


def test_writer_roundtrip_and_append(tmp_path):
    w = RunLogWriter(tmp_path)
    w.start(
        run_id="a",
        domains=["ct", "mri"],
        mixture={"ct": 1, "mri": 0},
        budget_samples=10,
        unique_samples={"ct": 5, "mri": 7},
        seed=3,
        config={"lr": 1e-3},
    )
    w.eval(step=2, samples_seen={"ct": 8}, loss={"ct": 0.5, "mri": 0.9})
    w.throughput(step=2, samples_per_s=4.0, seconds_per_sample={"ct": 0.25}, mfu=0.1)
    RunLogWriter(tmp_path).end(status="completed", step=3)  # a second writer appends, never truncates
    run = read_runlog(tmp_path)
    assert run.run_id == "a" and run.status == "completed" and run.seed == 3
    assert run.evals[0].samples_seen == {"ct": 8, "mri": 0}
    assert run.evals[0].loss == {"ct": 0.5, "mri": 0.9}
    assert run.seconds_per_sample() == {"ct": 0.25}
    assert len((tmp_path / "runlog.jsonl").read_text().splitlines()) == 4


def test_loss_se_roundtrip_optional_and_ignored_by_read_state(tmp_path):
    w = RunLogWriter(tmp_path)
    w.start(
        run_id="a", domains=["ct", "mri"], mixture={"ct": 1}, budget_samples=10, unique_samples={}, seed=0
    )
    w.eval(step=1, samples_seen={"ct": 4}, loss={"ct": 0.5, "mri": 0.9}, loss_se={"ct": 0.01, "mri": 0.0})
    w.eval(step=2, samples_seen={"ct": 8}, loss={"ct": 0.4}, loss_se={})  # empty: the field is left out
    w.eval(step=3, samples_seen={"ct": 9}, loss={"ct": 0.3})  # an old-style event, without it
    lines = [json.loads(x) for x in (tmp_path / "runlog.jsonl").read_text().splitlines()]
    assert lines[1]["loss_se"] == {"ct": 0.01, "mri": 0.0} and "loss_se" not in lines[2]
    run = read_runlog(tmp_path)
    assert [e.loss_se for e in run.evals] == [{"ct": 0.01, "mri": 0.0}, {}, {}]
    for bad in ({"ct": math.nan}, {"ct": -0.1}, {"pet": 0.1}):
        with pytest.raises(ValueError, match="loss_se"):
            w.eval(step=4, samples_seen={}, loss={"ct": 0.3}, loss_se=bad)
    # read_state stays lenient: a loss_se the strict reader rejects does not disturb resuming.
    with open(tmp_path / "runlog.jsonl", "a") as f:
        f.write(json.dumps({**EVAL, "step": 5, "loss_se": {"ct": "x", "pet": -1}}) + "\n")
    st = read_state(tmp_path)
    assert st.last_eval_step == 5 and st.last_loss == EVAL["loss"] and st.status == "running"
    with pytest.raises(RunLogError, match=r":5: field 'loss_se.ct': expected a number"):
        read_runlog(tmp_path)


def test_writer_refuses_nan_loss(tmp_path):
    w = RunLogWriter(tmp_path)
    with pytest.raises(ValueError, match="non-finite"):
        w.eval(step=1, samples_seen={}, loss={"ct": math.nan})


def test_truncated_last_line_is_skipped_with_warning(tmp_path):
    p = _write(tmp_path, [START, EVAL, '{"event": "eval", "step": 2, "samples_se'], end="")
    with pytest.warns(UserWarning, match="truncated last line"):
        run = read_runlog(p)
    assert len(run.evals) == 1 and run.status == "running"
    assert any("truncated" in w for w in run.warnings)


def test_malformed_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    p = _write(tmp_path, [START, "{not json", EVAL])
    with pytest.raises(RunLogError, match=r"runlog.jsonl:2: malformed line"):
        read_runlog(p)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s, e: s.pop("run_id"), r":1: 'start' event is missing field 'run_id'"),
        (lambda s, e: s.update(format="voxmix.runlog/9"), r":1: field 'format'"),
        (lambda s, e: e["loss"].update(pet=0.3), r":2: field 'loss.pet': unknown domain 'pet'"),
        (lambda s, e: e["samples_seen"].update(spect=3), r":2: field 'samples_seen.spect': unknown domain"),
        (lambda s, e: e["loss"].update(ct=float("nan")), r":2: field 'loss.ct': value is nan"),
        (lambda s, e: e["loss"].update(ct=None), r":2: field 'loss.ct': expected a number"),
        (lambda s, e: e["loss"].update(ct=-0.1), r":2: field 'loss.ct': expected a positive value"),
        (lambda s, e: e.pop("loss"), r":2: 'eval' event is missing field 'loss'"),
        (lambda s, e: s.update(budget_samples=-5), r":1: field 'budget_samples'"),
        (lambda s, e: e.update(loss_se={"pet": 0.01}), r":2: field 'loss_se.pet': unknown domain 'pet'"),
        (lambda s, e: e.update(loss_se={"ct": float("inf")}), r":2: field 'loss_se.ct': value is inf"),
        (lambda s, e: e.update(loss_se={"ct": float("nan")}), r":2: field 'loss_se.ct': value is nan"),
        (lambda s, e: e.update(loss_se={"ct": -1e-3}), r":2: field 'loss_se.ct': expected a non-negative"),
        (lambda s, e: e.update(loss_se={"ct": None}), r":2: field 'loss_se.ct': expected a number"),
        (lambda s, e: e.update(loss_se=[0.01]), r":2: field 'loss_se' of 'eval' event has the wrong type"),
        (
            lambda s, e: (e["loss"].pop("mri"), e.update(loss_se={"mri": 0.01})),
            r":2: field 'loss_se.mri': no 'loss' for domain 'mri'",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path, mutate, match):
    s, e = json.loads(json.dumps(START)), json.loads(json.dumps(EVAL))
    mutate(s, e)
    p = tmp_path / "runlog.jsonl"
    p.write_text(json.dumps(s) + "\n" + json.dumps(e, allow_nan=True) + "\n")
    with pytest.raises(RunLogError, match=match):
        read_runlog(p)


def test_first_event_must_be_start(tmp_path):
    with pytest.raises(RunLogError, match="first event must be 'start'"):
        read_runlog(_write(tmp_path, [EVAL]))


def test_failed_run_is_used_with_warning(tmp_path):
    run = read_runlog(_write(tmp_path, [START, EVAL, {"event": "end", "status": "failed", "step": 1}]))
    assert run.status == "failed" and len(run.evals) == 1
    assert any("failed" in w for w in run.warnings)


def test_find_runlogs_expands_parents_and_globs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        _write(tmp_path / "runs" / name, [START])
    assert len(find_runlogs([str(tmp_path / "runs")])) == 2
    assert len(find_runlogs([str(tmp_path / "runs" / "*")])) == 2
    with pytest.raises(RunLogError, match="no run matches"):
        find_runlogs([str(tmp_path / "nothing*")])
    with pytest.raises(RunLogError, match="no such run directory"):
        find_runlogs([str(tmp_path / "missing")])


# ---- one folder, one run (#15 defect 8) ---------------------------------------------------------------
END = {"event": "end", "status": "completed", "step": 2}
EVAL2 = {**EVAL, "step": 2, "samples_seen": {"ct": 8, "mri": 8}, "loss": {"ct": 0.4, "mri": 0.5}}
TPUT = {"event": "throughput", "step": 2, "samples_per_s": 4.0, "seconds_per_sample": {"ct": 0.25}}


def test_identical_duplicate_evals_are_counted_once_with_a_warning_naming_lines_and_step(tmp_path):
    # Two trainers on one folder, both deterministic: every eval (and the end) written twice.
    p = _write(tmp_path, [START, EVAL, EVAL, EVAL2, END, TPUT, EVAL2, END])
    run = read_runlog(p)
    assert [e.step for e in run.evals] == [1, 2] and run.status == "completed"
    assert len(run.throughput) == 0  # the throughput after the end is the second writer's, not used
    dup = [w for w in run.warnings if "repeat an earlier one" in w]
    assert dup == [
        f"{p}: 2 'eval' event(s) repeat an earlier one with identical values (two trainers wrote this "
        "folder, or an evaluation was logged twice), each counted once: step 1 (lines 2, 3), step 2 "
        "(lines 4, 7)"
    ]
    assert any("after the 'completed' end at line 5 (lines 6-8)" in w for w in run.warnings)


@pytest.mark.parametrize(
    "again, what",
    [
        ({"loss": {"ct": 0.5, "mri": 0.7}}, r"loss \{'ct': 0.5, 'mri': 0.6\} vs \{'ct': 0.5, 'mri': 0.7\}"),
        (
            {"samples_seen": {"ct": 4, "mri": 5}},
            r"samples_seen \{'ct': 4, 'mri': 4\} vs \{'ct': 4, 'mri': 5\}",
        ),
        ({"loss_se": {"ct": 0.01}}, r"loss_se \{\} vs \{'ct': 0.01\}"),
    ],
)
def test_conflicting_duplicate_evals_are_an_error_naming_lines_and_values(tmp_path, again, what):
    p = _write(tmp_path, [START, EVAL, EVAL2, {**EVAL, **again}])
    with pytest.raises(
        RunLogError, match=rf"runlog.jsonl: lines 2 and 4: two 'eval' events at step 1 disagree: {what}"
    ):
        read_runlog(p)


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"mixture": {"ct": 1.0, "mri": 0.0}},
            "mixture {'ct': 0.5, 'mri': 0.5} at line 1, {'ct': 1.0, 'mri': 0.0} here",
        ),
        ({"budget_samples": 200}, "budget_samples 100 at line 1, 200 here"),
        ({"seed": 7}, "seed 0 at line 1, 7 here"),
        ({"run_id": "other"}, "run_id 'r' at line 1, 'other' here"),
    ],
)
def test_a_second_start_of_another_run_is_an_error_naming_the_fields(tmp_path, change, named):
    p = _write(tmp_path, [START, EVAL, {**START, **change}, EVAL2])
    with pytest.raises(RunLogError) as e:
        read_runlog(p)
    assert str(e.value).startswith(f"{p}:3: this 'start' event names another run: {named}")
    # The same run started again (a resume) is fine.
    assert len(read_runlog(_write(tmp_path, [START, EVAL, START, EVAL2])).evals) == 2


def test_events_after_end(tmp_path):
    # After 'completed', a new evaluation or a different end means a second run in the folder.
    with pytest.raises(
        RunLogError, match=r":4: 'eval' at step 2 after line 3 ended the run 'completed' at step 2"
    ):
        read_runlog(_write(tmp_path, [START, EVAL, END, EVAL2]))
    bad_end = {**END, "status": "failed", "step": 9}
    with pytest.raises(RunLogError, match=r":4: 'end' with status 'failed' at step 9 after line 3 ended"):
        read_runlog(_write(tmp_path, [START, EVAL, END, bad_end]))
    # After 'failed' the run was resumed: its later events count, and its last end decides the status.
    failed = {**END, "status": "failed", "step": 1}
    run = read_runlog(_write(tmp_path, [START, EVAL, failed, EVAL2, END]))
    assert [e.step for e in run.evals] == [1, 2] and run.status == "completed"
    assert any("events after the 'failed' end at line 3 (resumed run)" in w for w in run.warnings)
    run = read_runlog(_write(tmp_path, [START, EVAL, failed, EVAL2]))
    assert run.status == "running"


def _torn_log(tmp_path, cut: int):
    """A real log whose last line lost its final `cut` bytes, as a writer killed mid-write leaves it."""
    w = RunLogWriter(tmp_path)
    w.start(run_id="r", domains=["ct"], mixture={"ct": 1}, budget_samples=10, unique_samples={}, seed=0)
    w.eval(step=1, samples_seen={"ct": 4}, loss={"ct": 0.5})
    p = tmp_path / "runlog.jsonl"
    os.truncate(p, p.stat().st_size - cut)
    return p


def test_a_resumed_writer_cuts_a_torn_last_line_before_appending(tmp_path):
    p = _torn_log(tmp_path, cut=9)
    size = p.stat().st_size
    torn = size - len(p.read_bytes().split(b"\n")[0]) - 1
    with pytest.warns(UserWarning, match=rf"{p}: cut {torn} bytes of a torn last line"):
        RunLogWriter(tmp_path).eval(step=2, samples_seen={"ct": 8}, loss={"ct": 0.4})
    run = read_runlog(p)  # no malformed merged line: the strict reader takes the resumed log
    assert [e.step for e in run.evals] == [2] and not any("truncated" in x for x in run.warnings)


def test_a_resumed_writer_keeps_a_complete_last_line_that_lost_only_its_newline(tmp_path):
    p = _torn_log(tmp_path, cut=1)
    with pytest.warns(UserWarning, match="had no newline"):
        RunLogWriter(tmp_path).eval(step=2, samples_seen={"ct": 8}, loss={"ct": 0.4})
    assert [e.step for e in read_runlog(p).evals] == [1, 2]


def test_a_log_merged_by_an_older_writer_is_read_with_a_warning(tmp_path):
    p = _torn_log(tmp_path, cut=9)
    with open(p, "a") as f:  # what the writer did before it cut torn tails
        f.write(json.dumps(EVAL2 | {"samples_seen": {"ct": 8}, "loss": {"ct": 0.4}}) + "\n")
    with pytest.warns(UserWarning, match=r":2: dropped \d+ bytes of a torn line"):
        run = read_runlog(p)
    assert [e.step for e in run.evals] == [2]
    assert read_state(p).last_eval_step == 2  # the resumer sees the merged event too


# ---- the readers live in runlog_read.py, imported through runlog.py -----------------------------------
def test_read_state_gives_the_first_start_event_as_written(tmp_path):
    # --resume compares the run's settings with the first `start` (a resumed run logs another one)
    first = START | {"config": {"optim": {"lr": 0.001}}, "data_digest": "ab" * 32, "budget_samples": 96.0}
    torn = json.dumps(START | {"seed": 5})[:30]  # a killed writer's torn line, merged by an older writer
    p = _write(tmp_path, [first, EVAL | {"step": "x"}, torn + json.dumps(START | {"seed": 1}), EVAL2])
    st = read_state(p)
    assert st.start == first and st.budget_samples == 96 and st.last_eval_step == 2
    assert read_state(tmp_path / "new").start is None
    # lenient: a non-integer step or budget is ignored, not a crash
    p.write_text(
        json.dumps(START | {"budget_samples": "lots"}) + "\n" + json.dumps(EVAL | {"step": None}) + "\n"
    )
    st = read_state(p)
    assert st.start["budget_samples"] == "lots" and st.budget_samples is None and st.last_eval_step == -1


def test_the_reader_module_imports_first_or_second():
    # runlog_read imports runlog's definitions and runlog hands out runlog_read's readers: whichever module
    # a program imports first, both work (a fresh interpreter each, as a program starts)
    import subprocess
    import sys

    for first in ("runlog_read", "runlog"):
        code = (
            f"import voxmix.formats.{first}\n"
            "from voxmix.formats.runlog import find_runlogs, read_runlog, read_state\n"
            "from voxmix.formats import runlog_read\n"
            "assert read_runlog is runlog_read.read_runlog and read_state is runlog_read.read_state\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
