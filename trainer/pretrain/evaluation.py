"""Held-out evaluation: fixed crops per domain (validation split) with fixed masks, the same every time.

The loss of a domain is the mean normalized-pixel MAE loss over its crops; its standard error is the
sample standard deviation of the per-crop losses over sqrt(number of crops): the noise of that
evaluation point from the choice of crops (the crops are a fixed sample, the same at every point).
Crops are sharded over ranks (i % world_size == rank) and the sums, sums of squares and counts are
all-reduced (never per-rank means or deviations), so each crop counts once whatever the world size.
Under ZeRO-3 every rank must run the same number of forwards (parameters are gathered collectively), so
the shards are padded with repeats whose losses are not counted.

`Evaluator` is the training loop's view: evaluate the live model, stop on a non-finite loss, hand the
losses to the metrics sink.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from voxmix.trainer.pretrain.sink import MetricsSink
from voxmix.trainer.pretrain.step import NonFiniteLoss


class EvalSet:
    def __init__(self, crops: dict[str, torch.Tensor], model, seed: int):
        self.domains = sorted(crops)
        self.crops = crops
        self.masks = {}
        for d in self.domains:
            # Masks depend only on (seed, domain): stable across runs, world sizes and resumes.
            g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(d.encode())) % (2**63))
            self.masks[d] = model.random_masking(crops[d].shape[0], "cpu", g)


@dataclass(frozen=True)
class EvalResult:
    loss: dict[str, float]
    """Mean per-crop loss of each domain with at least one crop."""
    loss_se: dict[str, float]
    """Standard error of that mean (sample std / sqrt(n)); only domains with at least two crops."""


def loss_stats(
    sums: torch.Tensor, sumsq: torch.Tensor, counts: torch.Tensor, domains: list[str]
) -> EvalResult:
    """Means and standard errors from all-reduced sums, sums of squares and counts (float64).

    sumsq - n * mean^2 cancels digits: its relative rounding error is ~1e-16 * (mean / std)^2, still below
    1e-6 for a per-crop spread of 0.01% of the mean (measured spreads are percents), so no shifted sums.
    """
    loss, se = {}, {}
    for j, d in enumerate(domains):
        n = float(counts[j])
        if n <= 0:
            continue
        mean = float(sums[j]) / n
        loss[d] = mean
        var = (float(sumsq[j]) - n * mean * mean) / (n - 1) if n >= 2 else math.nan  # 1 crop: no variance
        # Rounding can leave a tiny negative variance when all crops agree; an overflowed sum of squares
        # (a diverging loss) gives no usable error and is left out rather than stopping the run.
        if math.isfinite(var):
            se[d] = math.sqrt(max(var, 0.0) / n)
    return EvalResult(loss, se)


@torch.no_grad()
def evaluate(
    model, es: EvalSet, *, rank: int, world_size: int, batch_size: int, device, dtype, pad_to_equal: bool
) -> EvalResult:
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(es.domains), dtype=torch.float64)
    sumsq = torch.zeros(len(es.domains), dtype=torch.float64)
    counts = torch.zeros(len(es.domains), dtype=torch.float64)
    for j, d in enumerate(es.domains):
        x_all, (keep_all, mask_all) = es.crops[d], es.masks[d]
        n = x_all.shape[0]
        mine = list(range(rank, n, world_size))
        if pad_to_equal:
            per_rank = -(-n // world_size)
            mine += [mine[0] if mine else 0] * (per_rank - len(mine))
            real = min(len(range(rank, n, world_size)), per_rank)
        else:
            real = len(mine)
        for s in range(0, len(mine), batch_size):
            idx = torch.tensor(mine[s : s + batch_size])
            x = x_all[idx].to(device=device, dtype=dtype, non_blocking=True)
            masks = (keep_all[idx].to(device), mask_all[idx].to(device))
            _, per_sample = model(x, masks=masks)
            valid = max(0, min(len(idx), real - s))
            counted = per_sample[:valid].double().cpu()  # CPU-GPU sync, once per eval batch
            sums[j] += counted.sum()
            sumsq[j] += counted.square().sum()
            counts[j] += valid
    if world_size > 1:
        allr = torch.stack([sums, sumsq, counts]).to(device)  # NCCL reduces device tensors only
        dist.all_reduce(allr)
        sums, sumsq, counts = allr.cpu()
    model.train(was_training)
    return loss_stats(sums, sumsq, counts, es.domains)


@dataclass(kw_only=True)
class Evaluator:
    """Evaluates the training model on the fixed held-out set at the loop's evaluation points (collective:
    every rank calls it at the same step)."""

    model: torch.nn.Module
    eval_set: EvalSet
    sink: MetricsSink
    rank: int
    world_size: int
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    pad_to_equal: bool
    """ZeRO-3 gathers parameters in every forward: every rank must run as many forwards."""

    def __call__(self, step: int, position: int) -> dict[str, float]:
        """Per-domain held-out loss after optimizer step `step` (`position` global samples trained)."""
        res = evaluate(
            self.model,
            self.eval_set,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            pad_to_equal=self.pad_to_equal,
        )
        loss = res.loss
        bad = {d: v for d, v in loss.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(f"step {step}: evaluation loss is not finite {bad}")
        self.sink.eval(step=step, position=position, loss=loss, loss_se=res.loss_se)
        return loss
