"""3D ViT masked autoencoder (MAE) on voxmix kernels, with export of the encoder to MONAI's ViT and the
loaders that give MONAI's own `ViT` / `UNETR` with it (`load_monai_vit`, `load_unetr`).

Encoder: patch embedding + fixed 3D sin-cos positions (one fused `patch_embed3d`), per-sample random
masking, pre-norm blocks whose attention is `kernels.attention`, final LayerNorm. Decoder: a narrower
stack over all tokens (mask tokens + the visible ones), predicting only the masked patches, scored by the
fused normalized-pixel `mae_loss`. `reference=True` swaps every kernel for its `<op>_ref`.

The block layout (norm1, attn.qkv [3, heads, dh], attn.out_proj, norm2, mlp.linear1/linear2 with exact
GELU, final norm) is MONAI's ViT so that `encoder_state_dict_for_monai` is a pure renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from voxmix.trainer.pretrain.config import ModelConfig


@dataclass(frozen=True)
class Ops:
    """The kernel set a model calls: voxmix kernels or their PyTorch references."""

    attention: object
    patch_embed3d: object
    mae_loss: object


def get_ops(reference: bool) -> Ops:
    # Imported lazily: kernel modules import Triton, which is needless start-up cost until a model exists.
    from voxmix.kernels import (
        attention,
        attention_ref,
        mae_loss,
        mae_loss_ref,
        patch_embed3d,
        patch_embed3d_ref,
    )

    if reference:
        return Ops(attention_ref, patch_embed3d_ref, mae_loss_ref)
    return Ops(attention, patch_embed3d, mae_loss)


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 3D sin-cos embedding (N, dim), raster order over (D, H, W) with W fastest.

    Each axis gets dim // 6 frequencies (sin and cos); the remainder of dim is zero-padded (MONAI
    requires dim % 6 == 0; decoders of width 64 or 512 need the padding).
    """
    d, h, w = grid
    pos_dim = dim // 6
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float64) / max(pos_dim, 1))
    gd, gh, gw = torch.meshgrid(
        torch.arange(d, dtype=torch.float64),
        torch.arange(h, dtype=torch.float64),
        torch.arange(w, dtype=torch.float64),
        indexing="ij",
    )
    out = []
    # MONAI's axis order (its meshgrid names axis 1 "w", axis 0 "h"): the values then equal
    # `build_sincos_position_embedding` exactly whenever dim % 6 == 0.
    for g in (gh, gd, gw):
        ang = g.flatten()[:, None] * omega[None, :]
        out += [torch.sin(ang), torch.cos(ang)]
    emb = torch.cat(out, dim=1)
    if emb.shape[1] < dim:
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, ops: Ops):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.out_proj = nn.Linear(dim, dim)
        self._ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # (B, N, 3*C) -> (3, B, H, N, Dh); the (3, heads, dh) split of the features is MONAI's SABlock.
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = self._ops.attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(o.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.linear2(F.gelu(self.linear1(x)))  # exact GELU: MONAI's MLPBlock default


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, ops: Ops):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, ops)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAE3D(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.ops = get_ops(cfg.reference)
        p, g = cfg.patch, cfg.crop // cfg.patch
        self.patch = (p, p, p)
        self.grid = (g, g, g)
        self.patch_dim = cfg.in_chans * p**3
        # Encoder. The patch projection is stored as Conv3d-shaped weights flattened to (E, C*p^3),
        # exactly what `patch_embed3d` takes (and what MONAI's Conv3d holds after a reshape).
        self.patch_weight = nn.Parameter(torch.empty(cfg.width, self.patch_dim))
        self.patch_bias = nn.Parameter(torch.zeros(cfg.width))
        self.register_buffer("pos_embed", sincos_pos_embed_3d(self.grid, cfg.width), persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, self.ops) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        # Decoder.
        self.decoder_embed = nn.Linear(cfg.width, cfg.dec_width)
        self.mask_token = nn.Parameter(torch.zeros(cfg.dec_width))
        self.register_buffer("dec_pos_embed", sincos_pos_embed_3d(self.grid, cfg.dec_width), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.dec_width, cfg.dec_heads, cfg.mlp_ratio, self.ops) for _ in range(cfg.dec_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.dec_width)
        self.decoder_pred = nn.Linear(cfg.dec_width, self.patch_dim)
        self._init_weights()

    def _init_weights(self):
        # MAE's init: xavier-uniform linears (and the patch projection as a linear), zero biases,
        # unit LayerNorms, small normal mask token.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_weight)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.cfg.num_patches

    def random_masking(self, batch: int, device, generator: torch.Generator | None = None):
        """Per-sample random masks -> (keep_idx (B, K), mask_idx (B, M)), each sorted ascending.

        Drawn on the CPU from `generator` so the masks depend only on the seed (the same on every
        device and under resume), then moved to `device`.
        """
        n, m = self.num_patches, self.cfg.num_masked
        noise = torch.rand(batch, n, generator=generator)
        order = noise.argsort(dim=1)
        keep = order[:, : n - m].sort(dim=1).values
        mask = order[:, n - m :].sort(dim=1).values
        return keep.to(device), mask.to(device)

    def encode(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of the visible patches (all patches when keep_idx is None) -> (B, K, width)."""
        tok = self.ops.patch_embed3d(
            x, self.patch_weight, self.patch_bias, self.pos_embed.to(x.dtype), self.patch
        )
        if keep_idx is not None:
            tok = torch.gather(tok, 1, keep_idx[:, :, None].expand(-1, -1, tok.shape[-1]))
        for blk in self.blocks:
            tok = blk(tok)
        return self.norm(tok)

    def decode(self, latent: torch.Tensor, keep_idx: torch.Tensor, mask_idx: torch.Tensor) -> torch.Tensor:
        """Predictions for the masked patches only -> (B, M, patch_dim)."""
        b, n = latent.shape[0], self.num_patches
        y = self.decoder_embed(latent)
        full = self.mask_token.to(y.dtype).expand(b, n, -1).clone()
        full.scatter_(1, keep_idx[:, :, None].expand(-1, -1, y.shape[-1]), y)
        full = full + self.dec_pos_embed.to(y.dtype)
        for blk in self.decoder_blocks:
            full = blk(full)
        # The head runs only on masked tokens: the loss never looks at the visible ones.
        full = torch.gather(full, 1, mask_idx[:, :, None].expand(-1, -1, full.shape[-1]))
        return self.decoder_pred(self.decoder_norm(full))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, masks=None):
        """-> (loss, per_sample (B,) fp32). `masks` = (keep_idx, mask_idx) overrides the random draw."""
        keep_idx, mask_idx = (
            masks if masks is not None else self.random_masking(x.shape[0], x.device, generator)
        )
        pred = self.decode(self.encode(x, keep_idx), keep_idx, mask_idx)
        return self.ops.mae_loss(pred, x, mask_idx, self.patch, norm_pix=self.cfg.norm_pix)


def train_flops_per_sample(cfg: ModelConfig) -> float:
    """Matmul FLOPs of one training sample (forward + backward = 3 x forward; 2 FLOPs per MAC).

    Per block of width E over T tokens: qkv 6TE^2 + out 2TE^2 + MLP 4 r TE^2 (r = mlp_ratio) and
    attention 4T^2E (QK^T and PV). Encoder over K visible tokens, decoder over all N; plus the patch
    projection (N x V x E, computed for all patches), decoder embedding (K x E x Ed) and the prediction
    head (M x Ed x V). LayerNorms, softmax and the loss are ignored (< 1% for base).
    """
    n, m = cfg.num_patches, cfg.num_masked
    k = n - m
    v = cfg.in_chans * cfg.patch**3

    def block(t, e):
        return (8 + 4 * cfg.mlp_ratio) * t * e * e + 4 * t * t * e

    fwd = cfg.depth * block(k, cfg.width)
    fwd += (
        2 * k * cfg.width * cfg.dec_width
        + cfg.dec_depth * block(n, cfg.dec_width)
        + 2 * m * cfg.dec_width * v
    )
    # The patch projection has no input gradient (the volume needs none): forward + weight grad only.
    return 3.0 * fwd + 2.0 * (2 * n * v * cfg.width)


# ---------------------------------------------------------------------------------------------------
# Export to MONAI


def monai_pos_embed_type(width: int) -> str:
    """MONAI's position embedding type that holds our fixed sin-cos values.

    MONAI builds "sincos" only for widths divisible by 6 (3 axes x sin/cos); ours zero-pads the rest
    (the `large` preset is 1024 wide). Other widths use "learnable", a parameter of the same shape that
    the loaded weights fill with our sin-cos values; `load_monai_vit` / `load_unetr` freeze it, so that it
    stays fixed as in pretraining (the card says so)."""
    return "sincos" if width % 6 == 0 else "learnable"


def monai_vit_kwargs(cfg: ModelConfig) -> dict:
    """Arguments of `monai.networks.nets.ViT` that rebuild this encoder."""
    return dict(
        in_channels=cfg.in_chans,
        img_size=(cfg.crop,) * 3,
        patch_size=(cfg.patch,) * 3,
        hidden_size=cfg.width,
        mlp_dim=int(cfg.width * cfg.mlp_ratio),
        num_layers=cfg.depth,
        num_heads=cfg.heads,
        proj_type="conv",
        pos_embed_type=monai_pos_embed_type(cfg.width),
        classification=False,
        qkv_bias=True,
        spatial_dims=3,
    )


def encoder_state_dict_for_monai(model: MAE3D) -> dict[str, torch.Tensor]:
    """The encoder's weights under MONAI ViT's key names (fp32, CPU)."""
    cfg = model.cfg
    p = cfg.patch
    sd = {
        "patch_embedding.patch_embeddings.weight": model.patch_weight.reshape(
            cfg.width, cfg.in_chans, p, p, p
        ),
        "patch_embedding.patch_embeddings.bias": model.patch_bias,
        "patch_embedding.position_embeddings": model.pos_embed[None],
        "norm.weight": model.norm.weight,
        "norm.bias": model.norm.bias,
    }
    names = {
        "norm1": "norm1",
        "attn.qkv": "attn.qkv",
        "attn.out_proj": "attn.out_proj",
        "norm2": "norm2",
        "mlp.linear1": "mlp.linear1",
        "mlp.linear2": "mlp.linear2",
    }
    for i, blk in enumerate(model.blocks):
        mods = dict(blk.named_modules())
        for ours, theirs in names.items():
            for t in ("weight", "bias"):
                sd[f"blocks.{i}.{theirs}.{t}"] = getattr(mods[ours], t)
        # MONAI's TransformerBlock always owns a cross-attention LayerNorm that its ViT never calls;
        # identity values keep a strict load working.
        sd[f"blocks.{i}.norm_cross_attn.weight"] = torch.ones(cfg.width)
        sd[f"blocks.{i}.norm_cross_attn.bias"] = torch.zeros(cfg.width)
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in sd.items()}


def export_encoder(model: MAE3D, path, extra: dict | None = None) -> None:
    """Write encoder.pt (`voxmix.encoder/1`) atomically: MONAI ViT's constructor arguments and weights."""
    from voxmix.formats.encoder import write_encoder

    write_encoder(path, monai_vit_kwargs(model.cfg), encoder_state_dict_for_monai(model), extra)


def load_monai_vit(path, *, freeze_pos_embed: bool = True):
    """MONAI's own `ViT` with a voxmix encoder loaded (strict key match).

    `path`: a run folder, its encoder.safetensors or its encoder.pt (`voxmix.formats.encoder.read_encoder`:
    a folder's weights are checked against its card). `freeze_pos_embed`: keep the position embedding the
    fixed sin-cos of pretraining even where MONAI holds it as a learnable parameter (`monai_pos_embed_type`).
    """
    from monai.networks.nets import ViT

    from voxmix.formats.encoder import read_encoder

    blob = read_encoder(path)
    vit = ViT(**blob["monai_vit_kwargs"])
    vit.load_state_dict(blob["state_dict"], strict=True)
    vit.patch_embedding.position_embeddings.requires_grad_(not freeze_pos_embed)
    return vit


# MONAI's UNETR builds its ViT with patch 16 and 12 layers whatever it is given (MONAI 1.6).
UNETR_PATCH, UNETR_LAYERS = 16, 12


def load_unetr(path, out_channels: int, *, freeze_pos_embed: bool = True, **unetr_kwargs):
    """MONAI's own `UNETR` whose encoder (`.vit`) holds a voxmix encoder's weights (strict key match).

    The encoder's width, MLP, heads and crop are passed to UNETR with `qkv_bias=True`: our attention has a
    qkv bias and UNETR's default (False) refuses the weights (`Unexpected key(s) ... "blocks.0.attn.qkv.bias"`).
    UNETR fixes patch 16 and 12 layers, so other encoders (the `tiny` preset: patch 8, 3 layers) raise a
    ValueError naming the way to segment with them. `unetr_kwargs` (feature_size, norm_name, ...) go to
    UNETR; the encoder's own arguments cannot be overridden.
    """
    from monai.networks.nets import UNETR

    from voxmix.formats.encoder import read_encoder

    blob = read_encoder(path)
    kw = blob["monai_vit_kwargs"]
    patch = set(_sizes(kw["patch_size"]))
    if patch != {UNETR_PATCH} or kw["num_layers"] != UNETR_LAYERS:
        raise ValueError(
            f"{path}: MONAI's UNETR needs an encoder with patch {UNETR_PATCH} and {UNETR_LAYERS} layers, this one "
            f"has patch {kw['patch_size']} and {kw['num_layers']} layers; use load_monai_vit with your own "
            "decoder, or voxmix.trainer.downstream.models.build_segmenter (UNETR's blocks for any power-of-two "
            "patch and depth)"
        )
    own = dict(
        in_channels=kw["in_channels"],
        img_size=kw["img_size"],
        hidden_size=kw["hidden_size"],
        mlp_dim=kw["mlp_dim"],
        num_heads=kw["num_heads"],
        proj_type=kw.get("proj_type", "conv"),
        qkv_bias=kw.get("qkv_bias", True),
        spatial_dims=kw.get("spatial_dims", 3),
    )
    clash = sorted(set(own) & set(unetr_kwargs))
    if clash:
        raise ValueError(f"load_unetr: {clash} come from the encoder ({path}) and cannot be passed")
    net = UNETR(out_channels=out_channels, **own, **unetr_kwargs)
    net.vit.load_state_dict(blob["state_dict"], strict=True)
    net.vit.patch_embedding.position_embeddings.requires_grad_(not freeze_pos_embed)
    return net


def _sizes(v) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
