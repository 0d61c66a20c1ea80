"""Peak FLOP/s by device name (the MFU denominator) and the throughput window's MFU arithmetic."""

from __future__ import annotations

import time

import pytest
import torch

from voxmix.trainer.pretrain.metrics import ThroughputWindow, device_peak, peak_tflops

# (name as torch.cuda.get_device_name() reports it, part, datasheet bf16 TFLOP/s *with sparsity* or
# dense where the datasheet gives it, whether that figure is sparse, datasheet FP32 TFLOP/s).
DATASHEET = [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 1979, True, 67),
    ("NVIDIA H100 PCIe", "H100 PCIe", 1513, True, 51),
    ("NVIDIA H100 NVL", "H100 NVL", 1671, True, 60),
    ("NVIDIA H200", "H200 SXM", 1979, True, 67),
    ("NVIDIA H200 NVL", "H200 NVL", 1671, True, 60),
    ("NVIDIA GH200 480GB", "GH200", 1979, True, 67),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", 312, False, 19.5),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM", 312, False, 19.5),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe", 312, False, 19.5),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 312, False, 19.5),
    ("NVIDIA L40S", "L40S", 362.05, False, 91.6),
    ("NVIDIA L40", "L40", 181.05, False, 90.5),
    ("NVIDIA L4", "L4", 121, False, 30.3),
    ("NVIDIA A40", "A40", 149.7, False, 37.4),
    ("NVIDIA A10", "A10", 125, False, 31.2),
    ("NVIDIA B200", "B200", 4500, True, 75),
    ("NVIDIA GB200", "GB200", 5000, True, 80),
]


@pytest.mark.parametrize("name, part, bf16, sparse, fp32", DATASHEET, ids=[r[0] for r in DATASHEET])
def test_device_names_map_to_their_part(name, part, bf16, sparse, fp32):
    peak = device_peak(name)
    assert peak is not None and peak.part == part, (name, peak)
    assert peak.bf16 == pytest.approx(bf16 / 2 if sparse else bf16, rel=2e-3)
    assert peak.fp32 == pytest.approx(fp32, rel=2e-3)


def test_form_factors_of_one_family_differ():
    """The bug of #16: "H100" in the name was enough, so a PCIe card got the SXM module's peak."""
    sxm, pcie, nvl = (device_peak(f"NVIDIA H100 {s}") for s in ("80GB HBM3", "PCIe", "NVL"))
    assert pcie.bf16 < nvl.bf16 < sxm.bf16


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H100",  # no form factor in the name: no guess
        "NVIDIA A100-SXM4-40GB MIG 1g.5gb",  # a slice of the GPU
        "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
        "NVIDIA A10G",  # not an A10
        "NVIDIA GeForce RTX 4090",
        "Tesla V100-SXM2-16GB",
    ],
)
def test_unknown_parts_have_no_peak(name):
    assert device_peak(name) is None


def test_peak_tflops_override_and_cpu():
    cpu = torch.device("cpu")
    assert peak_tflops(cpu, "bf16", None) is None
    assert peak_tflops(cpu, "bf16", 123.0) == 123.0


def test_window_mfu_is_achieved_over_peak():
    flops, world, peak = 3.0e12, 2, 50.0
    w = ThroughputWindow(domains=["a", "b"], flops_per_sample=flops, voxels_per_sample=1000, world_size=world,
                         peak=peak, device=torch.device("cpu"))  # fmt: skip
    w.add(data_wait=0.0, counts=[3, 1])
    w.add(data_wait=0.0, counts=[0, 4])
    time.sleep(0.01)
    r = w.report()
    assert r["window_steps"] == 2
    assert r["tflops_per_device"] == pytest.approx(flops * r["samples_per_s"] / world / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops_per_device"] / peak)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_table_peak_bounds_a_measured_bf16_matmul():
    """GPU twin: on a part the table knows, a large bf16 matmul reaches a fair share of the table's peak
    and never more than it (a PCIe card given the SXM peak would still pass; a wrong family would not)."""
    name = torch.cuda.get_device_name()
    peak = device_peak(name)
    if peak is None:
        pytest.skip(f"{name!r} is not in the table")
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    tflops = 10 * 2 * n**3 / (start.elapsed_time(end) / 1e3) / 1e12
    assert 0.2 * peak.bf16 < tflops < 1.02 * peak.bf16, (name, tflops, peak)
