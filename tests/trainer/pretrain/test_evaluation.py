"""Held-out evaluation: mean loss and its standard error per domain against a NumPy reference of the
per-crop losses, on one rank, sharded over two CPU ranks (gloo, with and without ZeRO-3 padding), and
through the sink into the run log."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from voxmix.formats.runlog import read_runlog
from voxmix.trainer.pretrain.config import ModelConfig
from voxmix.trainer.pretrain.evaluation import EvalSet, Evaluator, evaluate, loss_stats
from voxmix.trainer.pretrain.model import MAE3D
from voxmix.trainer.pretrain.sink import MetricsSink

SMALL = dict(
    size="tiny", crop=16, patch=8, width=32, depth=1, heads=2, dec_width=16, dec_depth=1, dec_heads=2
)
# 7 crops (prime: uneven over 2 ranks and over batches of 3), 5 crops, and 1 crop (no standard error).
N_CROPS = {"a": 7, "b": 5, "c": 1}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainer/pretrain/conftest.py


def _setup() -> tuple[MAE3D, EvalSet]:
    """The same model and crops in every process (seeded)."""
    torch.manual_seed(0)
    model = MAE3D(ModelConfig(**SMALL))
    g = torch.Generator().manual_seed(1)
    # Smooth random volumes with a per-crop scale: per-crop losses that differ visibly.
    crops = {
        d: torch.rand(n, 1, 16, 16, 16, generator=g) * torch.linspace(0.5, 2.0, n)[:, None, None, None, None]
        for d, n in N_CROPS.items()
    }
    return model, EvalSet(crops, model, seed=3)


def _reference(model: MAE3D, es: EvalSet) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std / sqrt(n) of the per-crop losses, each crop's loss from a forward of its own."""
    loss, se = {}, {}
    with torch.no_grad():
        for d in es.domains:
            keep, mask = es.masks[d]
            per = np.array(
                [
                    float(model(es.crops[d][i : i + 1], masks=(keep[i : i + 1], mask[i : i + 1]))[1][0])
                    for i in range(N_CROPS[d])
                ]
            )
            loss[d] = float(per.mean())
            if len(per) > 1:
                se[d] = float(per.std(ddof=1) / np.sqrt(len(per)))
    return loss, se


def _close(res, ref_loss, ref_se) -> None:
    # Per-crop losses in float32 differ by ~1e-7 between batch shapes; se is O(1e-2) here.
    assert res.loss.keys() == ref_loss.keys() and res.loss_se.keys() == ref_se.keys()
    for d in ref_loss:
        assert res.loss[d] == pytest.approx(ref_loss[d], rel=1e-5)
    for d in ref_se:
        assert res.loss_se[d] == pytest.approx(ref_se[d], rel=1e-4)


def test_loss_stats_matches_numpy_in_float64():
    rng = np.random.default_rng(0)
    vals = {"a": rng.uniform(0.5, 1.5, 37), "b": np.full(4, 0.7), "c": np.array([0.9]), "d": np.array([])}
    stats = [torch.tensor([float(np.sum(v**k)) for v in vals.values()], dtype=torch.float64) for k in (1, 2)]
    counts = torch.tensor([float(len(v)) for v in vals.values()], dtype=torch.float64)
    res = loss_stats(*stats, counts, list(vals))
    assert res.loss == pytest.approx({"a": vals["a"].mean(), "b": 0.7, "c": 0.9}, rel=1e-12)
    assert res.loss_se.keys() == {"a", "b"}  # one crop: no sample variance; no crop: nothing
    assert res.loss_se["a"] == pytest.approx(vals["a"].std(ddof=1) / np.sqrt(37), rel=1e-9)
    assert 0.0 <= res.loss_se["b"] < 1e-7  # identical crops: rounding must not make it negative or NaN


def test_evaluate_one_rank_matches_per_crop_reference():
    model, es = _setup()
    ref = _reference(model, es)
    for bs in (3, 16):
        res = evaluate(
            model,
            es,
            rank=0,
            world_size=1,
            batch_size=bs,
            device="cpu",
            dtype=torch.float32,
            pad_to_equal=False,
        )
        _close(res, *ref)
    assert min(ref[1].values()) > 1e-3  # the crops really differ: the test can tell se from 0


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, es = _setup()
        got = {}
        for pad in (False, True):
            res = evaluate(
                model,
                es,
                rank=rank,
                world_size=2,
                batch_size=2,
                device="cpu",
                dtype=torch.float32,
                pad_to_equal=pad,
            )
            got[str(pad)] = {"loss": res.loss, "loss_se": res.loss_se}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(got, f)
    finally:
        dist.destroy_process_group()


def test_evaluate_sharded_over_two_gloo_ranks_counts_each_crop_once(tmp_path):
    """7 and 5 crops over 2 ranks in batches of 2: rank 1 holds fewer crops; with ZeRO-3 padding it runs
    repeats that must not be counted (a mean of per-rank means or a counted repeat moves the numbers)."""
    with socket.socket() as s:  # a free rendezvous port: other test sessions may run at the same time
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(tmp_path)), nprocs=2, join=True)
    model, es = _setup()
    ref_loss, ref_se = _reference(model, es)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for pad in ("False", "True"):
            _close(SimpleNamespace(**got[pad]), ref_loss, ref_se)


def test_evaluator_writes_loss_se_to_the_run_log(tmp_path):
    model, es = _setup()
    ref_loss, ref_se = _reference(model, es)
    sink = MetricsSink(tmp_path, rank=0, domains=es.domains, schedule=np.zeros(8, int), log_every=1,
                       tensorboard=False)  # fmt: skip
    start = dict(run_id="r", domains=es.domains, mixture={d: 1 / 3 for d in es.domains}, budget_samples=8,
                 unique_samples={d: 1 for d in es.domains}, seed=0)  # fmt: skip
    sink.begin(config={}, world_size=1, start=start)
    ev = Evaluator(model=model, eval_set=es, sink=sink, rank=0, world_size=1, batch_size=4,
                   device=torch.device("cpu"), dtype=torch.float32, pad_to_equal=False)  # fmt: skip
    ev(step=1, position=8)
    (point,) = read_runlog(tmp_path).evals
    assert point.loss_se.keys() == {"a", "b"}  # domain c has one crop: no standard error logged
    for d in ref_se:
        assert point.loss_se[d] == pytest.approx(ref_se[d], rel=1e-4)
        assert point.loss[d] == pytest.approx(ref_loss[d], rel=1e-5)
