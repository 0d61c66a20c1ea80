"""Typed run configuration: dataclasses loaded from YAML, every field validated with a message naming it.

A run is `Config` = model + data + optim + eval + checkpoint + train sections. YAML files under configs/
are the named presets; the command line only overrides (`--set section.field=value`, parsed as YAML and
type-checked against the field's annotation, plus a few first-class flags in trainer/run.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Named model sizes. `tiny` is sized for 2 CPU cores (32^3 crops, 8^3 patches -> 64 tokens); base is
# ViT-B (768 wide, 12 deep, 12 heads). Decoders are lighter than their encoders, as in MAE. MONAI's 3D
# sin-cos embedding needs a width divisible by 6: `large` (1024, ViT-L) is exported with a frozen
# "learnable" embedding holding our sin-cos values instead (model.monai_pos_embed_type).
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(crop=32, patch=8, width=96, depth=3, heads=3, dec_width=48, dec_depth=1, dec_heads=2),
    "small": dict(crop=96, patch=16, width=384, depth=12, heads=6, dec_width=192, dec_depth=4, dec_heads=6),
    "base": dict(crop=96, patch=16, width=768, depth=12, heads=12, dec_width=384, dec_depth=4, dec_heads=12),
    "large": dict(
        crop=96, patch=16, width=1024, depth=24, heads=16, dec_width=384, dec_depth=8, dec_heads=12
    ),
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field (section.field) and the value.

    `fields`: the field at fault, then those its check compared it with (empty: about the file itself).
    `from_set`: the message already names the `--set` item that gave the value (not the YAML file)."""

    def __init__(self, message: str, *, fields: tuple[str, ...] = (), from_set: bool = False):
        super().__init__(message)
        self.fields = fields
        self.from_set = from_set


def _fail(name: str, value: Any, why: str, also: tuple[str, ...] = ()) -> None:
    raise ConfigError(f"config field '{name}' = {value!r}: {why}", fields=(name, *also))


# The 64-bit range: every integer field ends up in NumPy or torch, where a larger one overflows.
_INT64 = 2**63
# Seeds reach `np.random.seed(seed + rank)`, which takes [0, 2^32): 2^31 leaves room for any rank.
_SEED_LIMIT = 2**31


def _check_number(name: str, value: Any) -> None:
    """NaN passes every `x < 0` / `x > 0` range check (all comparisons are false), and inf passes the
    lower bounds, so finiteness is checked once here for every number, nested ones (eval.at,
    train.deepspeed) included. No field accepts NaN or infinity; `None` is how a field says "unset"."""
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        _fail(name, value, "must be a finite number (NaN and infinity are refused)")
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        _fail(name, value, "does not fit a 64-bit integer")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_number(f"{name}[{i}]", v)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_number(f"{name}.{k}", v)


def _check_numbers(section: str, obj: Any) -> None:
    """Run first in every section's __post_init__, so that the range checks below see finite numbers."""
    for f in dataclasses.fields(obj):
        _check_number(f"{section}.{f.name}", getattr(obj, f.name))


@dataclass(kw_only=True)
class ModelConfig:
    size: str = "tiny"
    """Named size (tiny/small/base/large); fields left unset (None) take the size's values."""
    crop: int | None = None
    """Edge of the cubic training crop in voxels (96 for small/base/large)."""
    patch: int | None = None
    """Edge of a cubic patch in voxels; must divide `crop`."""
    in_chans: int = 1
    """Input channels."""
    width: int | None = None
    """Encoder width (embedding dim)."""
    depth: int | None = None
    """Encoder blocks."""
    heads: int | None = None
    """Encoder attention heads; must divide `width`."""
    mlp_ratio: float = 4.0
    """MLP hidden width / width."""
    dec_width: int | None = None
    """Decoder width."""
    dec_depth: int | None = None
    """Decoder blocks."""
    dec_heads: int | None = None
    """Decoder heads; must divide `dec_width`."""
    mask_ratio: float = 0.75
    """Fraction of patches hidden from the encoder, per sample."""
    norm_pix: bool = True
    """Normalize each target patch (MAE's norm_pix_loss)."""
    reference: bool = False
    """Swap every kernel for its plain-PyTorch reference (comparison and debugging)."""

    def __post_init__(self):
        _check_numbers("model", self)
        if self.size not in MODEL_SIZES:
            _fail("model.size", self.size, f"unknown size; choose one of {sorted(MODEL_SIZES)}")
        for k, v in MODEL_SIZES[self.size].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        ints = ("crop", "patch", "in_chans", "width", "depth", "heads", "dec_width", "dec_depth", "dec_heads")
        for k in ints:
            if getattr(self, k) < 1:
                _fail(f"model.{k}", getattr(self, k), "must be >= 1")
        if self.crop % self.patch:
            _fail("model.patch", self.patch, f"must divide model.crop={self.crop}", ("model.crop",))
        if self.width % self.heads:
            _fail("model.heads", self.heads, f"must divide model.width={self.width}", ("model.width",))
        if self.dec_width % self.dec_heads:
            _fail(
                "model.dec_heads",
                self.dec_heads,
                f"must divide model.dec_width={self.dec_width}",
                ("model.dec_width",),
            )
        if not 0.0 < self.mlp_ratio <= 16 or int(self.width * self.mlp_ratio) < 1:
            why = "must lie in (0, 16] and give an MLP of >= 1 unit"
            _fail("model.mlp_ratio", self.mlp_ratio, why, ("model.width",))
        n = self.num_patches
        keep = n - self.num_masked
        if not 0.0 < self.mask_ratio < 1.0 or keep < 1 or self.num_masked < 1:
            _fail(
                "model.mask_ratio",
                self.mask_ratio,
                f"must leave >= 1 visible and >= 1 masked of {n} patches",
                ("model.crop", "model.patch"),
            )

    @property
    def num_patches(self) -> int:
        return (self.crop // self.patch) ** 3

    @property
    def num_masked(self) -> int:
        return int(round(self.num_patches * self.mask_ratio))


@dataclass(kw_only=True)
class DataConfig:
    manifest: str = ""
    """Path of manifest.jsonl (voxmix.manifest/1)."""
    allocation: str = ""
    """Path of allocation.json (voxmix.allocation/1); usually given with --allocation."""
    batch_size: int = 8
    """Micro-batch per rank."""
    backend: str = "auto"
    """Loader backend: auto (DALI where available), dali or torch."""
    num_threads: int = 2
    """Loader worker threads per rank."""
    augment: bool = True
    """Random flips/intensity augmentation in the loader."""
    max_epochs: float | None = None
    """Refuse allocations that repeat a domain's volumes more often than this (None: no limit)."""

    def __post_init__(self):
        _check_numbers("data", self)
        if self.batch_size < 1:
            _fail("data.batch_size", self.batch_size, "must be >= 1")
        if self.backend not in ("auto", "dali", "torch"):
            _fail("data.backend", self.backend, "must be auto, dali or torch")
        if self.num_threads < 1:
            _fail("data.num_threads", self.num_threads, "must be >= 1")
        if self.max_epochs is not None and not self.max_epochs > 0:
            _fail("data.max_epochs", self.max_epochs, "must be > 0")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1.5e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.0
    """Final lr / peak lr."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (not applied to biases, norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2 (MAE's value)."""
    schedule: str = "wsd"
    """cosine (warmup then cosine to the end) or wsd (warmup, stable, decay in the last `decay_frac`)."""
    warmup_frac: float = 0.05
    """Fraction of the run's optimizer steps spent in linear warmup."""
    decay_frac: float = 0.2
    """wsd only: fraction of steps in the final (linear) decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping (0 disables)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""

    def __post_init__(self):
        _check_numbers("optim", self)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail("optim.lr", self.lr, "must be a finite number > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            _fail("optim.min_lr_ratio", self.min_lr_ratio, "must lie in [0, 1]")
        if self.weight_decay < 0:
            _fail("optim.weight_decay", self.weight_decay, "must be >= 0")
        for k in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, k) < 1.0:
                _fail(f"optim.{k}", getattr(self, k), "must lie in [0, 1)")
        if self.schedule not in ("cosine", "wsd"):
            _fail("optim.schedule", self.schedule, "must be cosine or wsd")
        if not 0.0 <= self.warmup_frac < 1.0:
            _fail("optim.warmup_frac", self.warmup_frac, "must lie in [0, 1)")
        if not 0.0 <= self.decay_frac <= 1.0 - self.warmup_frac:
            why = "must lie in [0, 1 - optim.warmup_frac]"
            _fail("optim.decay_frac", self.decay_frac, why, ("optim.warmup_frac",))
        if self.grad_clip < 0:
            _fail("optim.grad_clip", self.grad_clip, "must be >= 0")
        if self.grad_accum < 1:
            _fail("optim.grad_accum", self.grad_accum, "must be >= 1")


@dataclass(kw_only=True)
class EvalConfig:
    at: list[int] | None = None
    """Evaluate once the run has trained on at least these many samples (global); None: log-spaced."""
    points: int = 8
    """Log-spaced evaluation points between `first` and the budget when `at` is None."""
    first: int = 64
    """First log-spaced evaluation point, in samples."""
    crops_per_domain: int = 8
    """Fixed held-out crops per domain (validation split, same crops and masks every time)."""
    batch_size: int = 16
    """Evaluation batch size."""
    seed: int = 1234
    """Seed of the evaluation crops and masks (independent of the training seed)."""

    def __post_init__(self):
        _check_numbers("eval", self)
        if self.at is not None:
            if not self.at or any(a < 1 for a in self.at) or sorted(set(self.at)) != list(self.at):
                _fail(
                    "eval.at", self.at, "must be a non-empty, strictly increasing list of sample counts >= 1"
                )
        if self.points < 1:
            _fail("eval.points", self.points, "must be >= 1")
        if self.first < 1:
            _fail("eval.first", self.first, "must be >= 1")
        if self.crops_per_domain < 1:
            _fail("eval.crops_per_domain", self.crops_per_domain, "must be >= 1")
        if self.batch_size < 1:
            _fail("eval.batch_size", self.batch_size, "must be >= 1")
        if not 0 <= self.seed < _SEED_LIMIT:
            _fail("eval.seed", self.seed, f"must lie in [0, {_SEED_LIMIT})")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int = 200
    """Save a DeepSpeed checkpoint every this many optimizer steps (and always at the end)."""
    keep: int = 2
    """Checkpoints kept on disk (older ones are deleted after a newer one is complete)."""

    def __post_init__(self):
        _check_numbers("checkpoint", self)
        if self.every_steps < 1:
            _fail("checkpoint.every_steps", self.every_steps, "must be >= 1")
        if self.keep < 1:
            _fail("checkpoint.keep", self.keep, "must be >= 1")


@dataclass(kw_only=True)
class TrainConfig:
    run_id: str = ""
    """Unique run name (default: the output folder's name)."""
    out: str = "runs/default"
    """Output folder: runlog.jsonl, checkpoints/, encoder.pt, config.json, deepspeed_config.json."""
    seed: int = 0
    """Seed of the sampler, the model init and the masks."""
    budget_samples: int | None = None
    """Train on this many samples (global); None: the allocation's total."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3)."""
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32."""
    log_every: int = 20
    """Throughput events every this many optimizer steps."""
    tensorboard: bool = False
    """Also write TensorBoard scalars under <out>/tb (`tensorboard --logdir <out>/tb`)."""
    wandb: bool = False
    """Also log the run log's events to Weights & Biases, under <out>/wandb (docs/training.md, Tracking)."""
    wandb_project: str = "voxmix"
    """W&B project: 1-128 characters, none of / \\ # ? % : (W&B's rule)."""
    wandb_entity: str | None = None
    """W&B user or team; None: the logged-in user's default."""
    wandb_group: str | None = None
    """W&B run group (e.g. a sweep's name); None: no group."""
    wandb_tags: list[str] | None = None
    """W&B run tags, 1-64 characters each."""
    wandb_mode: str | None = None
    """online, or offline (uploaded later with `wandb sync`); None: W&B's own (WANDB_MODE, else online)."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s per device for MFU; None: looked up from the GPU name (unknown on CPU)."""
    deepspeed: dict[str, Any] | None = None
    """Extra DeepSpeed config merged over the generated one (plain JSON; the keys generated from config
    fields, e.g. gradient_clipping from optim.grad_clip, are refused: set the field)."""

    def __post_init__(self):
        _check_numbers("train", self)
        if not self.out.strip():
            _fail("train.out", self.out, "must name the output folder")
        if not 0 <= self.seed < _SEED_LIMIT:
            _fail("train.seed", self.seed, f"must lie in [0, {_SEED_LIMIT})")
        if self.budget_samples is not None and self.budget_samples < 1:
            _fail("train.budget_samples", self.budget_samples, "must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            _fail("train.zero_stage", self.zero_stage, "must be 0, 1, 2 or 3")
        if self.precision not in ("auto", "bf16", "fp32"):
            _fail("train.precision", self.precision, "must be auto, bf16 or fp32")
        if self.log_every < 1:
            _fail("train.log_every", self.log_every, "must be >= 1")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            _fail("train.peak_tflops", self.peak_tflops, "must be > 0")
        if self.deepspeed is not None:
            _check_deepspeed("train.deepspeed", self.deepspeed)
        _check_wandb(self)


def _check_wandb(t: TrainConfig) -> None:
    """W&B's own limits on names, checked here so that a bad one stops before start-up, not at wandb.init."""
    p = t.wandb_project
    if not p.strip() or len(p) > 128 or set(p) & set("/\\#?%:"):
        _fail("train.wandb_project", p, "must be 1-128 characters, none of / \\ # ? % :")
    for name in ("wandb_entity", "wandb_group"):
        if getattr(t, name) is not None and not getattr(t, name).strip():
            _fail(f"train.{name}", getattr(t, name), "must be a name or null")
    for i, tag in enumerate(t.wandb_tags or []):
        if not 1 <= len(tag) <= 64:
            _fail(f"train.wandb_tags[{i}]", tag, "must be 1-64 characters")
    if t.wandb_mode not in (None, "online", "offline"):
        _fail("train.wandb_mode", t.wandb_mode, "must be online, offline or null (W&B's own setting)")


# DeepSpeed settings that trainer/pretrain/optim.py derives from config fields. Set in the passthrough,
# they would silently disagree with config.json and the run log (and the sampler's batch arithmetic).
_DERIVED = {
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "optim.grad_accum",
    "train_batch_size": "data.batch_size and optim.grad_accum",
    "gradient_clipping": "optim.grad_clip",
    "bf16": "train.precision",
    "fp16": "train.precision (bf16 or fp32)",
    "optimizer": "the optim section (the trainer passes its own AdamW)",
    "scheduler": "the optim section (the trainer passes its own lr schedule)",
}


def _check_deepspeed(name: str, value: Any) -> None:
    """The passthrough is merged into DeepSpeed's JSON config and saved in config.json: plain JSON only
    (string keys; no dates or other YAML types), and no key that a config field already decides."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                _fail(f"{name}.{k}", v, "keys of train.deepspeed must be strings")
            if name == "train.deepspeed" and k in _DERIVED:
                _fail(f"{name}.{k}", v, f"set by the trainer from {_DERIVED[k]}: set that instead")
            if name == "train.deepspeed.zero_optimization" and k == "stage":
                _fail(f"{name}.{k}", v, "set by the trainer from train.zero_stage: set that instead")
            _check_deepspeed(f"{name}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_deepspeed(f"{name}[{i}]", v)
    elif value is not None and not isinstance(value, (str, int, float)):
        _fail(name, value, "must be a JSON value (string, number, boolean, null, list or mapping)")


@dataclass(kw_only=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build a validated Config from nested dicts plus `section.field=value` overrides (config_load.py)."""
    from .config_load import config_from_dict as build

    return build(raw, overrides)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset and apply overrides; errors name the file and the field (config_load.py)."""
    from .config_load import load_config as load

    return load(path, overrides)


def eval_schedule(cfg: EvalConfig, budget: int) -> list[int]:
    """Sample counts after which to evaluate: `cfg.at` (capped at the budget), or log-spaced; always the end."""
    if cfg.at is not None:
        pts = [a for a in cfg.at if a <= budget]
    else:
        lo = min(cfg.first, budget)
        n = cfg.points
        pts = [int(round(lo * (budget / lo) ** (i / max(n - 1, 1)))) for i in range(n)] if n > 1 else []
    return sorted(set(pts) | {budget})
