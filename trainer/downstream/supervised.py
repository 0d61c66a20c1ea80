"""The supervised positive control (round 3 of the protocol, docs/downstream.md): an encoder better by
construction *for the readout*.

The encoder of the arms' architecture (same `monai_vit_kwargs`, MONAI's random initialisation, positions
fixed as in pretraining) trained with a linear head on the final (normed) tokens to predict each token's
anatomy label, the label the token probe reads (probes.token_labels: the most frequent label of the patch).
It is trained on a labelled phantom set made with another generator seed than the evaluation set, so no
evaluated volume is ever seen; the head is dropped, the probe retrains its own.

Why this control: two rounds showed that the MAE encoders at demo scale, even pretrained 2-4x longer or on
the target domain, are not better than a random one on a frozen readout (docs/downstream.md). A control the
protocol cannot separate leaves open whether the *assay* can see a better encoder at all; this one is
better by construction for the anatomy probe, so its separation (or not) measures the protocol's
sensitivity. It says nothing of MAE pretraining: that is the arms-vs-random section of the report.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from voxmix.trainer.data.phantoms import LABEL_NAMES

from . import probes
from .data import load_cases
from .models import build_vit


@dataclass(kw_only=True)
class SupervisedConfig:
    steps: int = 1500
    """AdamW steps; one batch of fresh uniform crops per step."""
    batch: int = 8
    """Crops per step (the tiny preset's pretraining batch)."""
    lr: float = 1e-3
    """Peak learning rate (the tiny preset's); linear warmup, then cosine to 0."""
    warmup: int = 50
    weight_decay: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or not 0 <= self.warmup < self.steps:
            raise ValueError(f"supervised: steps ({self.steps}) and batch ({self.batch}) must be >= 1, "
                             f"warmup ({self.warmup}) in [0, steps)")  # fmt: skip
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise ValueError(
                f"supervised: lr ({self.lr}) must be > 0 and weight_decay ({self.weight_decay}) >= 0"
            )


def _lr_at(step: int, cfg: SupervisedConfig) -> float:
    """Warmup then cosine to 0, as trainer/pretrain/optim.py's `lr_factor` (not imported: downstream may
    not import the pretraining package, tests/test_layout.py)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def train_supervised(data, domains: list[str], ref: dict, cfg: SupervisedConfig, log=None) -> dict:
    """An encoder blob (`monai_vit_kwargs` of `ref`, trained weights, the settings under "supervised")
    trained on every labelled volume of `domains` in `data` (an ingested folder with labels.jsonl)."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    kw = ref["monai_vit_kwargs"]
    img, patch = int(np.atleast_1d(kw["img_size"])[0]), int(np.atleast_1d(kw["patch_size"])[0])
    cases = [c for d in domains for c in load_cases(data, d, LABEL_NAMES[1:])]  # identity remap
    k = len(LABEL_NAMES)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vit = build_vit(ref, pretrained=False).train()
    head = torch.nn.Linear(int(kw["hidden_size"]), k)
    params = [p for p in [*vit.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0, losses = time.perf_counter(), []
    say(f"supervised control: {cfg.steps} steps of {cfg.batch} crops from {len(cases)} volumes of {domains}")
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        pick = rng.integers(0, len(cases), cfg.batch)
        x, lab = probes.crops([cases[i] for i in pick], img, 1, rng)
        y = torch.from_numpy(probes.token_labels(lab, patch, k)).reshape(-1)
        tokens, _ = vit(torch.from_numpy(x))
        loss = F.cross_entropy(head(tokens).reshape(-1, k), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, cfg.steps // 10) == 0 or step + 1 == cfg.steps:
            recent = float(np.mean(losses[-50:]))
            say(f"supervised control: step {step + 1}/{cfg.steps} token loss {recent:.3f} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    state = {n: t.detach().clone() for n, t in vit.state_dict().items()}
    info = {**asdict(cfg), "domains": list(domains), "volumes": len(cases),
            "first_loss": float(np.mean(losses[:50])), "last_loss": float(np.mean(losses[-50:])),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    return {"monai_vit_kwargs": dict(kw), "state_dict": state, "supervised": info}
