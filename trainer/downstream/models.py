"""Downstream networks around a pretrained voxmix encoder (MONAI ViT key layout, docs/training.md).

Segmentation: MONAI's `UNETR` when the encoder has UNETR's fixed geometry (patch 16, 12 layers: MONAI
1.6 hard-codes both, and taps hidden states 3, 6, 9). Any other encoder (the CPU `tiny` preset has
patch 8 and 3 layers) gets `PatchUNETR`: the same MONAI blocks with log2(patch) resolution levels and
skips from evenly spaced layers; for patch 16 and 12 layers it is UNETR layer for layer. In both the
encoder is `net.vit = monai.networks.nets.ViT(**monai_vit_kwargs)` with our weights loaded strictly.

Classification: `ViTClassifier` = the same ViT, mean over tokens of the final (normed) tokens, linear head.
"""

from __future__ import annotations

import math
import warnings

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.nets import UNETR, ViT
from torch import nn


def build_vit(blob: dict, *, pretrained: bool = True) -> ViT:
    vit = ViT(**blob["monai_vit_kwargs"])
    if pretrained:
        # strict=True raises on any missing or unexpected key: the whole encoder is ours.
        vit.load_state_dict(blob["state_dict"], strict=True)
    # A width MONAI's sin-cos cannot build (not a multiple of 6, e.g. `large`) comes as a "learnable"
    # embedding holding our fixed sin-cos values: kept fixed, as in pretraining.
    vit.patch_embedding.position_embeddings.requires_grad_(False)
    return vit


def check_encoder(blob: dict, path, *, segment: bool) -> None:
    """MONAI rebuilds the encoder from `monai_vit_kwargs` and its weights fit exactly (names and shapes);
    with `segment`, a segmentation network can be built around it. Raises EncoderError naming the file.

    Run before any training, so that a wrong file fails in seconds and not after the first task. The ViT
    is built on the meta device (shapes only, nothing allocated), after the depth and width were matched
    against the weights actually in the file, so hostile sizes cannot make this slow or large.
    """
    from voxmix.formats.encoder import EncoderError

    kw, sd = blob["monai_vit_kwargs"], blob["state_dict"]
    fix = "use the encoder.pt that trainer/run.py wrote for this run"
    try:
        img, patch = _edge(kw, "img_size"), _edge(kw, "patch_size")
    except (ValueError, TypeError) as exc:
        raise EncoderError(f"{path}: {exc}") from None
    if img % patch:
        raise EncoderError(f"{path}: monai_vit_kwargs: patch_size {patch} does not divide img_size {img}")
    if kw["in_channels"] != 1:
        raise EncoderError(f"{path}: monai_vit_kwargs.in_channels is {kw['in_channels']}; the volumes have 1")
    if segment and not is_unetr_geometry(kw) and (patch < 2 or patch & (patch - 1)):
        raise EncoderError(f"{path}: monai_vit_kwargs.patch_size {patch}: segmentation needs a power of two")
    blocks = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    norm = sd.get("norm.weight")
    if len(blocks) != kw["num_layers"] or norm is None or tuple(norm.shape) != (kw["hidden_size"],):
        got = tuple(norm.shape) if norm is not None else None
        raise EncoderError(
            f"{path}: monai_vit_kwargs (num_layers {kw['num_layers']}, hidden_size {kw['hidden_size']}) "
            f"do not match the weights ({len(blocks)} blocks, norm.weight of shape {got}); {fix}"
        )
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's meshgrid deprecation notice, once per build
            want = {k: tuple(v.shape) for k, v in ViT(**kw).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - MONAI asserts/raises anything on arguments it cannot build
        raise EncoderError(
            f"{path}: MONAI's ViT cannot be built from monai_vit_kwargs ({type(exc).__name__}: {exc})"
        ) from None
    got = {k: tuple(v.shape) for k, v in sd.items()}
    bad = [f"missing {k}" for k in want if k not in got]
    bad += [f"unexpected {k}" for k in got if k not in want]
    bad += [f"{k}: shape {got[k]}, expected {want[k]}" for k in want if k in got and got[k] != want[k]]
    if bad:
        more = f" (and {len(bad) - 4} more)" if len(bad) > 4 else ""
        raise EncoderError(
            f"{path}: the weights do not fit the architecture in monai_vit_kwargs: {'; '.join(bad[:4])}{more}; {fix}"
        )


def _edge(kw: dict, key: str) -> int:
    v = kw[key]
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,) * 3
    if len(set(v)) != 1:
        raise ValueError(f"monai_vit_kwargs.{key}: only cubic sizes are supported, got {v}")
    return int(v[0])


def is_unetr_geometry(kw: dict) -> bool:
    return _edge(kw, "patch_size") == 16 and kw.get("num_layers", 12) == 12


class PatchUNETR(nn.Module):
    """UNETR for any power-of-two patch p = 2^k >= 2 and any depth (module names as UNETR's).

    Levels m = 2..k take the hidden state of layer floor(depth * (m - 1) / k) and upsample it to
    img / 2^(m - 1) (`encoder{m}`); decoders go from the final tokens back to full resolution,
    concatenating each level, as in UNETR.
    """

    def __init__(self, vit: ViT, *, in_channels: int, out_channels: int, img: int, patch: int,
                 feature_size: int = 16, norm_name="instance"):  # fmt: skip
        super().__init__()
        k = int(round(math.log2(patch)))
        if 2**k != patch or k < 1:
            raise ValueError(f"monai_vit_kwargs.patch_size: {patch} is not a power of two >= 2")
        self.vit, self.k = vit, k
        hidden = vit.norm.normalized_shape[0]
        depth = len(vit.blocks)
        self.grid, self.hidden = img // patch, hidden
        # (m - 1) / k < 1, so every tap is a real layer; depth 12, k 4 -> 3, 6, 9 (UNETR's).
        self.taps = [depth * (m - 1) // k for m in range(2, k + 1)]
        blk = dict(spatial_dims=3, kernel_size=3, norm_name=norm_name, res_block=True)
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=feature_size, stride=1, **blk)
        for m in range(2, k + 1):
            self.add_module(
                f"encoder{m}",
                UnetrPrUpBlock(
                    in_channels=hidden,
                    out_channels=feature_size * 2 ** (m - 1),
                    num_layer=k - m,
                    stride=1,
                    upsample_kernel_size=2,
                    conv_block=True,
                    **blk,
                ),  # fmt: skip
            )
        # decoder{k+1}: tokens -> level k; decoder{m}: level m -> level m - 1.
        chans = {m: feature_size * 2 ** (m - 1) for m in range(1, k + 1)}
        self.add_module(
            f"decoder{k + 1}",
            UnetrUpBlock(in_channels=hidden, out_channels=chans[k], upsample_kernel_size=2, **blk),
        )
        for m in range(k, 1, -1):
            self.add_module(
                f"decoder{m}",
                UnetrUpBlock(in_channels=chans[m], out_channels=chans[m - 1], upsample_kernel_size=2, **blk),
            )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=feature_size, out_channels=out_channels)

    def proj_feat(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid
        return x.view(x.shape[0], g, g, g, self.hidden).permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x, hidden = self.vit(x_in)
        enc = {1: self.encoder1(x_in)}
        for m, tap in zip(range(2, self.k + 1), self.taps):
            enc[m] = getattr(self, f"encoder{m}")(self.proj_feat(hidden[tap]))
        dec = getattr(self, f"decoder{self.k + 1}")(self.proj_feat(x), enc[self.k])
        for m in range(self.k, 1, -1):
            dec = getattr(self, f"decoder{m}")(dec, enc[m - 1])
        return self.out(dec)


def build_segmenter(blob: dict, out_channels: int, *, feature_size: int = 16, pretrained: bool = True,
                    norm_name="instance") -> nn.Module:  # fmt: skip
    """UNETR (or PatchUNETR) whose `.vit` is our encoder; random encoder when `pretrained=False`."""
    kw = blob["monai_vit_kwargs"]
    img, patch = _edge(kw, "img_size"), _edge(kw, "patch_size")
    vit = build_vit(blob, pretrained=pretrained)
    if is_unetr_geometry(kw):
        net = UNETR(
            in_channels=kw["in_channels"],
            out_channels=out_channels,
            img_size=(img,) * 3,
            feature_size=feature_size,
            hidden_size=kw["hidden_size"],
            mlp_dim=kw["mlp_dim"],
            num_heads=kw["num_heads"],
            proj_type=kw.get("proj_type", "conv"),
            norm_name=norm_name,
            qkv_bias=kw.get("qkv_bias", False),
        )
        # UNETR builds its ViT with learnable positions; ours are the fixed sin-cos of pretraining.
        net.vit = vit
        return net
    return PatchUNETR(vit, in_channels=kw["in_channels"], out_channels=out_channels, img=img, patch=patch,
                      feature_size=feature_size, norm_name=norm_name)  # fmt: skip


class ViTClassifier(nn.Module):
    def __init__(self, vit: ViT, num_classes: int):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.norm.normalized_shape[0], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
