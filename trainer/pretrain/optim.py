"""AdamW, the learning-rate schedule, and the DeepSpeed config generated from the run config.

Schedule choice: `wsd` (warmup-stable-decay) is the default. Pilot runs for scaling laws are evaluated
at log-spaced sample counts *during* training; under cosine the loss at an intermediate point depends on
where the run's own decay happens to be, so intermediate points of one run are not comparable with the
end of a shorter run. With WSD the lr is constant between warmup and the final `decay_frac`, so
intermediate evaluations sit on one consistent (constant-lr) curve and the end point includes a short
decay. `cosine` (warmup then cosine to min_lr) is available for final runs.
"""

from __future__ import annotations

import math

import torch

from voxmix.trainer.pretrain.config import Config


def lr_factor(step: int, total: int, cfg) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based) of `total`."""
    warm = int(round(cfg.warmup_frac * total))
    if step < warm:
        return (step + 1) / warm
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    decay = int(round(cfg.decay_frac * total))
    start = total - decay
    if step < start or decay == 0:
        return 1.0
    t = (step - start + 1) / decay
    return 1.0 - (1.0 - lo) * min(1.0, t)


def build_optimizer(model: torch.nn.Module, cfg: Config, total_steps: int):
    """AdamW (no weight decay on biases, norms, the mask token) + LambdaLR over optimizer steps."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("mask_token") else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {}
    if torch.cuda.is_available():
        kwargs["fused"] = True  # one kernel for all parameters on the GPU
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, o))
    return opt, sched


def deepspeed_config(cfg: Config, *, world_size: int, bf16: bool) -> dict:
    """DeepSpeed JSON config from the run config; `train.deepspeed` entries are merged over it."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": bf16},
        # Our AdamW is a client optimizer (torch's, fused on CUDA): no DeepSpeed op build is needed.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the run log is the progress record
        "wall_clock_breakdown": False,
    }
    return _merge(ds, cfg.train.deepspeed or {})


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
