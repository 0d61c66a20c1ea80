"""The downstream protocol: UNETR segmentation and lesion classification for one encoder and one seed.

Everything random (decoder/head init, crop sequence, folds) is drawn from the seed alone, so two
encoders run with the same seed see the same crops and folds: their results pair across seeds.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from .config import ClsConfig, DownstreamConfig, SegConfig
from .context import stratified_folds as _folds
from .data import Case, load_cases, seg_batch, whole_volume
from .models import ViTClassifier, build_segmenter, build_vit
from .stats import auroc


def resolve_device(cfg: DownstreamConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(device: torch.device):
    # bf16 on GPU (as pretraining); fp32 on CPU, where bf16 matmuls are slower, not faster.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _img(blob: dict) -> int:
    s = blob["monai_vit_kwargs"]["img_size"]
    return int(s[0] if isinstance(s, (list, tuple)) else s)


def _optimizer(net: torch.nn.Module, lr: float, encoder_lr: float) -> torch.optim.Optimizer:
    enc = [p for n, p in net.named_parameters() if n.startswith("vit.") and p.requires_grad]
    rest = [p for n, p in net.named_parameters() if not n.startswith("vit.") and p.requires_grad]
    return torch.optim.AdamW(
        [{"params": rest, "lr": lr}, {"params": enc, "lr": encoder_lr}], weight_decay=1e-4
    )


def dice_per_label(pred: torch.Tensor, target: torch.Tensor, k: int) -> list[float]:
    """Dice of labels 1..k between two integer maps; nan where both are empty."""
    out = []
    for c in range(1, k + 1):
        p, t = pred == c, target == c
        denom = int(p.sum()) + int(t.sum())  # .item() syncs: once per label per volume, at eval only
        out.append(2.0 * int((p & t).sum()) / denom if denom else math.nan)
    return out


@torch.no_grad()
def evaluate_seg(net, cases: list[Case], cfg: SegConfig, img: int, device) -> dict:
    net.eval()
    k = len(cfg.labels)
    rows = []
    for case in cases:
        x = torch.from_numpy(case.image)[None, None].to(device)
        with _autocast(device):
            logits = sliding_window_inference(x, (img,) * 3, 4, net, overlap=cfg.overlap)
        pred = logits.float().argmax(1)[0].cpu()
        rows.append(dice_per_label(pred, torch.from_numpy(case.label.astype(np.int64)), k))
    arr = np.array(rows, dtype=np.float64)
    per = {name: float(np.nanmean(arr[:, i])) if np.isfinite(arr[:, i]).any() else math.nan
           for i, name in enumerate(cfg.labels)}  # fmt: skip
    return {"dice": per, "dice_mean": float(np.nanmean(list(per.values()))), "val_volumes": len(cases)}


def run_seg(blob, cfg: SegConfig, data_dir, *, seed: int, pretrained: bool, device, log=None,
            max_train: int | None = None) -> dict:  # fmt: skip
    """`max_train`: fine-tune on that many training volumes only, the first of a seeded order (nested:
    the 4 of a seed are among its 8), for label-efficiency curves."""
    cases = load_cases(data_dir, cfg.domain, cfg.labels)
    train = [c for c in cases if c.split == "train"]
    if max_train is not None:
        if len(train) < max_train:
            raise ValueError(f"{data_dir}: domain {cfg.domain!r} has {len(train)} labelled training volumes, "
                             f"fewer than the {max_train} asked for")  # fmt: skip
        train = [train[i] for i in np.random.default_rng([seed, 47]).permutation(len(train))[:max_train]]
    val = [c for c in cases if c.split == "val"]
    if not train or not val:
        raise ValueError(f"{data_dir}: domain {cfg.domain!r} needs labelled train and val volumes "
                         f"(has {len(train)} train, {len(val)} val)")  # fmt: skip
    img = _img(blob)
    torch.manual_seed(seed)
    net = build_segmenter(blob, len(cfg.labels) + 1, feature_size=cfg.feature_size, pretrained=pretrained)
    net.to(device)
    opt = _optimizer(net, cfg.lr, cfg.encoder_lr)
    # Background left out of the Dice term: with it, small organs let the tiny UNETR collapse to
    # all-background (measured: Dice 0 after 40-150 steps while the loss still fell).
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    rng = np.random.default_rng([seed, 17])
    t0 = time.perf_counter()
    net.train()
    for step in range(cfg.steps):
        x, y = seg_batch(train, img, cfg.batch_size, rng, cfg.fg_prob)
        with _autocast(device):
            logits = net(x.to(device))
        loss = loss_fn(logits.float(), y.to(device))  # Dice sums in fp32: bf16 loses small organs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step + 1) % max(1, cfg.steps // 4) == 0:
            log(f"seg {cfg.domain} step {step + 1}/{cfg.steps} loss {loss.item():.3f}")  # .item(): log only
    res = evaluate_seg(net, val, cfg, img, device)
    res.update(train_volumes=len(train), steps=cfg.steps, seconds=round(time.perf_counter() - t0, 2))
    return res


def fit_probe(feats: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-penalized logistic regression (full batch L-BFGS, float64) -> (w, b)."""
    w = torch.zeros(feats.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=200, line_search_fn="strong_wolfe")
    yf = y.double()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(feats @ w + b, yf) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _scores_report(scores: np.ndarray, y: np.ndarray) -> dict:
    return {"auroc": auroc(scores, y), "accuracy": float(((scores > 0.5) == (y == 1)).mean())}


@torch.no_grad()
def _features(vit, xs: torch.Tensor, device, batch: int = 8) -> torch.Tensor:
    clf = ViTClassifier(vit, 2).to(device).eval()
    out = []
    for i in range(0, len(xs), batch):
        with _autocast(device):
            out.append(clf.features(xs[i : i + batch].to(device)).float().cpu())
    return torch.cat(out).double()


def run_cls(blob, cfg: ClsConfig, data_dir, *, seed: int, pretrained: bool, device, log=None) -> dict:
    cases = [c for c in load_cases(data_dir, cfg.domain) if cfg.target in c.classes]
    y = np.array([int(c.classes[cfg.target]) for c in cases])
    if len(np.unique(y)) < 2 or min(np.bincount(y)) < 2:
        raise ValueError(f"{data_dir}: domain {cfg.domain!r} target {cfg.target!r} needs >= 2 volumes of "
                         f"each class, has counts {np.bincount(y).tolist()}")  # fmt: skip
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"cls.target {cfg.target!r}: values {sorted(set(y))} are not binary 0/1")
    t0 = time.perf_counter()
    img = _img(blob)
    xs = torch.stack([whole_volume(c, img) for c in cases])
    folds = _folds(y, min(cfg.folds, int(min(np.bincount(y)))), np.random.default_rng([seed, 29]))
    torch.manual_seed(seed)
    vit = build_vit(blob, pretrained=pretrained)
    feats = _features(vit, xs, device)
    probe = np.zeros(len(y))
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6  # standardize on the training fold only
        w, b = fit_probe((feats[tr] - mu) / sd, torch.from_numpy(y[tr]), cfg.probe_l2)
        probe[te] = torch.sigmoid(((feats[te] - mu) / sd) @ w + b).numpy()
    res = {"probe": _scores_report(probe, y), "volumes": len(y), "positives": int(y.sum())}
    if cfg.finetune_steps:
        ft = np.zeros(len(y))
        for f in np.unique(folds):
            ft[folds == f] = _finetune_fold(blob, cfg, xs, y, folds != f, folds == f, seed=seed + 1000 * int(f),
                                            pretrained=pretrained, device=device)  # fmt: skip
            if log:
                log(f"cls {cfg.domain} fine-tune fold {f + 1}/{len(np.unique(folds))}")
        res["finetune"] = _scores_report(ft, y)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def _finetune_fold(blob, cfg: ClsConfig, xs, y, tr, te, *, seed, pretrained, device) -> np.ndarray:
    torch.manual_seed(seed)
    net = ViTClassifier(build_vit(blob, pretrained=pretrained), 1).to(device)
    opt = _optimizer(net, cfg.lr, cfg.encoder_lr)
    rng = np.random.default_rng([seed, 31])
    idx_tr = np.flatnonzero(tr)
    yt = torch.from_numpy(y).float()
    # Positives weighted by negatives/positives of the training fold: unweighted, 40 steps on 7/32
    # positives left every fold predicting the majority class (accuracy = its share on every seed).
    npos = int(y[idx_tr].sum())
    pos_weight = torch.tensor((len(idx_tr) - npos) / max(npos, 1), device=device)
    net.train()
    for _ in range(cfg.finetune_steps):
        pick = rng.choice(idx_tr, size=min(cfg.batch_size, len(idx_tr)), replace=False)
        xb = xs[pick]
        dims = [int(d) for d in rng.choice([2, 3, 4], size=int(rng.integers(0, 3)), replace=False)]
        if dims:  # random flips: the only augmentation, cheap and label-preserving for lesion presence
            xb = torch.flip(xb, dims=dims)
        with _autocast(device):
            logit = net(xb.to(device))[:, 0].float()
        loss = F.binary_cross_entropy_with_logits(logit, yt[pick].to(device), pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad(), _autocast(device):
        return torch.sigmoid(net(xs[te].to(device))[:, 0].float()).cpu().numpy()


def run_protocol(blob, cfg: DownstreamConfig, data_dir, *, seed: int, pretrained: bool = True,
                 task: str = "all", log=None) -> dict:  # fmt: skip
    """{"seg/<domain>": {...}, "cls/<domain>/<target>": {...}} for the tasks selected by `task`."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = {}
    if task in ("seg", "all"):
        for s in cfg.seg:
            out[f"seg/{s.domain}"] = run_seg(blob, s, data_dir, seed=seed, pretrained=pretrained, device=device,
                                             log=log)  # fmt: skip
    if task in ("cls", "all"):
        for c in cfg.cls:
            out[f"cls/{c.domain}/{c.target}"] = run_cls(blob, c, data_dir, seed=seed, pretrained=pretrained,
                                                        device=device, log=log)  # fmt: skip
    return out
