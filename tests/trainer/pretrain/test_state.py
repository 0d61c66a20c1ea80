"""The loop's state and triggers without DeepSpeed or subprocesses: eval/log/checkpoint due logic, resume
bookkeeping, the NaN guard, the sink's resume rules (milliseconds)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from voxmix.formats.runlog import RunLogWriter
from voxmix.trainer.pretrain.checkpoint import CheckpointManager
from voxmix.trainer.pretrain.sink import MetricsSink, Progress, format_duration
from voxmix.trainer.pretrain.state import Boundary, TrainState, every
from voxmix.trainer.pretrain.step import NonFiniteLoss, boundary_loss, train_step


def _ckpt(tmp_path, every_steps=4):
    return CheckpointManager(
        dir=tmp_path / "checkpoints",
        every_steps=every_steps,
        keep=2,
        rank=0,
        world_size=1,
        mask_gen=torch.Generator(),
    )


def test_checkpoint_and_log_triggers(tmp_path):
    ckpt = _ckpt(tmp_path, every_steps=4)
    assert [s for s in range(1, 11) if ckpt.due(s)] == [4, 8]
    assert ckpt.due(10, final=True) and not ckpt.due(9)
    assert ckpt.latest_path == tmp_path / "checkpoints" / "latest.json"
    assert [s for s in range(1, 7) if every(s, 1, final=False)] == [1, 2, 3, 4, 5, 6]
    assert not Boundary(step=3, position=24, evals=[], log=False, checkpoint=False)
    assert Boundary(step=3, position=24, evals=[16], log=False, checkpoint=False)


def test_evaluation_points_are_due_once_reached_and_done_once():
    # The reference run's schedule: 8 samples per step, evaluations at 16, 32, 64, 128 and the end, 192.
    st = TrainState.begin(step=0, grad_accum=1, eval_at=[16, 32, 64, 128, 192])
    evaluated = {}
    for step in range(1, 25):
        due = st.due_evals(8 * step)
        if due:
            evaluated[step] = due
            st.mark_evaluated(due)
    assert evaluated == {2: [16], 4: [32], 8: [64], 16: [128], 24: [192]}
    assert st.evals_done == [16, 32, 64, 128, 192] and st.pending == []
    # A step that passes two points at once evaluates once, for both.
    st = TrainState.begin(step=0, grad_accum=1, eval_at=[5, 6, 40])
    assert st.due_evals(8) == [5, 6]


def test_resumed_state_skips_the_evaluations_in_the_checkpoint():
    st = TrainState.begin(step=8, grad_accum=2, eval_at=[16, 32, 64, 128], evals_done=[16, 32])
    assert (st.step, st.micro_done) == (8, 16)
    assert st.pending == [64, 128] and st.evals_done == [16, 32]
    assert st.due_evals(64) == [64]


def test_boundary_loss_is_the_mean_since_the_last_boundary_and_guards_nan(tmp_path):
    st = TrainState.begin(step=0, grad_accum=1, eval_at=[8])
    for v in (1.0, 2.0, 4.5):
        st.add_loss(torch.tensor(v, requires_grad=True))
    assert boundary_loss(st, world=1, last_good=tmp_path / "latest.json") == pytest.approx(2.5)
    assert st.loss_acc.tolist() == [0.0, 0.0]  # reset for the next boundary
    st.step = 7
    st.add_loss(torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLoss, match=r"step 7: training loss is nan.*latest\.json"):
        boundary_loss(st, world=1, last_good=tmp_path / "latest.json")


class _Engine:
    """The part of a DeepSpeed engine that train_step uses: global_steps advance every `accum` steps."""

    def __init__(self, accum):
        self.accum, self.micro, self.global_steps, self.calls = accum, 0, 0, []

    def __call__(self, x, generator):
        return x.mean(), None

    def backward(self, loss):
        self.calls.append("backward")

    def step(self):
        self.micro += 1
        self.global_steps = self.micro // self.accum


class _Batches:
    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        return torch.full((2,), float(self.n)), 0.0, [1, 1]


def test_train_step_runs_one_optimizer_step_of_micro_batches():
    engine, window = _Engine(accum=3), SimpleNamespace(adds=[])
    window.add = lambda **kw: window.adds.append(kw["optimizer_step"])
    st = TrainState.begin(step=0, grad_accum=3, eval_at=[6])
    train_step(engine, _Batches(), st, window, grad_accum=3, mask_gen=torch.Generator())
    assert (st.step, st.micro_done) == (1, 3) and window.adds == [False, False, True]
    assert st.loss_acc.tolist() == [6.0, 3.0]  # micro-batch losses 1, 2, 3


def test_sink_does_not_relog_evaluations_of_a_killed_attempt(tmp_path, capsys):
    w = RunLogWriter(tmp_path / "runlog.jsonl")
    w.start(run_id="r", domains=["a", "b"], mixture={"a": 0.5, "b": 0.5}, budget_samples=4,
            unique_samples={"a": 1, "b": 1}, seed=0)  # fmt: skip
    w.eval(step=2, samples_seen={"a": 1, "b": 1}, loss={"a": 1.0, "b": 1.0})
    schedule = np.array([0, 1, 1, 0])
    sink = MetricsSink(
        tmp_path, rank=0, domains=["a", "b"], schedule=schedule, log_every=2, tensorboard=False
    )
    assert sink.started and not sink.completed and sink.last_logged_eval == 2
    assert sink.samples_seen(3) == {"a": 1, "b": 2}
    assert [s for s in range(1, 5) if sink.due(s)] == [2, 4]
    sink.eval(step=2, position=2, loss={"a": 0.9, "b": 0.9})  # re-done after the resume: not logged again
    sink.eval(step=4, position=4, loss={"a": 0.8, "b": 0.7})
    sink.completed_run(4)
    events = [json.loads(x) for x in (tmp_path / "runlog.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("step")) for e in events] == [
        ("start", None),
        ("eval", 2),
        ("eval", 4),
        ("end", 4),
    ]
    assert events[2]["samples_seen"] == {"a": 2, "b": 2} and events[2]["samples_total"] == 4
    out = capsys.readouterr().out
    assert "step 2 eval at 2 samples: a 0.9000, b 0.9000" in out and "step 4 eval at 4 samples" in out


def test_sink_on_other_ranks_writes_nothing(tmp_path, capsys):
    sink = MetricsSink(tmp_path / "r", rank=1, domains=["a"], schedule=np.zeros(4, int), log_every=1,
                       tensorboard=False)  # fmt: skip
    sink.begin(config={}, world_size=2, start={})
    sink.eval(step=1, position=2, loss={"a": 1.0})
    sink.failed(1, "boom")
    assert not (tmp_path / "r").exists() and capsys.readouterr().out == ""


def test_sink_mirrors_scalars_to_tensorboard(tmp_path):
    # The real SummaryWriter, read back with TensorBoard's own event reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = MetricsSink(
        tmp_path, rank=0, domains=["a"], schedule=np.zeros(8, int), log_every=1, tensorboard=True
    )
    start = dict(
        run_id="r", domains=["a"], mixture={"a": 1.0}, budget_samples=8, unique_samples={"a": 1}, seed=0
    )
    sink.begin(config={"x": 1}, world_size=1, start=start)
    assert json.loads((tmp_path / "config.json").read_text()) == {"config": {"x": 1}, "world_size": 1}
    report = {
        "samples_per_s": 10.0,
        "seconds_per_sample": {"a": 0.1},
        "data_wait_frac": 0.5,
        "tflops_per_device": 1.0,
    }
    sink.throughput(step=1, total_steps=2, train_loss=1.5, lr=1e-3, report=report)
    sink.throughput(step=2, total_steps=2, train_loss=1.25, lr=5e-4, report={**report, "mfu": 0.25})
    sink.eval(step=2, position=4, loss={"a": 1.125})
    sink.completed_run(2)
    assert sink.tb is None  # closed: the events are on disk
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert got == {
        "train/loss": [(1, 1.5), (2, 1.25)],
        "train/lr": [(1, pytest.approx(1e-3)), (2, pytest.approx(5e-4))],  # float32 in the event file
        "throughput/samples_per_s": [(1, 10.0), (2, 10.0)],
        "throughput/data_wait_frac": [(1, 0.5), (2, 0.5)],
        "throughput/tflops_per_device": [(1, 1.0), (2, 1.0)],
        "throughput/mfu": [(2, 0.25)],
        "eval_loss/a": [(4, 1.125)],  # against samples, as the scaling curves
    }
    kinds = [json.loads(x)["event"] for x in (tmp_path / "runlog.jsonl").read_text().splitlines()]
    assert kinds == ["start", "throughput", "throughput", "eval", "end"]


def test_elapsed_and_eta_of_the_console_lines():
    assert [format_duration(s) for s in (0, 0.4, 42, 60, 185, 3599.6, 7380, 86400 + 4 * 3600 + 59)] == [
        "0s", "0s", "42s", "1m00s", "3m05s", "1h00m", "2h03m", "1d04h",
    ]  # fmt: skip
    p = Progress(started=100.0, recent=2)
    assert p.line(100.0, 0, 100) == "elapsed 0s, ETA ?"  # one mark: no rate yet
    # 10 steps in 60 s: 90 steps left take 540 s.
    assert p.line(160.0, 10, 100) == "elapsed 1m00s, ETA 9m00s"
    # The rate is that of the last `recent` intervals: (0 -> 10 in 60 s, 10 -> 20 in 20 s) = 20 / 80 s.
    assert p.line(180.0, 20, 100) == "elapsed 1m20s, ETA 5m20s"
    # The oldest interval drops out: steps 10 -> 30 in 40 s (160 -> 200), 70 left take 140 s.
    assert p.line(200.0, 30, 100) == "elapsed 1m40s, ETA 2m20s"
    assert p.eta(100, 100) == 0.0
    # A resumed attempt: its first mark is the checkpoint's step, its elapsed time its own.
    r = Progress(started=5.0)
    r.mark(5.0, 60)
    assert r.line(35.0, 70, 100) == "elapsed 30s, ETA 1m30s"


def test_sink_console_line_has_elapsed_time_and_eta(tmp_path, capsys):
    import time

    sink = MetricsSink(tmp_path, rank=0, domains=["a"], schedule=np.zeros(8, int), log_every=1,
                       tensorboard=False, started_at=time.monotonic() - 125)  # fmt: skip
    start = dict(
        run_id="r", domains=["a"], mixture={"a": 1.0}, budget_samples=8, unique_samples={"a": 1}, seed=0
    )
    sink.begin(config={}, world_size=1, start=start, step=0)
    sink.throughput(step=1, total_steps=4, train_loss=1.0, lr=1e-3,
                    report={"samples_per_s": 2.0, "seconds_per_sample": {"a": 0.5}, "data_wait_frac": 0.0})  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(
        r"step 1/4 loss 1\.0000 2\.0 samples/s, data wait 0%, elapsed 2m0[5-9]s, ETA \d+s$", out.strip()
    )
