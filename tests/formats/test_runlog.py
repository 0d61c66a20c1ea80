import json
import math

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
