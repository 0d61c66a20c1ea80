"""Compiles every Triton kernel for NVIDIA targets without a GPU (Triton's ahead-of-time path).

Catches what the interpreter cannot: type errors of the compiled path, layout conversions, and shared
memory per config against the device limit. Run in a fresh process (the kernels must be imported
without TRITON_INTERPRET): `python tests/kernels/sm90_compile.py [--all]` (--all: every autotune
config, bf16, Dh 64 and 128, sm_90; ~50 compiles); prints one JSON row per compile. Used by tests/kernels/test_compile.py.
"""

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from voxmix.kernels import _attention_bwd, _attention_fwd, patch_embed  # noqa: E402

# kernels/__init__ re-exports the function `mae_loss`, which shadows the submodule attribute.
mae_loss = sys.modules["voxmix.kernels.mae_loss"]

# Max dynamic shared memory per block (bytes): H100/H200 and A100.
SMEM_LIMIT = {90: 232448, 80: 166912}
FLOAT_ARGS = {"scale", "eps", "gscale"}


def _compile(kernel, ptr_types, constexprs, cc, num_warps, num_stages):
    jf = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    sig = {}
    for name in jf.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = "*" + ptr_types[name]
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    src = ASTSource(fn=jf, signature=sig, constexprs=constexprs)
    k = triton.compile(
        src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    return k.metadata.shared


def _configs(kernel, full):
    cfgs = kernel.configs
    return cfgs if full else cfgs[:1]


def cases(full):
    """(name, kernel, pointer dtypes, constexprs, config list) for each kernel and dtype / head dim."""
    for dt in ("bf16",):
        prec = "ieee" if dt == "fp32" else "tf32"
        for dh in (64, 128) if full else (80,):
            meta = dict(HEAD_DIM=dh, BLOCK_D=triton.next_power_of_2(dh), DOT_PREC=prec)
            qkv = {n: dt for n in ("Q", "K", "V", "Out", "DO", "DK", "DV", "DQ")}
            qkv.update(LSE="fp32", DELTA="fp32", LENS="i32")
            for kern in (
                _attention_fwd._attention_fwd_kernel,
                _attention_bwd._attention_bwd_dkdv_kernel,
                _attention_bwd._attention_bwd_dq_kernel,
            ):
                yield f"{kern.fn.__name__}[{dt},Dh={dh}]", kern, qkv, meta
        ptrs = dict(X=dt, W=dt, BIAS=dt, POS=dt, Y=dt, DY=dt, DX=dt, DW=dt)
        pe = dict(PD=16, PH=16, PW=16, DOT_PREC=prec)
        yield (
            f"_patch_embed_fwd_kernel[{dt}]",
            patch_embed._patch_embed_fwd_kernel,
            ptrs,
            dict(pe, HAS_BIAS=True, HAS_POS=True),
        )
        yield f"_patch_embed_bwd_dx_kernel[{dt}]", patch_embed._patch_embed_bwd_dx_kernel, ptrs, pe
        yield f"_patch_embed_bwd_dw_kernel[{dt}]", patch_embed._patch_embed_bwd_dw_kernel, ptrs, pe


def main(full):
    rows = []
    for name, kern, ptrs, meta in cases(full):
        for cfg in _configs(kern, full):
            for cc in (90,):
                shared = _compile(kern, ptrs, {**meta, **cfg.kwargs}, cc, cfg.num_warps, cfg.num_stages)
                rows.append(dict(kernel=name, config=cfg.kwargs, warps=cfg.num_warps, stages=cfg.num_stages, cc=cc,
                                 shared=shared, fits=shared <= SMEM_LIMIT[cc]))  # fmt: skip
    # The fixed configs of VOXMIX_AUTOTUNE=0 (GPU tests) must fit everywhere: worst case fp32, Dh=128,
    # against the smaller A100 limit.
    os.environ["VOXMIX_AUTOTUNE"] = "0"
    fixed = {
        _attention_fwd._attention_fwd_kernel: _attention_fwd.fwd_configs()[0],
        _attention_bwd._attention_bwd_dkdv_kernel: _attention_bwd.bwd_configs()[0],
        _attention_bwd._attention_bwd_dq_kernel: _attention_bwd.bwd_configs()[0],
    }
    meta = dict(HEAD_DIM=128, BLOCK_D=128, DOT_PREC="ieee")
    ptrs = {n: "fp32" for n in ("Q", "K", "V", "Out", "DO", "DK", "DV", "DQ", "LSE", "DELTA")}
    ptrs["LENS"] = "i32"
    for kern, cfg in fixed.items():
        shared = _compile(kern, ptrs, {**meta, **cfg.kwargs}, 80, cfg.num_warps, cfg.num_stages)
        rows.append(dict(kernel=kern.fn.__name__ + "[fixed,fp32,Dh=128]", config=cfg.kwargs, cc=80, shared=shared,
                         fits=shared <= SMEM_LIMIT[80]))  # fmt: skip
    pe_ptrs = {n: "fp32" for n in ("X", "W", "BIAS", "POS", "Y", "DY", "DX", "DW")}
    for kind, kern in (("fwd", patch_embed._patch_embed_fwd_kernel), ("dx", patch_embed._patch_embed_bwd_dx_kernel),
                       ("dw", patch_embed._patch_embed_bwd_dw_kernel)):  # fmt: skip
        cfg = patch_embed._configs(kind)[0]
        pe = dict(
            PD=16,
            PH=16,
            PW=16,
            DOT_PREC="ieee",
            **({"HAS_BIAS": True, "HAS_POS": True} if kind == "fwd" else {}),
        )
        shared = _compile(kern, pe_ptrs, {**pe, **cfg.kwargs}, 80, cfg.num_warps, cfg.num_stages)
        rows.append(dict(kernel=kern.fn.__name__ + "[fixed,fp32]", config=cfg.kwargs, cc=80, shared=shared,
                         fits=shared <= SMEM_LIMIT[80]))  # fmt: skip
    # Kernels launched without autotuning: compiled once, checked against the smaller (A100) limit.
    pre = dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=64)
    shared = _compile(
        _attention_bwd._attention_bwd_preprocess_kernel,
        dict(Out="bf16", DO="bf16", DELTA="fp32"),
        pre,
        80,
        4,
        1,
    )
    rows.append(
        dict(
            kernel="_attention_bwd_preprocess_kernel",
            config=pre,
            cc=80,
            shared=shared,
            fits=shared <= SMEM_LIMIT[80],
        )
    )
    for dt in ("bf16", "fp32"):
        ml = dict(PD=16, PH=16, PW=16, NORM_PIX=True, NEED_GRAD=True, BLOCK_V=4096)
        ptrs = dict(PRED=dt, X=dt, IDX="i64", ROW_LOSS="fp32", GRAD=dt)
        shared = _compile(mae_loss._mae_loss_fwd_kernel, ptrs, ml, 80, 8, 1)
        rows.append(
            dict(
                kernel=f"_mae_loss_fwd_kernel[{dt}]",
                config=ml,
                cc=80,
                shared=shared,
                fits=shared <= SMEM_LIMIT[80],
            )
        )
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main(full="--all" in sys.argv)
