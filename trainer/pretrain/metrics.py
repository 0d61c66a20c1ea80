"""Throughput accounting: samples/s, voxels/s, step time, data-wait fraction, TFLOP/s, MFU, peak memory.

MFU = achieved model FLOP/s per device / peak dense FLOP/s of the device, where achieved FLOP/s =
`train_flops_per_sample(cfg)` (trainer/model.py: matmul FLOPs, forward + backward = 3 x forward)
x global samples/s / world size. Peaks are the vendors' dense (no sparsity) numbers for the precision
trained in; on CPU the peak is unknown unless `train.peak_tflops` is set, and MFU is then omitted.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

# Dense peak TFLOP/s per device (bf16 tensor cores / fp32 without TF32), by substring of the device name.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "fp32": 91.6},
}


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision]
    return None


def domain_counts(schedule: np.ndarray, start: int, stop: int, n_domains: int) -> list[int]:
    """Global samples per domain at sequence positions [start, stop) of the sampler's domain schedule."""
    return np.bincount(schedule[start:stop], minlength=n_domains).tolist()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory (CUDA), or the process's peak resident set size (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class ThroughputWindow:
    """Accumulates the optimizer steps between two throughput events (evals and saves excluded)."""

    def __init__(
        self,
        *,
        domains: list[str],
        flops_per_sample: float,
        voxels_per_sample: int,
        world_size: int,
        peak: float | None,
        device: torch.device,
    ):
        self.domains = domains
        self.flops_per_sample = flops_per_sample
        self.voxels_per_sample = voxels_per_sample
        self.world_size = world_size
        self.peak = peak
        self.device = device
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # CPU-GPU sync: the window starts with an idle device
        self.t0 = time.perf_counter()
        self.steps = 0
        self.data_wait = 0.0
        self.counts = [0] * len(self.domains)

    def add(self, *, data_wait: float, counts: list[int], optimizer_step: bool = True) -> None:
        """One micro-batch; `optimizer_step` when it completed an optimizer step (grad accumulation)."""
        self.steps += int(optimizer_step)
        self.data_wait += data_wait
        self.counts = [a + b for a, b in zip(self.counts, counts)]

    def report(self) -> dict | None:
        """Fields of a `throughput` event for the window, or None when it holds no step."""
        if self.steps == 0:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # CPU-GPU sync: the window ends when the device is done
        elapsed = time.perf_counter() - self.t0
        n = sum(self.counts)
        sps = n / elapsed
        tflops = self.flops_per_sample * sps / self.world_size / 1e12
        # Crops have one size, so compute is split evenly per sample; the per-domain value differs only
        # through the domains present (lawfit reads it as the cost of one sample of that domain).
        spp = {d: elapsed / n for d, c in zip(self.domains, self.counts) if c > 0}
        out = {
            "samples_per_s": sps,
            "seconds_per_sample": spp,
            "samples_per_s_per_device": sps / self.world_size,
            "voxels_per_s": sps * self.voxels_per_sample,
            "step_time_s": elapsed / self.steps,
            "data_wait_frac": min(1.0, self.data_wait / elapsed),
            "tflops_per_device": tflops,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "window_steps": self.steps,
        }
        if self.peak:
            out["mfu"] = tflops / self.peak
        return out
