"""Benchmark: fused masked MAE loss (forward + gradient) against the PyTorch reference.

GB/s counts the bytes the fused op must move: the masked target patches gathered from x, the
predictions, the gradient written (all in the input dtype) and the indices. GPU: the Triton kernel vs
the eager reference and torch.compile of it, bf16, with % of the device's HBM peak (target >= 70%).
CPU: the C++ op vs the reference (target >= 2x).

    .venv/bin/python benchmarks/bench_mae_loss.py [--quick] [--out FILE] [--hbm-gbps 4800]
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Recorder, default_out, gbps, measure, parse_args, print_table  # noqa: E402
from voxmix.kernels.mae_loss import mae_loss, mae_loss_ref  # noqa: E402

# Peak HBM bandwidth by device name (GB/s, vendor figures): the denominator of "% of HBM".
HBM_PEAK = {"H200": 4800.0, "H100 SXM": 3350.0, "H100": 3350.0, "A100": 2039.0}


def _peak(device):
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in HBM_PEAK.items() if k in name), None)


def run(rec, device, dtype, shapes):
    peak = _peak(device)
    table = [_one_shape(rec, device, dtype, peak, *shape) for shape in shapes]
    ratio_names = [k for k in rec.rows[-1] if k.startswith("vs_")]
    print_table(["shape", "ms", "GB/s", "% HBM", *[f"x {k}" for k in ratio_names]], table)


def _one_shape(rec, device, dtype, peak, b, side, p, mask_ratio):
    x = torch.randn(b, 1, side, side, side, device=device, dtype=dtype)
    n, v = (side // p) ** 3, p**3
    m = int(round(n * mask_ratio))
    idx = torch.stack([torch.randperm(n, device=device)[:m] for _ in range(b)])
    pred = torch.randn(b, m, v, device=device, dtype=dtype, requires_grad=True)
    nbytes = 3 * b * m * v * x.element_size() + idx.numel() * 8
    config = {"B": b, "side": side, "patch": p, "M": m, "dtype": str(dtype).removeprefix("torch.")}

    def step(fn):
        loss, per_sample = fn(pred, x, idx, p)
        return torch.autograd.grad(loss, pred)

    backends = {"voxmix": lambda: step(mae_loss), "pytorch": lambda: step(mae_loss_ref)}
    if device == "cuda":
        compiled = torch.compile(mae_loss_ref)
        backends["pytorch-compiled"] = lambda: step(compiled)
    ms = {}
    for name, fn in backends.items():
        t = measure(fn, device=device)
        ms[name] = t.ms
        bw = gbps(nbytes, t.ms)
        rec.add(
            config=config,
            backend=name,
            mode="fwd+grad",
            timing=t,
            gbps=bw,
            hbm_fraction=bw / peak if peak else None,
        )
    ours = ms["voxmix"]
    ratios = {f"vs_{k}": ms[k] / ours for k in ms if k != "voxmix"}
    rec.add(config=config, backend="voxmix", mode="fwd+grad:ratio", timing=None, **ratios)
    frac = f"{gbps(nbytes, ours) / peak:.0%}" if peak else "-"
    return [f"{b}x{side}^3/p{p}/M{m}", ours, gbps(nbytes, ours), frac, *ratios.values()]


def main():
    args = parse_args(__doc__.splitlines()[0], default_out("mae_loss"))
    rec = Recorder(bench="mae_loss", device=args.device, path=args.out or None)
    if args.device == "cuda":
        shapes = [(32, 96, 16, 0.75), (8, 160, 16, 0.75), (64, 64, 8, 0.75), (16, 128, 16, 0.9)]
        run(rec, "cuda", torch.bfloat16, shapes[:2] if args.quick else shapes)
    else:
        shapes = [(4, 96, 16, 0.75), (8, 64, 8, 0.75), (2, 128, 16, 0.9)]
        for dtype in (torch.float32, torch.bfloat16):
            run(rec, "cpu", dtype, shapes[:1] if args.quick else shapes)
    rec.write()


if __name__ == "__main__":
    main()
