"""Benchmark: kernels.attention against torch SDPA (flash, cuDNN, memory-efficient) and flash-attn-4.

Shapes from 3D ViT-B/L MAE encoders and decoders: N in {55, 216, 343, 512, 1728, 4096} tokens, Dh in
{64, 128}, B*H*N ~ 1M tokens for every shape (enough CTAs to fill an H200).
TFLOP/s uses flash-attention's count: forward 4*B*H*N^2*Dh, backward 2.5x that, fwd+bwd 3.5x.
Targets (H200, bf16): fwd+bwd >= 1.0x the best SDPA backend on every shape; >= 0.9x flash-attn-4 for
N >= 512. On CPU the public op dispatches to SDPA; the run compares it with the eager reference.

    .venv/bin/python benchmarks/bench_attention.py [--quick] [--min-n 512] [--out FILE]

flash-attn-4 runs only on N >= 512 (where its target applies; each head dim costs it a JIT compile).
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Recorder, default_out, fwd_bwd_fns, measure, parse_args, print_table, tflops  # noqa: E402
from voxmix.kernels.attention import attention, attention_ref  # noqa: E402

MODES = ("fwd", "bwd", "fwd+bwd")
FA4_MIN_N = 512
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def _sdpa(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def fn(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def _flash_attn_4():
    """flash-attn-4 (CuTe DSL) when installed; it takes (B, N, H, Dh)."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as err:  # noqa: BLE001  (ImportError, or its CUDA libraries failing to load)
        print(f"flash-attn-4 not installed ({err}): skipping it")
        return None

    def fn(q, k, v):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)

    return fn


def backends(device):
    if device != "cuda":
        return {"voxmix": attention, "pytorch-eager": attention_ref}
    out = {
        "voxmix": attention,
        "sdpa-flash": _sdpa("FLASH_ATTENTION"),
        "sdpa-cudnn": _sdpa("CUDNN_ATTENTION"),
        "sdpa-efficient": _sdpa("EFFICIENT_ATTENTION"),
    }
    fa4 = _flash_attn_4()
    if fa4 is not None:
        out["flash-attn-4"] = fa4
    return out


def _one_shape(rec, device, dtype, fns, b, h, n, dh):
    g = torch.Generator(device=device).manual_seed(0)
    # (B, N, 3, H, Dh) permuted, as a fused qkv projection hands them to attention
    qkv = torch.randn(b, n, 3, h, dh, device=device, dtype=dtype, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(0))
    flops = 4 * b * h * n * n * dh
    config = {"B": b, "H": h, "N": n, "Dh": dh, "dtype": str(dtype).removeprefix("torch.")}
    ms = {}
    for name, fn in fns.items():
        if name == "flash-attn-4" and n < FA4_MIN_N:
            continue
        try:
            modes = fwd_bwd_fns(lambda fn=fn: fn(q, k, v), [q, k, v])
            for mode in MODES:
                t = measure(modes[mode], device=device)
                ms[name, mode] = t.ms
                rec.add(
                    config=config,
                    backend=name,
                    mode=mode,
                    timing=t,
                    tflops=tflops(flops * FLOP_FACTOR[mode], t.ms),
                )
        # A baseline without this shape/dtype/GPU is recorded, not fatal (flash-attn-4's CuTe DSL raises
        # its own error types); our own kernel failing is.
        except Exception as err:  # noqa: BLE001
            if name == "voxmix":
                raise
            print(f"  {name} N={n} Dh={dh}: unavailable ({str(err).splitlines()[0][:100]})")
            rec.add(config=config, backend=name, mode="error", timing=None, error=str(err)[:300])
        if device == "cuda":
            torch.cuda.empty_cache()
    rows = []
    for mode in MODES:
        ours = ms.get(("voxmix", mode))
        others = {k[0]: v for k, v in ms.items() if k[1] == mode and k[0] != "voxmix"}
        if ours is None or not others:
            continue
        sdpa = {k: v for k, v in others.items() if k.startswith("sdpa")}
        best_name = min(sdpa or others, key=(sdpa or others).get)
        ratios = {"vs_best_baseline": (sdpa or others)[best_name] / ours, "best_baseline": best_name}
        if "flash-attn-4" in others:
            ratios["vs_flash_attn_4"] = others["flash-attn-4"] / ours
        rec.add(config=config, backend="voxmix", mode=mode + ":ratio", timing=None, **ratios)
        rows.append([f"N={n} Dh={dh} BxH={b}x{h}", mode, ours, tflops(flops * FLOP_FACTOR[mode], ours),
                     best_name, ratios["vs_best_baseline"], ratios.get("vs_flash_attn_4", "-")])  # fmt: skip
    return rows


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        default_out("attention"),
        extra=lambda p: p.add_argument("--min-n", type=int, default=0, help="only shapes with N >= this"),
    )
    rec = Recorder(bench="attention", device=args.device, path=args.out or None)
    fns = backends(args.device)
    if args.device == "cuda":
        dtype = torch.bfloat16
        ns = [55, 216, 512, 4096] if args.quick else [55, 216, 343, 512, 1728, 4096]
        # ViT-B/L heads (H=12 at Dh=64, H=8 at Dh=128); B so that B*H*N ~ 1M tokens (~128 MB per q/k/v).
        shapes = [(max(1, 2**20 // (h * n)), h, n, dh) for dh, h in ((64, 12), (128, 8)) for n in ns]
    else:
        dtype = torch.float32
        ns = [55] if args.quick else [55, 216, 343]
        shapes = [(2, 4, n, 64) for n in ns]
    shapes = [s for s in shapes if s[2] >= args.min_n]
    table = []
    for shape in shapes:
        table += _one_shape(rec, args.device, dtype, fns, *shape)
    print_table(["shape", "mode", "ms", "TFLOP/s", "best baseline", "x vs best", "x vs FA4"], table)
    rec.write()


if __name__ == "__main__":
    main()
