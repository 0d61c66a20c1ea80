"""The shareable encoder of a run: weights, machine-readable card and model card, written together.

`write_encoder_files` (the trainer calls it once, at the end of a run, rank 0) writes into the run folder

  encoder.safetensors   the encoder's weights under MONAI ViT's key names, its kwargs in the metadata
  encoder.pt            the same as a torch file (kept for readers of earlier voxmix versions)
  MODEL_CARD.md         the card for people: how to load it, what it was trained on, how to preprocess
  encoder.json          the card for programs (`voxmix.encoder/1`, docs/formats.md), written last

each atomically; encoder.json records the size and sha256 of both weights files, so a folder whose
weights were replaced after the card was written is refused when read (`formats.encoder.read_encoder`).

The preprocessing a user must reproduce is what ingest did (trainer/data/ingest/preprocess.py): RAS+
orientation, resampling to the domain's spacing, the modality's intensity mapping to [0, 1] with
background 0, a crop to the foreground. The settings come from the ingest spec that the manifest's header
names, read at export (the manifest records the modality and the achieved spacing of every volume, but
not the window or percentiles); without a readable spec they are null and the card says why.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import voxmix
from voxmix.formats.encoder import (
    CARD,
    FORMAT,
    MODEL_CARD,
    SAFETENSORS,
    TORCH,
    sha256_file,
    write_card,
    write_encoder,
)
from voxmix.formats.io import atomic_write_text
from voxmix.trainer.data.ingest.preprocess import CT_BODY_HU, MRI_FG_FRACTION, PET_SUV_FG
from voxmix.trainer.pretrain.model import encoder_state_dict_for_monai, monai_vit_kwargs
from voxmix.trainer.pretrain.resume_check import data_digest

__all__ = ["build_card", "render_model_card", "write_encoder_files"]


def write_encoder_files(
    out_dir: str | os.PathLike,
    model: Any,
    cfg: Any,
    alloc: Any,
    manifest: Any,
    run_id: str,
    step: int,
    *,
    budget: int | None = None,
) -> dict[str, Path]:
    """Write encoder.safetensors, encoder.pt, MODEL_CARD.md and encoder.json (last) into `out_dir`.

    `model`: the MAE3D (under ZeRO-3, call inside the parameter gather); `cfg`: the run's Config;
    `alloc`/`manifest`: what the run trained on; `budget`: samples trained (default: the allocation's).
    -> {file name: path}."""
    out = Path(out_dir)
    kwargs = monai_vit_kwargs(model.cfg)
    state_dict = encoder_state_dict_for_monai(model)
    extra = {"run_id": run_id, "step": int(step)}
    paths = {n: write_encoder(out / n, kwargs, state_dict, extra) for n in (SAFETENSORS, TORCH)}
    weights = {n: {"size": p.stat().st_size, "sha256": sha256_file(p)} for n, p in paths.items()}
    card = build_card(
        cfg,
        alloc,
        manifest,
        run_id=run_id,
        step=int(step),
        budget=budget,
        weights=weights,
        state_dict=state_dict,
    )
    paths[MODEL_CARD] = atomic_write_text(out / MODEL_CARD, render_model_card(card))
    paths[CARD] = write_card(out / CARD, card)  # last: a card names only weights that are complete
    return paths


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_card(
    cfg: Any,
    alloc: Any,
    manifest: Any,
    *,
    run_id: str,
    step: int,
    budget: int | None,
    weights: dict[str, dict],
    state_dict: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The encoder.json object (validated by `formats.encoder.validate_card` when written)."""
    m = cfg.model
    kwargs = monai_vit_kwargs(m)
    spec, spec_note = _spec_of(manifest)
    budget = int(alloc.total if budget is None else budget)
    # Trained parameters: not the fixed positions, nor the cross-attention norm that MONAI's
    # TransformerBlock owns and its ViT never calls.
    params = sum(
        t.numel() for k, t in state_dict.items() if "norm_cross_attn" not in k and "position" not in k
    )
    return {
        "format": FORMAT,
        "voxmix_version": voxmix.__version__,
        "torch_version": torch.__version__,
        "monai_version": _version("monai"),
        "safetensors_version": _version("safetensors"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id,
        "step": step,
        "monai_vit_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "architecture": {
            "kind": "3D ViT encoder of a masked autoencoder (MONAI ViT layout)",
            "model": asdict(m),
            "parameters": params,
            "tokens": m.num_patches,
            "position_embedding": {
                "kind": "fixed 3D sin-cos (dim // 6 frequencies per axis, zero-padded to the width)",
                "trainable": False,
                "monai_pos_embed_type": kwargs["pos_embed_type"],
                "note": None
                if kwargs["pos_embed_type"] == "sincos"
                else f"width {m.width} is not a multiple of 6, which MONAI's sincos needs: MONAI holds the "
                "embedding as a learnable parameter filled with our fixed values; load_monai_vit/load_unetr "
                "freeze it",
            },
            "output": "(B, tokens, width) after the final LayerNorm, and each block's hidden states",
        },
        "input": {
            "in_channels": m.in_chans,
            "crop_voxels": [m.crop] * 3,
            "patch_voxels": [m.patch] * 3,
            "range": [0.0, 1.0],
            "background": 0.0,
            "dtype": "float32",
            "note": f"the ViT takes exactly {m.crop}^3 voxels (its position embedding has a fixed length): "
            f"tile larger volumes (monai.inferers.sliding_window_inference, roi_size {m.crop}); training "
            "crops were zero-padded where a volume was smaller",
        },
        "preprocessing": {d: _preprocessing(d, manifest, spec, spec_note) for d in alloc.domains},
        "training": {
            "objective": f"MAE: {m.mask_ratio:g} of the patches masked, MSE on the "
            f"{'per-patch normalized' if m.norm_pix else 'raw'} voxels of the masked patches",
            "budget_samples": budget,
            "mixture": {d: float(alloc.weights[d]) for d in alloc.domains},
            "samples": {d: int(alloc.samples[d]) for d in alloc.domains},
            "allocation": str(alloc.source),
            "seed": int(cfg.train.seed),
            "steps": step,
            "config": cfg.to_dict(),
        },
        "data": {
            "manifest": str(manifest.file) if manifest.file is not None else None,
            "manifest_sha256": sha256_file(manifest.file) if manifest.file is not None else None,
            "data_digest": data_digest(manifest, alloc),
            "spec": str(spec.path) if spec is not None else None,
            "spec_sha256": sha256_file(spec.path) if spec is not None else None,
        },
        "weights": weights,
        "weights_dtype": "float32",
    }


def _spec_of(manifest: Any) -> tuple[Any, str]:
    """(the ingest spec the manifest's header names, or None; where the settings come from)."""
    from voxmix.trainer.data.ingest.spec import load_spec

    name = manifest.header.get("spec") if isinstance(manifest.header, dict) else None
    if not isinstance(name, str) or not name:
        return None, "unknown: the manifest's header names no ingest spec"
    try:
        return load_spec(name), f"the ingest spec {name} (read when the encoder was written)"
    except (ValueError, OSError) as err:  # SpecError is a ValueError naming the file and field
        return None, f"unknown: the ingest spec {name} could not be read at export ({err})"


def _intensity(modality: str, ds: Any, records: list) -> dict[str, Any]:
    """The intensity mapping of preprocess.normalize for one domain (`ds`: its DomainSpec or None)."""
    pct = list(ds.percentiles) if ds is not None else None
    fg_rel = f"3x3x3 mean above {MRI_FG_FRACTION:g} x the volume's 99.5th percentile"
    per_volume = {
        "method": "foreground_percentiles",
        "percentiles": pct,
        "formula": "clip((x - P_low) / (P_high - P_low), 0, 1), percentiles of each volume's foreground",
        "foreground": fg_rel,
    }
    if modality == "CT":
        return {
            "method": "ct_window",
            "window_hu": list(ds.window) if ds is not None else None,
            "formula": "clip((HU - low) / (high - low), 0, 1)",
            "foreground": f"HU > {CT_BODY_HU:g}",
        }
    if modality == "MRI":
        return per_volume
    with_suv = sum(1 for r in records if r.stats.get("suv") is True)
    return {
        "method": "suv",
        "suv_max": ds.suv_max if ds is not None else None,
        "formula": "clip(SUVbw / suv_max, 0, 1) where the DICOM metadata gives SUV; else as without_suv",
        "foreground": f"SUV > {PET_SUV_FG:g}",
        "without_suv": per_volume,
        "volumes_with_suv": with_suv,
        "volumes_without_suv": len(records) - with_suv,
    }


def _preprocessing(domain: str, manifest: Any, spec: Any, note: str) -> dict[str, Any]:
    records = manifest.select(domain=domain)
    ds = next((d for d in spec.domains if d.name == domain), None) if spec is not None else None
    modality = records[0].modality if records else (ds.modality if ds is not None else None)
    if ds is not None and ds.modality != modality:
        ds, note = None, f"unknown: the spec's modality for {domain} ({ds.modality}) is not the manifest's"
    elif spec is not None and ds is None:
        ds, note = None, f"unknown: the ingest spec {spec.path} has no domain {domain}"
    spacings = [r.spacing for r in records]
    return {
        "modality": modality,
        "orientation": "RAS+ (array axes D, H, W = x, y, z)",
        "spacing_mm": (list(ds.spacing) if ds.spacing is not None else "native") if ds is not None else None,
        "observed_spacing_mm": {
            "min": [min(s[i] for s in spacings) for i in range(3)],
            "max": [max(s[i] for s in spacings) for i in range(3)],
        }
        if spacings
        else None,
        "resampling": "trilinear on the raw intensities, Gaussian pre-filter (sigma = (factor - 1) / 2 "
        "voxels) on downsampled axes",
        "intensity": _intensity(modality, ds, records),
        "range": [0.0, 1.0],
        "foreground_crop_margin": ds.margin if ds is not None else None,
        "volumes": {s: sum(1 for r in records if r.split == s) for s in ("train", "val")},
        "settings_from": note,
    }


# ---------------------------------------------------------------------------------------------------
# MODEL_CARD.md: the card for people, rendered from the same object


def _fmt(v: Any) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return " x ".join(_fmt(x) for x in v)
    return str(v)


def _interval(v: list | None) -> str:
    return "unknown" if v is None else f"[{_fmt(v[0])}, {_fmt(v[1])}]"


def _intensity_line(it: dict) -> str:
    if it["method"] == "ct_window":
        return f"CT window {_interval(it['window_hu'])} HU -> [0, 1], clipped (`{it['formula']}`)"
    if it["method"] == "suv":
        alt = _intensity_line(it["without_suv"])
        return (
            f"SUVbw / {_fmt(it['suv_max'])} -> [0, 1], clipped ({it['volumes_with_suv']} volumes); without "
            f"SUV metadata ({it['volumes_without_suv']} volumes): {alt}"
        )
    return f"foreground percentiles {_interval(it['percentiles'])} -> [0, 1], clipped"


def render_model_card(card: dict[str, Any]) -> str:
    """MODEL_CARD.md: loading recipe, architecture, preprocessing per domain, training data, files."""
    kw, arch, tr, data = card["monai_vit_kwargs"], card["architecture"], card["training"], card["data"]
    m, inp = arch["model"], card["input"]
    pe = arch["position_embedding"]
    lines = [
        f"# voxmix encoder `{card['run_id']}`",
        "",
        f"A {kw['num_layers']}-layer, {kw['hidden_size']}-wide 3D ViT ({arch['parameters']:,} parameters) "
        f"pretrained as a masked autoencoder by voxmix {card['voxmix_version']} on "
        f"{tr['budget_samples']:,} crops of {len(tr['mixture'])} imaging domain(s), {tr['steps']} optimizer "
        "steps. The weights use MONAI's `ViT` key names.",
        "",
        "## Load it",
        "",
        "```python",
        "from voxmix.trainer.pretrain.model import load_monai_vit, load_unetr",
        "vit = load_monai_vit('.')  # this folder, encoder.safetensors or encoder.pt -> monai.networks.nets.ViT",
        "tokens, hidden = vit(x)  # x: (B, 1, "
        + ", ".join(str(c) for c in inp["crop_voxels"])
        + ") in [0, 1]",
        "```",
        "",
        "Without voxmix: `monai.networks.nets.ViT(**card['monai_vit_kwargs'])` with "
        "`safetensors.torch.load_file('encoder.safetensors')` loaded strictly (`card` = encoder.json). "
        "MONAI's `UNETR` takes it only with `qkv_bias=True` (`load_unetr` passes it) and only for patch 16 "
        "with 12 layers.",
        "",
        "## Architecture",
        "",
        "| | |",
        "| --- | --- |",
        f"| input | {inp['in_channels']} channel, {_fmt(inp['crop_voxels'])} voxels, values in [0, 1] |",
        f"| patches | {_fmt(inp['patch_voxels'])} voxels, {arch['tokens']} tokens |",
        f"| encoder | width {kw['hidden_size']}, {kw['num_layers']} layers, {kw['num_heads']} heads, "
        f"MLP {kw['mlp_dim']}, qkv bias, exact GELU, pre-norm |",
        f"| positions | {pe['kind']}; MONAI `pos_embed_type={pe['monai_pos_embed_type']!r}` |",
        f"| pretraining | {tr['objective']}; decoder {m['dec_width']} wide, {m['dec_depth']} deep (not included) |",
        "",
    ]
    if pe.get("note"):
        lines += [f"Note: {pe['note']}.", ""]
    lines += [
        f"Input: {inp['note']}.",
        "",
        "## Preprocessing (what ingest did; do the same to new scans)",
        "",
    ]
    for dom, p in card["preprocessing"].items():
        spacing = "each scan's own" if p["spacing_mm"] == "native" else f"{_fmt(p['spacing_mm'])} mm"
        seen = p["observed_spacing_mm"]
        if seen is not None:
            lo, hi = _fmt(seen["min"]), _fmt(seen["max"])
            spacing += f" (volumes: {lo} mm)" if lo == hi else f" (volumes: {lo} to {hi} mm)"
        lines += [
            f"- **{dom}** ({p['modality']}): orient to {p['orientation']}; resample to {spacing}, "
            f"{p['resampling']}; {_intensity_line(p['intensity'])}; background 0; crop to the foreground "
            f"({p['intensity']['foreground']}) with a margin of {_fmt(p['foreground_crop_margin'])} voxels. "
            f"{p['volumes']['train']} train / {p['volumes']['val']} val volumes. Settings from "
            f"{p['settings_from']}.",
        ]
    lines += [
        "",
        "## Training data and run",
        "",
        "| domain | weight | samples |",
        "| --- | --- | --- |",
        *(f"| {d} | {w:.4f} | {tr['samples'][d]:,} |" for d, w in tr["mixture"].items()),
        "",
        f"Budget {tr['budget_samples']:,} samples, seed {tr['seed']}, step {card['step']}, allocation "
        f"`{tr['allocation']}`. Manifest `{_fmt(data['manifest'])}` (sha256 `{_fmt(data['manifest_sha256'])}`), "
        f"data digest `{data['data_digest']}`.",
        "",
        "## Files and versions",
        "",
        *(f"- `{n}`: {r['size']:,} bytes, sha256 `{r['sha256']}`" for n, r in card["weights"].items()),
        f"- `{CARD}`: this card, machine-readable (`{card['format']}`, docs/formats.md)",
        "",
        f"voxmix {card['voxmix_version']}, torch {card['torch_version']}, MONAI {_fmt(card['monai_version'])}; "
        f"written {card['created']}.",
        "",
    ]
    return "\n".join(lines)
