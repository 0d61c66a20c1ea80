"""Labelled volumes of one domain in memory (downstream sets are small) and the crops drawn from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from voxmix.formats.labels import read_labels
from voxmix.formats.manifest import read_manifest


@dataclass
class Case:
    id: str
    split: str
    image: np.ndarray
    """float32 (D, H, W) in [0, 1]"""
    label: np.ndarray | None
    """uint8 (D, H, W) class indices 0..K (remapped) or None"""
    classes: dict[str, int]


def load_cases(data_dir, domain: str, seg_labels: list[str] | None = None) -> list[Case]:
    """Every volume of `domain` that has a labels.jsonl record; label maps remapped to 0..K when
    `seg_labels` is given (label `seg_labels[i]` -> i + 1, everything else -> 0)."""
    manifest = read_manifest(data_dir)
    labels = read_labels(manifest.root)
    lut = None
    if seg_labels is not None:
        lut = np.zeros(256, dtype=np.uint8)
        for i, name in enumerate(seg_labels):
            lut[labels.label_id(name)] = i + 1
    cases = []
    for rec in manifest.select(domain=domain):
        lab = labels.records.get(rec.id)
        if lab is None:
            continue
        seg = None
        if lut is not None:
            if lab.labels is None:
                continue
            seg = lut[np.asarray(labels.label_map(rec.id))]
        image = np.asarray(np.load(manifest.abspath(rec), mmap_mode="r"), dtype=np.float32)
        cases.append(Case(rec.id, rec.split, image, seg, dict(lab.classes)))
    if not cases:
        raise ValueError(
            f"{manifest.root}: domain {domain!r} has no labelled volumes "
            f"(domains in the manifest: {manifest.domains()})"
        )
    return cases


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, max(0, size - n)) for n in a.shape]
    return np.pad(a, pad) if any(p[1] for p in pad) else a


def sample_crop(case: Case, size: int, rng: np.random.Generator, fg_prob: float):
    """(image, label) crops of edge `size`: centred on a random labelled voxel with probability
    `fg_prob` (organs are small at 64^3: uniform crops would mostly teach background), else uniform.
    Volumes smaller than `size` are zero-padded (zero is background after ingest)."""
    img, lab = _pad_to(case.image, size), _pad_to(case.label, size)
    starts = []
    fg = np.flatnonzero(lab) if rng.random() < fg_prob else np.empty(0)
    if fg.size:
        centre = np.unravel_index(fg[rng.integers(fg.size)], lab.shape)
        starts = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, lab.shape)]
    else:
        starts = [int(rng.integers(0, n - size + 1)) for n in lab.shape]
    sl = tuple(slice(s, s + size) for s in starts)
    return img[sl], lab[sl]


def seg_batch(cases: list[Case], size: int, batch: int, rng: np.random.Generator, fg_prob: float):
    xs, ys = [], []
    for _ in range(batch):
        x, y = sample_crop(cases[int(rng.integers(len(cases)))], size, rng, fg_prob)
        xs.append(x)
        ys.append(y)
    x = torch.from_numpy(np.stack(xs)[:, None].copy())
    y = torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))
    return x, y


def whole_volume(case: Case, size: int) -> torch.Tensor:
    """The whole volume resized (trilinear) to size^3: the classifier's input, (1, size, size, size)."""
    x = torch.from_numpy(case.image)[None, None]
    return F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)[0]
