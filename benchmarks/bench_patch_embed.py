"""Benchmark: 3D patch embedding (and patchify) against Conv3d and reshape + linear.

GPU: the Triton kernel vs Conv3d (cuDNN) vs patchify + linear (cuBLAS), bf16, forward and forward +
backward with the volume as data (no dx, as in training), TFLOP/s (2*M*K*E per matmul) and GB/s.
CPU: the C++ patchify / unpatchify vs ATen's permute copy (target >= 2x; a clone of the volume gives
the copy-bandwidth bound), and the CPU patch embedding path (Conv3d for fp32, C++ patchify + linear
for bf16) vs Conv3d and reshape + linear.

    .venv/bin/python benchmarks/bench_patch_embed.py [--quick] [--out FILE]
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import (  # noqa: E402
    Recorder,
    default_out,
    fwd_bwd_fns,
    gbps,
    measure,
    parse_args,
    print_table,
    tflops,
)
from voxmix.kernels import _ext  # noqa: E402
from voxmix.kernels.patch_embed import patch_embed3d  # noqa: E402
from voxmix.kernels.patchify import patchify_ref, unpatchify_ref  # noqa: E402


def _conv(x, w, b, pos, patch):
    e, c = w.shape[0], x.shape[1]
    return F.conv3d(x, w.view(e, c, *patch), b, stride=patch).flatten(2).transpose(1, 2) + pos


def _linear(x, w, b, pos, patch):
    return F.linear(patchify_ref(x, patch), w, b) + pos


def bench_embed(rec, device, dtype, shapes):
    table = []
    for shape in shapes:
        table += _embed_shape(rec, device, dtype, *shape)
    print_table(["shape", "mode", "ms", "TFLOP/s", "x vs Conv3d", "x vs patchify+linear"], table)


def _embed_shape(rec, device, dtype, b, c, side, p, e):
    table = []
    patch = (p, p, p)
    x = torch.randn(b, c, side, side, side, device=device, dtype=dtype)
    k, n = c * p**3, (side // p) ** 3
    w = (torch.randn(e, k, device=device, dtype=dtype) / k**0.5).requires_grad_()
    bias = torch.zeros(e, device=device, dtype=dtype, requires_grad=True)
    pos = torch.zeros(n, e, device=device, dtype=dtype, requires_grad=True)
    m = b * n
    flops = {"fwd": 2 * m * k * e, "fwd+bwd": 4 * m * k * e}  # backward: dW only (x is data)
    nbytes = (x.numel() + w.numel() + pos.numel() + m * e) * x.element_size()
    config = {
        "B": b,
        "C": c,
        "side": side,
        "patch": p,
        "E": e,
        "dtype": str(dtype).removeprefix("torch."),
    }
    times = {}
    for name, fn in (("voxmix", patch_embed3d), ("conv3d", _conv), ("patchify+linear", _linear)):
        fns = fwd_bwd_fns(lambda fn=fn: fn(x, w, bias, pos, patch), [w, bias, pos])
        for mode in ("fwd", "fwd+bwd"):
            t = measure(fns[mode], device=device)
            times[name, mode] = t.ms
            rec.add(config=config, backend=name, mode=mode, timing=t, tflops=tflops(flops[mode], t.ms),
                    gbps=gbps(nbytes, t.ms) if mode == "fwd" else None)  # fmt: skip
    for mode in ("fwd", "fwd+bwd"):
        ours = times["voxmix", mode]
        table.append([f"{b}x{c}x{side}^3/p{p}/E{e}", mode, ours, tflops(flops[mode], ours),
                      times["conv3d", mode] / ours, times["patchify+linear", mode] / ours])  # fmt: skip
        rec.add(config=config, backend="voxmix", mode=mode + ":ratio", timing=None,
                vs_conv3d=times["conv3d", mode] / ours, vs_patchify_linear=times["patchify+linear", mode] / ours)  # fmt: skip
    return table


def bench_patchify_cpu(rec, shapes):
    mod = _ext.ext()
    if mod is None:
        print("C++ extension not built: skipping the C++ patchify benchmark")
        return
    table = []
    for shape in shapes:
        table += _patchify_shape(rec, mod, *shape)
    print_table(["shape", "op", "C++ ms", "GB/s", "clone GB/s", "x vs PyTorch (target >= 2)"], table)


def _patchify_shape(rec, mod, b, c, side, p, dtype):
    table = []
    x = torch.randn(b, c, side, side, side).to(dtype)
    patches = mod.patchify_cpu(x, p, p, p)
    config = {"B": b, "C": c, "side": side, "patch": p, "dtype": str(dtype).removeprefix("torch.")}
    nbytes = 2 * x.numel() * x.element_size()  # read the volume once, write it once
    runs = {
        ("patchify", "c++"): lambda: mod.patchify_cpu(x, p, p, p),
        ("patchify", "pytorch"): lambda: patchify_ref(x, p).contiguous(),
        ("unpatchify", "c++"): lambda: mod.unpatchify_cpu(patches, p, p, p, c, side, side, side),
        ("unpatchify", "pytorch"): lambda: unpatchify_ref(patches, p, x.shape).contiguous(),
    }
    ms = {}
    for (op, backend), fn in runs.items():
        t = measure(fn, device="cpu")
        ms[op, backend] = t.ms
        rec.add(config=config, backend=backend, mode=op, timing=t, gbps=gbps(nbytes, t.ms))
    # The bound: a plain copy of the same bytes (clone = allocation + glibc memcpy, streaming stores).
    t = measure(lambda: x.clone(), device="cpu")
    rec.add(config=config, backend="clone", mode="copy", timing=t, gbps=gbps(nbytes, t.ms))
    for op in ("patchify", "unpatchify"):
        ratio = ms[op, "pytorch"] / ms[op, "c++"]
        rec.add(config=config, backend="c++", mode=op + ":ratio", timing=None, vs_pytorch=ratio)
        table.append(
            [
                f"{b}x{c}x{side}^3/p{p}/{config['dtype']}",
                op,
                ms[op, "c++"],
                gbps(nbytes, ms[op, "c++"]),
                gbps(nbytes, t.ms),
                ratio,
            ]
        )
    return table


def main():
    args = parse_args(__doc__.splitlines()[0], default_out("patch_embed"))
    rec = Recorder(bench="patch_embed", device=args.device, path=args.out or None)
    if args.device == "cuda":
        shapes = [
            (16, 1, 96, 16, 768),
            (8, 1, 128, 16, 1024),
            (4, 1, 160, 16, 768),
            (32, 1, 64, 8, 768),
            (2, 4, 128, 16, 1024),
        ]
        bench_embed(rec, "cuda", torch.bfloat16, shapes[:2] if args.quick else shapes)
    else:
        pshapes = [
            (8, 1, 96, 16, torch.float32),
            (8, 1, 96, 16, torch.bfloat16),
            (2, 1, 128, 8, torch.float32),
            (4, 4, 64, 16, torch.bfloat16),
        ]
        bench_patchify_cpu(rec, pshapes[:2] if args.quick else pshapes)
        eshapes = [(4, 1, 64, 16, 192), (2, 1, 96, 16, 384)]
        for dtype in (torch.float32, torch.bfloat16):
            bench_embed(rec, "cpu", dtype, eshapes[:1] if args.quick else eshapes)
    rec.write()


if __name__ == "__main__":
    main()
