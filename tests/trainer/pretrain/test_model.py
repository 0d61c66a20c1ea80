"""MAE3D: shapes, masking, kernels vs references, the loss going down, FLOP formula, MONAI export (ViT, UNETR)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.nets import UNETR, ViT
from torch.utils.flop_counter import FlopCounterMode

from voxmix.formats.encoder import read_encoder, write_encoder
from voxmix.trainer.pretrain.config import ModelConfig
from voxmix.trainer.pretrain.model import (
    MAE3D,
    encoder_state_dict_for_monai,
    export_encoder,
    load_monai_vit,
    load_unetr,
    monai_vit_kwargs,
    sincos_pos_embed_3d,
    train_flops_per_sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainer/pretrain/conftest.py


SMALL = dict(
    size="tiny", crop=24, patch=8, width=48, depth=2, heads=2, dec_width=32, dec_depth=1, dec_heads=2
)


def _model(**kw) -> MAE3D:
    torch.manual_seed(0)
    return MAE3D(ModelConfig(**{**SMALL, **kw}))


def test_random_masking_is_per_sample_disjoint_and_sized():
    m = _model()
    n = m.num_patches
    keep, mask = m.random_masking(64, "cpu", torch.Generator().manual_seed(1))
    assert keep.shape == (64, n - round(0.75 * n)) and mask.shape == (64, round(0.75 * n))
    both = torch.cat([keep, mask], 1).sort(1).values
    assert torch.equal(both, torch.arange(n).expand(64, -1))  # a partition of the patches
    assert torch.equal(keep, keep.sort(1).values) and torch.equal(mask, mask.sort(1).values)
    assert len({tuple(r.tolist()) for r in mask}) > 60  # masks differ between samples
    # Each patch is masked with probability ~0.75 over many samples.
    freq = torch.zeros(n).index_add_(0, mask.flatten(), torch.ones(mask.numel())) / 64
    assert (freq - 0.75).abs().max() < 0.3
    again = m.random_masking(64, "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(again[1], mask)


def test_pos_embed_matches_monai_sincos():
    for grid, dim in (((3, 3, 3), 48), ((2, 4, 5), 96)):
        ref = build_sincos_position_embedding(list(grid), dim, spatial_dims=3)[0]
        torch.testing.assert_close(sincos_pos_embed_3d(grid, dim), ref, atol=1e-6, rtol=0)


def _manual_forward(m: MAE3D, x, keep, mask):
    """Independent PyTorch forward: conv3d patch embedding, explicit softmax attention, MSE on normalized patches."""
    c = m.cfg
    p = c.patch
    w = m.patch_weight.view(c.width, c.in_chans, p, p, p)
    tok = F.conv3d(x, w, m.patch_bias, stride=p).flatten(2).transpose(1, 2) + m.pos_embed
    tok = torch.stack([tok[b, keep[b]] for b in range(x.shape[0])])

    def block(blk, t):
        b, n, e = t.shape
        h = blk.norm1(t)
        q, k, v = blk.attn.qkv(h).view(b, n, 3, blk.attn.heads, -1).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        t = t + blk.attn.out_proj(a.transpose(1, 2).reshape(b, n, e))
        return t + blk.mlp.linear2(F.gelu(blk.mlp.linear1(blk.norm2(t))))

    for blk in m.blocks:
        tok = block(blk, tok)
    lat = m.decoder_embed(m.norm(tok))
    full = m.mask_token.expand(x.shape[0], m.num_patches, -1).clone()
    for b in range(x.shape[0]):
        full[b, keep[b]] = lat[b]
    full = full + m.dec_pos_embed
    for blk in m.decoder_blocks:
        full = block(blk, full)
    pred = m.decoder_pred(m.decoder_norm(torch.stack([full[b, mask[b]] for b in range(x.shape[0])])))
    g = c.crop // p
    t = x.view(x.shape[0], 1, g, p, g, p, g, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(x.shape[0], g**3, -1)
    t = torch.stack([t[b, mask[b]] for b in range(x.shape[0])])
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    return ((pred - t) ** 2).mean((1, 2))


@pytest.mark.parametrize("reference", [False, True])
def test_forward_and_grads_match_manual_pytorch(reference):
    m = _model(reference=reference)
    x = torch.randn(3, 1, 24, 24, 24)
    keep, mask = m.random_masking(3, "cpu", torch.Generator().manual_seed(2))
    loss, per = m(x, masks=(keep, mask))
    assert loss.shape == () and per.shape == (3,) and per.dtype == torch.float32
    want = _manual_forward(m, x, keep, mask)
    torch.testing.assert_close(per, want, rtol=1e-4, atol=1e-5)
    g1 = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    g2 = torch.autograd.grad(want.mean(), list(m.parameters()), allow_unused=True)
    for (name, _), a, b in zip(m.named_parameters(), g1, g2):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=lambda s, n=name: f"{n}: {s}")


def test_loss_decreases_on_a_tiny_run():
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    zz = torch.linspace(-1, 1, 24)
    base = torch.exp(-(zz[:, None, None] ** 2 + zz[None, :, None] ** 2 + zz[None, None, :] ** 2) / 0.3)
    x = (base + 0.3 * torch.sin(6 * zz)[None, None, :]).expand(4, 1, 24, 24, 24).contiguous()
    losses = []
    for _ in range(40):
        loss, _ = m(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_flops_formula_matches_flop_counter():
    cfg = ModelConfig(**SMALL)
    m = MAE3D(ModelConfig(**{**SMALL, "reference": True}))
    x = torch.randn(2, 1, 24, 24, 24)
    with FlopCounterMode(display=False) as fc:
        loss, _ = m(x, torch.Generator().manual_seed(0))
        loss.backward()
    counted = fc.get_total_flops() / 2
    # Elementwise work (norms, softmax, GELU, the loss) is not counted by either.
    assert abs(train_flops_per_sample(cfg) - counted) / counted < 1e-6, (train_flops_per_sample(cfg), counted)


@pytest.mark.parametrize("fmt", ["encoder.pt", "encoder.safetensors"])
@pytest.mark.parametrize("width,heads", [(96, 3), (40, 2)], ids=["width96", "width40"])
def test_monai_vit_computes_the_same_features(tmp_path, fmt, width, heads):
    """MONAI's own ViT, loaded from either weights file, gives our encoder's tokens. Width 40 is not a
    multiple of 6 (like the `large` preset's 1024): MONAI cannot build its sin-cos table there, so the
    ViT holds our fixed values in a "learnable" embedding, frozen."""
    m = _model(width=width, heads=heads).eval()
    kw = monai_vit_kwargs(m.cfg)
    write_encoder(tmp_path / fmt, kw, encoder_state_dict_for_monai(m), {"step": 3})
    vit = load_monai_vit(tmp_path / fmt).eval()
    x = torch.randn(2, 1, 24, 24, 24)
    with torch.no_grad():
        ours = m.encode(x)
        theirs, hidden = vit(x)
    assert theirs.shape == (2, 27, width) and len(hidden) == 2
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    pos = vit.patch_embedding.position_embeddings
    assert not pos.requires_grad and torch.equal(pos[0], sincos_pos_embed_3d((3, 3, 3), width))
    assert read_encoder(tmp_path / fmt)["step"] == 3
    if width % 6:
        assert kw["pos_embed_type"] == "learnable"
        assert monai_vit_kwargs(ModelConfig(size="large"))["pos_embed_type"] == "learnable"  # 1024 wide
        with pytest.raises(AssertionError, match="divisible by 6"):
            ViT(**{**kw, "pos_embed_type": "sincos"})
        assert torch.equal(pos[0, :, 36:], torch.zeros(27, 4))  # the zero padding beyond 6 x (40 // 6)
    else:
        assert kw["pos_embed_type"] == "sincos"


def test_load_monai_vit_rejects_other_files(tmp_path):
    torch.save({"format": "something/1"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="format"):
        load_monai_vit(tmp_path / "x.pt")


# UNETR's fixed geometry (patch 16, 12 layers) at the smallest size: 2^3 tokens, 24 wide.
UNETR_SMALL = dict(crop=32, patch=16, width=24, depth=12, heads=2, dec_width=24, dec_depth=1, dec_heads=2)


def test_unetr_encoder_holds_exactly_our_weights(tmp_path):
    m = _model(**UNETR_SMALL).eval()
    sd = encoder_state_dict_for_monai(m)
    write_encoder(tmp_path / "encoder.safetensors", monai_vit_kwargs(m.cfg), sd)
    net = load_unetr(tmp_path / "encoder.safetensors", out_channels=3, feature_size=8).eval()
    assert isinstance(net, UNETR)
    got = net.vit.state_dict()
    assert sorted(got) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    assert not net.vit.patch_embedding.position_embeddings.requires_grad  # fixed, as in pretraining
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.vit(x)[0], m.encode(x), rtol=1e-4, atol=1e-5)
        assert net(x).shape == (1, 3, 32, 32, 32)
    # Why load_unetr passes qkv_bias=True: UNETR's default has no qkv bias and refuses our weights.
    plain = UNETR(
        in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=24, mlp_dim=96, num_heads=2
    )
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*blocks\.0\.attn\.qkv\.bias"):
        plain.vit.load_state_dict(sd)


def test_load_unetr_names_the_way_for_other_geometries(tmp_path):
    m = _model()  # patch 8, 2 layers: not UNETR's
    export_encoder(m, tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match="patch 16 and 12 layers.*build_segmenter"):
        load_unetr(tmp_path / "encoder.pt", out_channels=2)


_TRITON_TWIN = r"""
import torch
from voxmix.kernels import get_backend
from voxmix.trainer.pretrain.config import ModelConfig
from voxmix.trainer.pretrain.model import MAE3D
torch.manual_seed(0)
kw = dict(size="tiny", crop=16, patch=8, width=36, depth=1, heads=2, dec_width=36, dec_depth=1, dec_heads=2)
fast, ref = MAE3D(ModelConfig(**kw)), MAE3D(ModelConfig(**kw, reference=True))
ref.load_state_dict(fast.state_dict())
x = torch.randn(2, 1, 16, 16, 16)
masks = fast.random_masking(2, "cpu", torch.Generator().manual_seed(0))
out = {}
for name, m in (("fast", fast), ("ref", ref)):
    loss, per = m(x, masks=masks)
    loss.backward()
    out[name] = (per.detach(), m.patch_weight.grad, m.blocks[0].attn.qkv.weight.grad)
for a, b in zip(out["fast"], out["ref"]):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
assert get_backend() == "triton-interpreter", get_backend()  # resolved from TRITON_INTERPRET at import
print("ok")
"""


def test_triton_kernel_path_matches_reference_in_interpreter():
    """CPU twin of the GPU path: the model on the Triton kernels (interpreter mode) vs the references.

    A fresh process: Triton decorates the kernels for its interpreter only when TRITON_INTERPRET=1 is
    set at import, and the kernel backend then resolves to "triton-interpreter" (kernels/backend.py).
    """
    import subprocess
    import sys

    from tests.trainer.pretrain.trainer_helpers import REPO, env

    e = {**env(), "TRITON_INTERPRET": "1"}
    p = subprocess.run(
        [sys.executable, "-c", _TRITON_TWIN], cwd=REPO, env=e, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU twin: the interpreter test above)")
def test_cuda_bf16_kernels_match_fp32_reference():
    """flash-attention's rule: kernel error vs an fp32 reference <= 2x PyTorch's own bf16 error + a floor."""
    kw = dict(size="base", depth=2, dec_depth=1)
    torch.manual_seed(0)
    ref32 = MAE3D(ModelConfig(**kw, reference=True)).cuda()
    ref16 = MAE3D(ModelConfig(**kw, reference=True)).cuda().bfloat16()
    fast16 = MAE3D(ModelConfig(**kw)).cuda().bfloat16()
    ref16.load_state_dict(ref32.state_dict())
    fast16.load_state_dict(ref32.state_dict())
    x = torch.randn(4, 1, 96, 96, 96, device="cuda")
    masks = ref32.random_masking(4, "cuda", torch.Generator().manual_seed(0))
    res = {}
    for name, m, xx in (
        ("ref32", ref32, x),
        ("ref16", ref16, x.bfloat16()),
        ("fast16", fast16, x.bfloat16()),
    ):
        loss, per = m(xx, masks=masks)
        loss.backward()
        res[name] = (per.float(), m.patch_weight.grad.float(), m.blocks[1].attn.qkv.weight.grad.float())
    for i, what in enumerate(("per-sample loss", "patch weight grad", "qkv grad")):
        err_k = (res["fast16"][i] - res["ref32"][i]).abs().max().item()
        err_t = (res["ref16"][i] - res["ref32"][i]).abs().max().item()
        floor = 1e-3 * res["ref32"][i].abs().max().item()
        assert err_k <= 2 * err_t + floor, (what, err_k, err_t)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU twin: test_run.py)")
def test_cuda_bf16_training_run(dataset, tmp_path):
    """trainer/run.py on one GPU in bf16 (DALI GPU loader when available): completes, loss finite and falling."""
    import json
    import subprocess
    import sys

    from tests.trainer.pretrain.trainer_helpers import REPO
    from voxmix.formats.runlog import read_runlog

    manifest, alloc = dataset
    out = tmp_path / "gpu"
    p = subprocess.run([sys.executable, "trainer/run.py", "--config", "configs/tiny.yaml", "--manifest", str(manifest),
                        "--allocation", str(alloc), "--out", str(out), "--eval-at", "16,64"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    log = read_runlog(out)
    start = json.loads((out / "runlog.jsonl").read_text().splitlines()[0])
    assert start["precision"] == "bf16" and start["device"].startswith("cuda") and log.status == "completed"
    assert log.evals[-1].samples_seen == {"ct_abdomen": 96, "mri_brain": 96}
    assert all(log.evals[-1].loss[d] < log.evals[0].loss[d] for d in log.domains)
