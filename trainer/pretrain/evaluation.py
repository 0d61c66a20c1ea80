"""Held-out evaluation: fixed crops per domain (validation split) with fixed masks, the same every time.

The loss of a domain is the mean normalized-pixel MAE loss over its crops. Crops are sharded over ranks
(i % world_size == rank) and the sums are all-reduced, so each crop counts once whatever the world size.
Under ZeRO-3 every rank must run the same number of forwards (parameters are gathered collectively), so
the shards are padded with repeats whose losses are not counted.
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist


class EvalSet:
    def __init__(self, crops: dict[str, torch.Tensor], model, seed: int):
        self.domains = sorted(crops)
        self.crops = crops
        self.masks = {}
        for d in self.domains:
            # Masks depend only on (seed, domain): stable across runs, world sizes and resumes.
            g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(d.encode())) % (2**63))
            self.masks[d] = model.random_masking(crops[d].shape[0], "cpu", g)


@torch.no_grad()
def evaluate(
    model, es: EvalSet, *, rank: int, world_size: int, batch_size: int, device, dtype, pad_to_equal: bool
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(es.domains), dtype=torch.float64)
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
            sums[j] += per_sample[:valid].double().sum().cpu()  # CPU-GPU sync, once per eval batch
            counts[j] += valid
    if world_size > 1:
        both = torch.stack([sums, counts]).to(device)  # NCCL reduces device tensors only
        dist.all_reduce(both)
        sums, counts = both.cpu()
    model.train(was_training)
    return {d: float(sums[j] / counts[j]) for j, d in enumerate(es.domains) if counts[j] > 0}
