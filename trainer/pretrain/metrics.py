"""Throughput accounting: samples/s, voxels/s, step time, data-wait fraction, TFLOP/s, MFU, peak memory.

MFU = achieved model FLOP/s per device / peak dense FLOP/s of the device, where achieved FLOP/s =
`train_flops_per_sample(cfg)` (trainer/model.py: matmul FLOPs, forward + backward = 3 x forward)
x global samples/s / world size. Peaks are the vendors' dense (no sparsity) numbers for the precision
trained in; on CPU the peak is unknown unless `train.peak_tflops` is set, and MFU is then omitted.
"""

from __future__ import annotations

import re
import resource
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Peak:
    """Dense (no sparsity) peak TFLOP/s of one GPU part: bf16 tensor cores, and fp32 without TF32 (the
    trainer's fp32 runs do not enable TF32)."""

    part: str
    bf16: float
    fp32: float


# GPU parts by a pattern of `torch.cuda.get_device_name()`, most specific first: the first match wins.
# One family's form factors differ (an H100 PCIe card runs at lower clocks and power than the SXM module:
# 756 against 989 bf16 TFLOP/s), so a bare family name ("H100") matches nothing rather than the wrong
# part; `train.peak_tflops` sets the peak of any device. Numbers: NVIDIA's datasheets. Where they quote
# tensor-core figures only "with sparsity" (2x), the dense values below are half of those.
#   H100 SXM / PCIe / NVL:  "NVIDIA H100 Tensor Core GPU" datasheet (2023): bf16 1,979 / 1,513 / 1,671
#                           sparse; FP32 67 / 51 / 60.
#   H200 SXM / NVL:         "NVIDIA H200 Tensor Core GPU" datasheet (2024): bf16 1,979 / 1,671 sparse;
#                           FP32 67 / 60. GH200 (Grace Hopper): the H100/H200 SXM GPU, same figures.
#   A100 SXM and PCIe, 40 and 80 GB: "NVIDIA A100 Tensor Core GPU" datasheet (2021): bf16 312 dense
#                           (624 sparse), FP32 19.5 for all four (the PCIe card sustains less power):
#                           every A100 name gets 312.
#   L40S / L40 / L4:        product datasheets (2023), dense: bf16 362.05 / 181.05 / 121;
#                           FP32 91.6 / 90.5 / 30.3.
#   A40 / A10:              product datasheets (2021), dense: bf16 149.7 / 125; FP32 37.4 / 31.2.
#   GB200 / B200:           "GB200 NVL72 / HGX B200" datasheet (2024), per GPU: bf16 5 / 4.5 PFLOPS
#                           sparse; FP32 80 / 75.
# Device names as the driver reports them, e.g. "NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe",
# "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA L40S", "NVIDIA L4", "NVIDIA B200".
PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"\bGB200\b", Peak("GB200", 2500.0, 80.0)),
    (r"\bB200\b", Peak("B200", 2250.0, 75.0)),
    (r"\bGH200\b", Peak("GH200", 989.4, 66.9)),
    (r"\bH200\b.*\bNVL\b", Peak("H200 NVL", 835.5, 60.0)),
    (r"\bH200\b", Peak("H200 SXM", 989.4, 66.9)),
    (r"\bH100\b.*\bNVL\b", Peak("H100 NVL", 835.5, 60.0)),
    (r"\bH100\b.*\bPCIe\b", Peak("H100 PCIe", 756.5, 51.0)),
    (r"\bH100\b.*(\bSXM|\bHBM3\b)", Peak("H100 SXM", 989.4, 66.9)),
    (r"\bA100\b.*\bPCIe\b", Peak("A100 PCIe", 312.0, 19.5)),
    (r"\bA100\b.*\bSXM", Peak("A100 SXM", 312.0, 19.5)),
    (r"\bA100\b", Peak("A100", 312.0, 19.5)),
    (r"\bL40S\b", Peak("L40S", 362.05, 91.6)),
    (r"\bL40\b", Peak("L40", 181.05, 90.5)),
    (r"\bL4\b", Peak("L4", 121.0, 30.3)),
    (r"\bA40\b", Peak("A40", 149.7, 37.4)),
    (r"\bA10\b", Peak("A10", 125.0, 31.2)),
)


def device_peak(name: str) -> Peak | None:
    """The part a `torch.cuda.get_device_name()` string names, or None when the table does not know it
    (MFU is then left out unless `train.peak_tflops` is set)."""
    if re.search(r"\bMIG\b", name):  # a MIG slice ("... MIG 3g.40gb") has only part of the GPU's SMs
        return None
    for pattern, peak in PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return peak
    return None


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = device_peak(name)
    if peak is None:
        warnings.warn(
            f"voxmix: no peak FLOP/s known for the GPU {name!r} (trainer/pretrain/metrics.py PEAKS): "
            "MFU is left out of the run log; set train.peak_tflops to the device's dense peak to log it",
            stacklevel=2,
        )
        return None
    return getattr(peak, precision)


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
