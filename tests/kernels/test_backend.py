"""kernels.backend: one backend choice, and one implementation behind every entry point of an op.

Each op has two entry points, the public function and the registered `torch.ops.voxmix.*` op; on
every backend a CPU tensor can use, both must compute the same values (the public function is the op
after its checks) and match the reference within the op tests' tolerances.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernels import test_attention, test_mae_loss, test_patch_embed
from tests.kernels.conftest import HAS_CUDA, TRITON_BACKEND
from tests.kernels.kernel_testing import assert_fa_close, gpu, requires_cuda
from voxmix.kernels import (
    _ext,
    attention,
    attention_ref,
    get_backend,
    mae_loss,
    patch_embed3d,
    patchify,
    patchify_ref,
    set_backend,
    unpatchify,
    unpatchify_ref,
    use_backend,
)
from voxmix.kernels.backend import runs_triton

REPO = Path(__file__).resolve().parents[2]

# (backend, dtype) pairs that run on CPU tensors: the CPU paths in the trainer's dtypes, and the
# interpreter where this process has it (fp16: what the interpreter tests use for low precision).
CPU_CASES = [("cpu", torch.float32), ("cpu", torch.bfloat16)]
if _ext.interpreter():
    CPU_CASES += [("triton-interpreter", torch.float32), ("triton-interpreter", torch.float16)]


# ---- the backend choice ---------------------------------------------------------------------------


def test_use_backend_restores_the_previous_backend() -> None:
    before = get_backend()
    with use_backend("cpu") as name:
        assert name == "cpu" and get_backend() == "cpu"
        with use_backend(TRITON_BACKEND):
            assert get_backend() == TRITON_BACKEND
        assert get_backend() == "cpu"
    assert get_backend() == before
    with pytest.raises(KeyError), use_backend("cpu"):
        raise KeyError("restored on errors too")
    assert get_backend() == before
    previous = set_backend("cpu")
    try:
        assert previous == before and get_backend() == "cpu"
    finally:
        set_backend(previous)
    assert get_backend() == before


def test_set_backend_rejects_unknown_and_unavailable_backends() -> None:
    before = get_backend()
    with pytest.raises(ValueError, match="unknown kernel backend 'gpu'"):
        set_backend("gpu")  # type: ignore[arg-type]
    # Interpreted and compiled kernels exclude each other for the life of a process.
    unavailable = "triton" if _ext.interpreter() else "triton-interpreter"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"), use_backend(unavailable):
        pass
    assert get_backend() == before


_FRESH_PROCESS = r"""
import json
from voxmix.kernels import get_backend, use_backend
out = {"default": get_backend()}
try:
    with use_backend("triton-interpreter"):
        out["entered"] = True
except RuntimeError as e:
    out["error"] = str(e)
out["after"] = get_backend()
print(json.dumps(out))
"""


def test_interpreter_backend_needs_a_process_started_in_interpreter_mode() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["default"] == ("triton" if HAS_CUDA else "cpu")
    assert "entered" not in out and "TRITON_INTERPRET=1" in out["error"], out
    assert out["after"] == out["default"]


def test_dispatch_reads_the_backend_not_the_environment(monkeypatch) -> None:
    t = torch.zeros(1)
    for value in ("1", "0"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        with use_backend("cpu"):
            assert not runs_triton(t)
        with use_backend(TRITON_BACKEND):
            assert runs_triton(t) == (TRITON_BACKEND == "triton-interpreter")


@gpu
@requires_cuda
def test_cpu_backend_rejects_cuda_tensors() -> None:
    q = torch.randn(1, 1, 4, 32, device="cuda")
    with use_backend("cpu"), pytest.raises(ValueError, match="runs CPU tensors only"):
        attention(q, q, q)


# ---- both entry points of each op compute the same thing on CPU ---------------------------------


def _grads(out: torch.Tensor, leaves: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad(out, leaves, g)


def _assert_same(name: str, public: tuple[torch.Tensor, ...], op: tuple[torch.Tensor, ...]) -> None:
    for i, (a, b) in enumerate(zip(public, op, strict=True)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{name}: public and torch.ops differ in output {i}"


@pytest.mark.parametrize("backend,dtype", CPU_CASES)
def test_attention_entry_points_agree(backend, dtype) -> None:
    q, k, v = test_attention._inputs(2, 2, 13, 32, dtype, "cpu", seed=7)
    lengths = torch.tensor([13, 5])
    with use_backend(backend):
        public = attention(q, k, v, lengths=lengths, scale=0.2)
        op = torch.ops.voxmix.attention_fwd(q, k, v, lengths, 0.2)[0]
        results = [(o, *_grads(o, [q, k, v], seed=8)) for o in (public, op)]
    _assert_same("attention", *results)
    refs = {}
    for upcast in (True, False):
        qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
        r = attention_ref(qr, kr, vr, scale=0.2, lengths=lengths, upcast=upcast)
        refs[upcast] = (r, *_grads(r, [qr, kr, vr], seed=8))
    for name, got, lowp, fp32 in zip(("out", "dq", "dk", "dv"), results[0], refs[False], refs[True]):
        assert_fa_close(name, got, lowp, fp32, dtype)


@pytest.mark.parametrize("backend,dtype", CPU_CASES)
def test_patch_embed_entry_points_agree(backend, dtype) -> None:
    patch = (3, 2, 5)
    x, w, b, p = test_patch_embed._inputs((2, 2, 6, 4, 10), patch, 20, dtype, "cpu")
    with use_backend(backend):
        public = patch_embed3d(x, w, b, p, patch)
        op = torch.ops.voxmix.patch_embed3d_fwd(x, w, b, p, *patch)
        results = [(y, *_grads(y, [x, w, b, p], seed=9)) for y in (public, op)]
    _assert_same("patch_embed3d", *results)
    refs = {}
    for ref_dtype in (torch.float32, dtype):
        ls = [t.detach().clone().requires_grad_() for t in (x, w, b, p)]
        r = test_patch_embed._conv_ref(*ls, patch, ref_dtype)
        refs[ref_dtype] = (r, *_grads(r, ls, seed=9))
    names = ("tokens", "dx", "dW", "dbias", "dpos")
    for name, got, lowp, fp32 in zip(names, results[0], refs[dtype], refs[torch.float32]):
        assert_fa_close(name, got, lowp, fp32, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_on_the_cpu_backend(dtype, cpu_backend) -> None:
    # The fake kernels must predict the CPU path's layouts (attention keeps ATen's, e.g. for strided q).
    qkv = torch.randn(2, 13, 3, 2, 32, dtype=dtype, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # as the model slices them: not contiguous
    lengths = torch.tensor([13, 4])
    test_attention.opcheck_attention(q, k, v, lengths, 0.3)
    x, w, b, p = test_patch_embed._inputs((1, 2, 4, 4, 6), (2, 2, 3), 16, dtype, "cpu")
    torch.library.opcheck(torch.ops.voxmix.patch_embed3d_fwd.default, (x, w, b, p, 2, 2, 3))
    dy = torch.randn(1, 8, 16).to(dtype)
    bwd_args = (dy, x.detach(), w.detach(), 2, 2, 3, True, True)
    torch.library.opcheck(torch.ops.voxmix.patch_embed3d_bwd.default, bwd_args)
    pred, x, idx = test_mae_loss._inputs((2, 1, 4, 4, 8), (2, 2, 2), 3, dtype, "cpu")
    torch.library.opcheck(torch.ops.voxmix.mae_loss.default, (pred, x, idx, 2, 2, 2, True, 1e-6, True))


@pytest.mark.parametrize("with_ext", [True, False])
@pytest.mark.parametrize("backend,dtype", CPU_CASES)
def test_mae_loss_entry_points_agree(backend, dtype, with_ext, monkeypatch) -> None:
    if not with_ext:
        monkeypatch.setattr(_ext, "ext", lambda: None)  # the fallback (VOXMIX_NO_EXT=1, no build)
    patch = (4, 4, 4)
    pred, x, idx = test_mae_loss._inputs((2, 1, 8, 8, 12), patch, 3, dtype, "cpu", offset=10.0)
    with use_backend(backend):
        test_mae_loss._check(pred, x, idx, patch)  # the public function against the fp64 reference
        loss, per_sample = mae_loss(pred, x, idx, patch)
        op_per_sample, _ = torch.ops.voxmix.mae_loss(pred, x, idx, *patch, True, 1e-6, True)
        pairs = ((loss, per_sample), (op_per_sample.mean(), op_per_sample))
        results = [(ls, ps, *_grads(ls, [pred], seed=10)) for ls, ps in pairs]
    _assert_same("mae_loss", *results)


@pytest.mark.parametrize("with_ext", [True, False])
@pytest.mark.parametrize("backend,dtype", CPU_CASES)
def test_patchify_entry_points_agree(backend, dtype, with_ext, monkeypatch) -> None:
    if not with_ext:
        monkeypatch.setattr(_ext, "ext", lambda: None)
    patch, shape = (3, 2, 5), (2, 3, 6, 4, 10)
    x = torch.randn(shape).to(dtype).requires_grad_()
    with use_backend(backend):
        pub, op = patchify(x, patch), torch.ops.voxmix.patchify(x, *patch)
        results = [(t, *_grads(t, [x], seed=11)) for t in (pub, op)]
        p = pub.detach().requires_grad_()
        upub, uop = unpatchify(p, patch, shape), torch.ops.voxmix.unpatchify(p, *patch, *shape[1:])
        uresults = [(t, *_grads(t, [p], seed=12)) for t in (upub, uop)]
    _assert_same("patchify", *results)
    _assert_same("unpatchify", *uresults)
    g = torch.randn(pub.shape, generator=torch.Generator().manual_seed(11)).to(dtype)
    assert torch.equal(results[0][0], patchify_ref(x.detach(), patch))
    assert torch.equal(results[0][1], unpatchify_ref(g, patch, shape))
    assert torch.equal(uresults[0][0], unpatchify_ref(p.detach(), patch, shape))
