"""One optimizer step of the training loop, and the NaN guard at the boundaries after it.

`train_step` runs the `grad_accum` micro-batches of one optimizer step rather than one micro-batch:
every decision the loop takes (evaluate, log, checkpoint, check the loss) happens at optimizer-step
boundaries only, and checkpoints (hence resumes) are always aligned to them, so the loop never needs
to see a micro-step. DeepSpeed still gets `engine.step()` after every micro-batch: it applies the
optimizer itself at the accumulation boundary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from voxmix.trainer.pretrain.metrics import ThroughputWindow, domain_counts
from voxmix.trainer.pretrain.state import TrainState


class NonFiniteLoss(RuntimeError):
    """A training or evaluation loss is NaN or infinite; the run stops with exit status 1."""


class BatchStream:
    """The loader's batches, each with what the throughput window needs: the data wait and the global
    samples per domain of that micro-step (read from the sampler's schedule, no communication)."""

    def __init__(self, loader: Any, schedule: np.ndarray, n_domains: int):
        self.loader = loader
        self.schedule = schedule
        self.n_domains = n_domains
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader)

    def next(self) -> tuple[torch.Tensor, float, list[int]]:
        """-> (micro-batch, seconds waited for it, global samples per domain it stands for)."""
        before = self.loader.position
        t0 = time.perf_counter()
        x, _ = next(self._it)
        wait = time.perf_counter() - t0
        return x, wait, domain_counts(self.schedule, before, self.loader.position, self.n_domains)


def train_step(
    engine: Any,
    batches: BatchStream,
    state: TrainState,
    window: ThroughputWindow,
    *,
    grad_accum: int,
    mask_gen: torch.Generator,
) -> None:
    """Forward, backward and DeepSpeed step for each micro-batch of one optimizer step; updates `state`."""
    for i in range(grad_accum):
        x, wait, counts = batches.next()
        loss, _ = engine(x, generator=mask_gen)
        engine.backward(loss)
        engine.step()
        state.micro_done += 1
        state.add_loss(loss)
        window.add(data_wait=wait, counts=counts, optimizer_step=i == grad_accum - 1)
    state.step = engine.global_steps


def boundary_loss(state: TrainState, *, world: int, last_good: Path) -> float:
    """Mean training loss since the last boundary over all ranks (collective); NonFiniteLoss if not finite.

    Checked before anything of this boundary is logged or saved, so a NaN never reaches a checkpoint.
    """
    if world > 1:
        dist.all_reduce(state.loss_acc)
    train_loss = float(state.loss_acc[0] / state.loss_acc[1])  # CPU-GPU sync, once per boundary
    state.loss_acc.zero_()
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(
            f"step {state.step}: training loss is {train_loss}; stopping. The last good checkpoint is "
            f"{last_good} (parameters after this step are not saved)"
        )
    return train_loss
