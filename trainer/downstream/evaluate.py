"""The evaluation protocol: frozen probes, context tasks and label-efficiency for several encoders over seeds.

`evaluate(encoders, data, cfg)` returns values[encoder][metric] = one value per seed (same seed order for
every encoder, so they pair), plus the encoder-free intensity baseline under the name "intensity".
Metrics (docs/downstream.md, "The evaluation protocol"):
- `anatomy/<domain>/probe`   token probe balanced accuracy (probes.py), training volumes = half the set
- `anatomy/<domain>/knn`     kNN precision@k of the same structure
- `anatomy/<domain>/probe_n<K>`  the token probe trained on K volumes only (label efficiency, frozen)
- `anatomy/<domain>/probe_all`, `knn_all`  the same on every layer's tokens concatenated (round 2)
- `side/<domain>/probe`, `probe_all`  the side task's token probe (sides.py; equal-intensity classes)
- `context/<domain>/<task>`  volume-level AUROC (context.py)
- `finetune/<domain>/dice_n<K>`  UNETR fine-tuned on K labelled volumes (label efficiency), mean Dice
Seeds draw the volume split, the crops, the folds and the random encoder; encoders see the same ones.
An encoder given as {domain: blob} is a different encoder per domain (the target-domain control).
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from voxmix.trainer.data.phantoms import LABEL_NAMES

from . import context, probes, sides
from .config import SegConfig
from .data import Case, load_cases, whole_volume
from .models import build_vit

INTENSITY = "intensity"
# Organs segmented in the fine-tuning curves (the cpu_full preset's tasks).
SEG_LABELS = {"ct_abdomen": ["liver", "kidney"], "ct_abdomen_twin": ["liver", "kidney"],
              "pet_wholebody": ["liver", "kidney", "brain", "bladder"]}  # fmt: skip


@dataclass(kw_only=True)
class EvalConfig:
    domains: list[str] = field(default_factory=list)
    """Labelled domains to probe (empty: every domain of labels.jsonl)."""
    crops_per_volume: int = 4
    """Uniform crops of the encoder's edge per volume for the token probes."""
    token_l2: float = 1e-3
    """L2 penalty of the token probe (on standardized features; loss is a mean over tokens)."""
    knn_k: int = 10
    volume_folds: int = 4
    volume_l2: float = 1e-2
    """L2 penalty of the volume-level probe (as `cls.probe_l2`)."""
    efficiency: list[int] = field(default_factory=lambda: [4, 8, 16])
    """Labelled training volumes of the label-efficiency curves."""
    finetune_domains: list[str] = field(default_factory=lambda: ["ct_abdomen", "pet_wholebody"])
    finetune_steps: int = 100
    """Steps of each label-efficiency fine-tuning (0: no fine-tuning curves)."""
    curve_encoders: list[str] = field(default_factory=lambda: ["control", "random"])
    """Encoders (by name) that get the label-efficiency curves (probe and fine-tuning); fine-tuning costs
    ~100x a probe, and the curves ask where pretraining matters, i.e. pretrained against random."""
    every_layer: bool = True
    """Also probe the concatenation of every layer's tokens (`probe_all`, `knn_all`; round 2)."""
    side: bool = True
    """Run the side task (sides.py) in the domains that have one."""
    threads: int = 1

    def __post_init__(self):
        for k in ("crops_per_volume", "knn_k", "volume_folds"):
            if getattr(self, k) < 1:
                raise ValueError(f"eval.{k} = {getattr(self, k)}: must be >= 1")
        if self.volume_folds < 2:
            raise ValueError(f"eval.volume_folds = {self.volume_folds}: must be >= 2")
        if any(n < 2 for n in self.efficiency):
            raise ValueError(f"eval.efficiency = {self.efficiency}: every size must be >= 2 volumes")
        if self.token_l2 < 0 or self.volume_l2 < 0 or self.finetune_steps < 0 or self.threads < 0:
            raise ValueError("eval: token_l2, volume_l2, finetune_steps and threads must be >= 0")


def _rng(seed: int, tag: int, domain: str) -> np.random.Generator:
    return np.random.default_rng([seed, tag, zlib.crc32(domain.encode())])


@dataclass
class DomainSet:
    """Everything encoder-free of one domain: volumes, label maps, resized volumes, task labels."""

    name: str
    cases: list[Case]
    resized: np.ndarray
    tasks: dict[str, np.ndarray]
    """task -> (indices of the volumes it applies to, their 0/1 labels) stacked as (2, n)"""


def load_domain(data, domain: str, img: int) -> DomainSet:
    cases = load_cases(data, domain, LABEL_NAMES[1:])  # identity remap: label k stays k
    resized = torch.stack([whole_volume(c, img) for c in cases]).numpy()
    tasks = {}
    for t in context.TASKS:
        y = context.task_labels([c.label for c in cases], t)
        if context.usable(y):
            idx = np.array([i for i, v in enumerate(y) if v is not None])
            tasks[t] = np.stack([idx, np.array([y[i] for i in idx])])
    return DomainSet(domain, cases, resized, tasks)


@dataclass
class Split:
    train: list[int]
    test: list[int]
    x_tr: np.ndarray
    x_te: np.ndarray
    y_tr: np.ndarray
    """token labels (n_train_crops, T)"""
    y_te: np.ndarray
    crop_owner_tr: np.ndarray
    """volume rank (0..len(train)-1) of each training crop: label-efficiency subsets take whole volumes"""
    side: tuple | None = None
    """(x_tr, y_tr, x_te, y_te) of the side task's mirrored crops, None where it does not run"""


def make_split(ds: DomainSet, seed: int, img: int, patch: int, cfg: EvalConfig) -> Split:
    order = _rng(seed, 41, ds.name).permutation(len(ds.cases))
    half = len(order) // 2
    train, test = [int(i) for i in order[:half]], [int(i) for i in order[half:]]
    rng = _rng(seed, 43, ds.name)
    x_tr, l_tr = probes.crops([ds.cases[i] for i in train], img, cfg.crops_per_volume, rng)
    x_te, l_te = probes.crops([ds.cases[i] for i in test], img, cfg.crops_per_volume, rng)
    k = len(LABEL_NAMES)
    owner = np.repeat(np.arange(len(train)), cfg.crops_per_volume)
    side = None
    if cfg.side and ds.name in sides.PAIRS:
        # Own stream: adding the side task leaves the anatomy crops of round 1 unchanged.
        srng = _rng(seed, 47, ds.name)
        s_tr = sides.side_crops([ds.cases[i] for i in train], ds.name, img, cfg.crops_per_volume, patch, srng)
        s_te = sides.side_crops([ds.cases[i] for i in test], ds.name, img, cfg.crops_per_volume, patch, srng)
        if sides.usable(s_tr[1], s_te[1]):
            side = (s_tr[0], s_tr[1], s_te[0], s_te[1])
    return Split(train, test, x_tr, x_te, probes.token_labels(l_tr, patch, k), probes.token_labels(l_te, patch, k),
                 owner, side)  # fmt: skip


def _anatomy(f_tr: np.ndarray, f_te: np.ndarray, sp: Split, cfg: EvalConfig, d: str, curves: bool,
             suffix: str = "") -> dict[str, float]:  # fmt: skip
    """Token probe, kNN and the label-efficiency probes on (crops, tokens, features) arrays. `suffix`
    names a readout other than the final tokens; its kNN runs on standardized features (the layers'
    scales differ, and the cosine would otherwise follow the largest)."""
    k = len(LABEL_NAMES)
    a_tr, a_te = f_tr.reshape(-1, f_tr.shape[-1]), f_te.reshape(-1, f_te.shape[-1])
    y_tr, y_te = sp.y_tr.reshape(-1), sp.y_te.reshape(-1)
    k_tr, k_te = probes.standardize(a_tr, a_te) if suffix else (a_tr, a_te)
    out = {
        f"anatomy/{d}/probe{suffix}": probes.balanced_accuracy(probes.softmax_probe(a_tr, y_tr, a_te, k, cfg.token_l2), y_te),
        f"anatomy/{d}/knn{suffix}": probes.knn_precision(k_tr, y_tr, k_te, y_te, cfg.knn_k),
    }  # fmt: skip
    for n in cfg.efficiency if curves else []:
        if n < len(sp.train):
            keep = sp.crop_owner_tr < n  # the seed's first n training volumes
            sub, ys = f_tr[keep].reshape(-1, f_tr.shape[-1]), sp.y_tr[keep].reshape(-1)
            pred = probes.softmax_probe(sub, ys, a_te, k, cfg.token_l2)
            out[f"anatomy/{d}/probe_n{n}"] = probes.balanced_accuracy(pred, y_te)
    return out


def _side(f_tr: np.ndarray, f_te: np.ndarray, sp: Split, cfg: EvalConfig, d: str, suffix: str = "") -> dict:
    """The side task's token probe on (crops, tokens, features) of the side crops (IGNORE tokens dropped)."""
    y_tr, y_te = sp.side[1].reshape(-1), sp.side[3].reshape(-1)
    a_tr, a_te = f_tr.reshape(-1, f_tr.shape[-1])[y_tr >= 0], f_te.reshape(-1, f_te.shape[-1])[y_te >= 0]
    pred = probes.softmax_probe(a_tr, y_tr[y_tr >= 0], a_te, 2, cfg.token_l2)
    return {f"side/{d}/probe{suffix}": probes.balanced_accuracy(pred, y_te[y_te >= 0])}


def _context(feats: np.ndarray, ds: DomainSet, seed: int, cfg: EvalConfig) -> dict[str, float]:
    out = {}
    for t, (idx, y) in ds.tasks.items():
        rng = _rng(seed, 53, f"{ds.name}/{t}")
        out[f"context/{ds.name}/{t}"] = context.cv_auroc(feats[idx], y, cfg.volume_folds, cfg.volume_l2, rng)
    return out


def _finetune(blob, pretrained: bool, data, d: str, n: int, seed: int, device, steps: int) -> float:
    from .tasks import run_seg

    # The cpu_full preset's segmentation settings (feature size 8: at 4-6 the tiny UNETR never left the
    # all-background solution on pet_wholebody), with the curve's step count.
    cfg = SegConfig(domain=d, labels=SEG_LABELS[d], steps=steps, feature_size=8)
    res = run_seg(blob, cfg, data, seed=seed, pretrained=pretrained, device=device, max_train=n)
    return res["dice_mean"]


def _readouts(vit, x_tr: np.ndarray, x_te: np.ndarray, device, every_layer: bool) -> dict[str, tuple]:
    """metric suffix -> (train, test) features: the final tokens ("") and, with `every_layer`, every
    layer's tokens concatenated ("_all"), from one forward pass per crop."""
    if not every_layer:
        return {"": tuple(probes.encoder_tokens(vit, x, device) for x in (x_tr, x_te))}
    (f_tr, e_tr), (f_te, e_te) = (probes.encoder_tokens(vit, x, device, layers=True) for x in (x_tr, x_te))
    return {"": (f_tr, f_te), "_all": (e_tr, e_te)}


def _score(
    vit, ds: DomainSet, sp: Split, seed: int, cfg: EvalConfig, device, curves: bool
) -> dict[str, float]:
    """Every frozen-encoder metric of one encoder on one domain and seed."""
    d, out = ds.name, {}
    for sfx, (tr, te) in _readouts(vit, sp.x_tr, sp.x_te, device, cfg.every_layer).items():
        out.update(_anatomy(tr, te, sp, cfg, d, curves and not sfx, sfx))  # curves: final tokens only
    if sp.side:
        for sfx, (tr, te) in _readouts(vit, sp.side[0], sp.side[2], device, cfg.every_layer).items():
            out.update(_side(tr, te, sp, cfg, d, sfx))
    vol = probes.encoder_tokens(vit, ds.resized, device)
    out.update(_context(vol.reshape(len(vol), -1), ds, seed, cfg))
    return out


def _per_domain(b) -> bool:
    """Whether encoder entry `b` is a {domain: blob} (an encoder blob itself has a state_dict)."""
    return isinstance(b, dict) and "state_dict" not in b


def _for(b, d: str):
    """The blob of encoder entry `b` for domain `d` (an entry is one blob, a {domain: blob} or None)."""
    return b.get(d) if _per_domain(b) else b


def evaluate(encoders: dict[str, dict | None], data, cfg: EvalConfig, seeds: int, *, control: str | None = None,
             log=None) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """encoders: name -> encoder blob, {domain: blob} (one encoder per domain, e.g. the target-domain
    control) or None (a random encoder of `control`'s architecture, re-drawn per seed). Returns
    values[name][metric] (one value per seed) including INTENSITY, the baseline."""
    if cfg.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(cfg.threads)
        # numpy's BLAS too (the volume probe's SVD and Newton steps): with its default of one thread per
        # core, a second busy process made the context tasks 8x slower (8.3 s vs < 1 s per encoder).
        with threadpool_limits(cfg.threads):
            return _evaluate(encoders, data, cfg, seeds, control=control, log=log)
    return _evaluate(encoders, data, cfg, seeds, control=control, log=log)


def _evaluate(
    encoders, data, cfg: EvalConfig, seeds: int, *, control, log
) -> dict[str, dict[str, list[float]]]:
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    ref = encoders[control] if control else next(b for b in encoders.values() if b is not None)
    if _per_domain(ref):
        ref = next(iter(ref.values()))
    kw = ref["monai_vit_kwargs"]
    img, patch = int(np.atleast_1d(kw["img_size"])[0]), int(np.atleast_1d(kw["patch_size"])[0])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    domains = cfg.domains or _labelled_domains(data)
    missing = [
        f"{n}: {d}" for n, b in encoders.items() if b is not None for d in domains if _for(b, d) is None
    ]
    if missing:
        raise ValueError(f"no encoder for the domain ({', '.join(missing)}): give one per probed domain")
    sets = {d: load_domain(data, d, img) for d in domains}
    fixed = {(n, d): build_vit(_for(b, d)) for n, b in encoders.items() if b is not None for d in domains}
    values: dict[str, dict[str, list[float]]] = {n: {} for n in [INTENSITY, *encoders]}
    t0 = time.perf_counter()

    def add(name, metrics):
        for k, v in metrics.items():
            values[name].setdefault(k, []).append(float(v))

    for seed in range(seeds):
        torch.manual_seed(seed)
        rand = {n: build_vit(ref, pretrained=False) for n, b in encoders.items() if b is None}
        for d, ds in sets.items():
            sp = make_split(ds, seed, img, patch, cfg)
            stats = probes.patch_stats(sp.x_tr, patch), probes.patch_stats(sp.x_te, patch)
            add(INTENSITY, _anatomy(*stats, sp, cfg, d, curves=True))
            if sp.side:
                add(
                    INTENSITY,
                    _side(
                        probes.patch_stats(sp.side[0], patch),
                        probes.patch_stats(sp.side[2], patch),
                        sp,
                        cfg,
                        d,
                    ),
                )
            add(INTENSITY, _context(context.global_stats(ds.resized), ds, seed, cfg))
            for n in encoders:
                vit = rand[n] if n in rand else fixed[(n, d)]
                add(n, _score(vit, ds, sp, seed, cfg, device, curves=n in cfg.curve_encoders))
            say(f"seed {seed} {d}: probes of {len(encoders)} encoders ({time.perf_counter() - t0:.0f} s)")
        if cfg.finetune_steps:
            for d in [d for d in cfg.finetune_domains if d in sets and d in SEG_LABELS]:
                for n in [n for n in cfg.curve_encoders if n in encoders]:
                    blob = _for(encoders[n], d) if encoders[n] is not None else ref
                    for k in cfg.efficiency:
                        dice = _finetune(
                            blob, encoders[n] is not None, data, d, k, seed, device, cfg.finetune_steps
                        )
                        add(n, {f"finetune/{d}/dice_n{k}": dice})
                say(f"seed {seed} {d}: fine-tuning curves ({time.perf_counter() - t0:.0f} s)")
    return values  # fmt: skip


def _labelled_domains(data) -> list[str]:
    from voxmix.formats.labels import read_labels
    from voxmix.formats.manifest import read_manifest

    manifest = read_manifest(data)
    labels = read_labels(manifest.root)
    return [d for d in manifest.domains() if any(r.id in labels.records for r in manifest.select(domain=d))]


def config_json(cfg: EvalConfig) -> dict:
    return asdict(cfg)
