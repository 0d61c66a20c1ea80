"""Typed downstream configs and their presets (`quick`: the CPU demo; `cpu_full`: `make demo-full`; `default`: the GPU protocol)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


def _fail(name: str, value, why: str):
    raise ValueError(f"{name}={value!r}: {why}")


@dataclass(kw_only=True)
class SegConfig:
    """Segmentation of organ masks in one domain with UNETR (Dice + cross-entropy)."""

    domain: str
    """Manifest domain whose labelled volumes are used (train split: training; val split: Dice)."""
    labels: list[str]
    """Label names (labels.jsonl `label_names`) segmented as classes 1..K; every other value is background."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 2
    lr: float = 1e-3
    """AdamW learning rate of the decoder."""
    encoder_lr: float = 1e-4
    """AdamW learning rate of the (pretrained or scratch) encoder."""
    feature_size: int = 16
    """UNETR `feature_size` (channels of the full-resolution level)."""
    fg_prob: float = 0.67
    """Share of training crops centred on a voxel of a segmented label (the rest are uniform)."""
    overlap: float = 0.25
    """Sliding-window overlap at validation."""

    def __post_init__(self):
        if not self.labels:
            _fail("seg.labels", self.labels, "must name at least one label")
        for k in ("steps", "batch_size", "feature_size"):
            if int(getattr(self, k)) < 1:
                _fail(f"seg.{k}", getattr(self, k), "must be >= 1")
        if not (0 <= self.fg_prob <= 1):
            _fail("seg.fg_prob", self.fg_prob, "must lie in [0, 1]")
        if not (0 <= self.overlap < 1):
            _fail("seg.overlap", self.overlap, "must lie in [0, 1)")
        if self.lr <= 0 or self.encoder_lr < 0:
            _fail("seg.lr", (self.lr, self.encoder_lr), "lr must be > 0 and encoder_lr >= 0")


@dataclass(kw_only=True)
class ClsConfig:
    """Volume classification (e.g. lesion present/absent): linear probe and optionally full fine-tuning."""

    domain: str
    target: str = "lesion"
    """Key of labels.jsonl `classes` (binary, 0/1)."""
    folds: int = 4
    """Stratified folds over all labelled volumes of the domain; metrics pool the out-of-fold scores."""
    probe_l2: float = 1e-2
    """L2 penalty of the logistic-regression probe (on standardized features)."""
    finetune_steps: int = 0
    """Steps of full fine-tuning per fold (0: linear probe only)."""
    batch_size: int = 4
    lr: float = 1e-3
    """Head learning rate of full fine-tuning."""
    encoder_lr: float = 1e-4

    def __post_init__(self):
        if self.folds < 2:
            _fail("cls.folds", self.folds, "must be >= 2")
        if self.finetune_steps < 0 or self.batch_size < 1:
            _fail("cls.finetune_steps", self.finetune_steps, "must be >= 0 (and batch_size >= 1)")
        if self.probe_l2 < 0:
            _fail("cls.probe_l2", self.probe_l2, "must be >= 0")


@dataclass(kw_only=True)
class DownstreamConfig:
    seg: list[SegConfig] = field(default_factory=list)
    """Segmentation tasks (run by `--task seg`)."""
    cls: list[ClsConfig] = field(default_factory=list)
    """Classification tasks (run by `--task cls`)."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda; bf16 autocast on CUDA, fp32 on CPU."""
    threads: int = 0
    """CPU threads (0: torch's default, which follows OMP_NUM_THREADS; set 1 on a shared, loaded machine)."""

    def __post_init__(self):
        self.seg = [s if isinstance(s, SegConfig) else SegConfig(**s) for s in self.seg]
        self.cls = [c if isinstance(c, ClsConfig) else ClsConfig(**c) for c in self.cls]
        if self.device not in ("auto", "cpu", "cuda"):
            _fail("device", self.device, "choose auto, cpu or cuda")

    def to_json(self) -> dict:
        return asdict(self)


# ct_abdomen shares its anatomy with mri_abdomen and ct_chest; pet_wholebody is the island of the
# phantom transfer structure (configs/truth_5domains.json: it neither gives nor takes).
# Learning rates stay at the defaults (1e-3 decoder, 1e-4 encoder): at 3e-3 the tiny UNETR collapsed
# to all-background within 40 steps on ct_abdomen (training loss still falling, Dice 0).
PRESETS = {
    "quick": dict(
        seg=[
            dict(
                domain="ct_abdomen",
                labels=["liver", "kidney"],
                steps=40,
                feature_size=8,
            )
        ],  # fmt: skip
        cls=[dict(domain="ct_abdomen"), dict(domain="pet_wholebody")],
    ),
    # `make demo-full` on a 2-core CPU (~5 min calm for two encoders + scratch x 5 seeds): both domains segmented
    # (the island included), probes and a short full fine-tuning.
    "cpu_full": dict(
        seg=[
            dict(
                domain="ct_abdomen",
                labels=["liver", "kidney"],
                steps=150,
                feature_size=8,
            ),
            dict(
                domain="pet_wholebody",
                labels=["liver", "kidney", "brain", "bladder"],
                steps=150,
                feature_size=8,
            ),
        ],  # fmt: skip
        cls=[dict(domain="ct_abdomen", finetune_steps=40), dict(domain="pet_wholebody", finetune_steps=40)],
    ),
    "default": dict(
        seg=[
            dict(domain="ct_abdomen", labels=["liver", "kidney", "spine"], steps=300),
            dict(domain="pet_wholebody", labels=["liver", "kidney", "brain", "bladder"], steps=300),
        ],
        cls=[
            dict(domain="ct_abdomen", finetune_steps=100),
            dict(domain="pet_wholebody", finetune_steps=100),
        ],
    ),
}


def load_config(name_or_path: str) -> DownstreamConfig:
    """A preset name (`quick`, `cpu_full`, `default`) or a YAML file with the fields of `DownstreamConfig`."""
    if name_or_path in PRESETS:
        return DownstreamConfig(**PRESETS[name_or_path])
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"--config {name_or_path!r}: neither a preset {sorted(PRESETS)} nor a file")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with 'seg' and/or 'cls'")
    try:
        return DownstreamConfig(**raw)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None
