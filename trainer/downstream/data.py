"""Labelled volumes of one domain in memory (downstream sets are small) and the crops drawn from them.

`check_data` runs every check of the inputs before any training (the commands call it up front): the
manifest and labels.jsonl, the labelled volumes each task needs, and the header of every volume and
label map it will read (shape, dtype, size; nothing is unpickled). `load_cases` reads them afterwards
through the same checked reader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from voxmix.formats.labels import FILENAME, Labels, LabelsError, read_labels
from voxmix.formats.manifest import Manifest, VolumeRecord, read_manifest
from voxmix.trainer.data.volumes import VolumeError, check_volume, check_volumes, listing, open_volume

# Bad label maps listed in one error; the rest are counted.
_LIST_AT_MOST = 10


@dataclass
class Case:
    id: str
    split: str
    image: np.ndarray
    """float32 (D, H, W) in [0, 1]"""
    label: np.ndarray | None
    """uint8 (D, H, W) class indices 0..K (remapped) or None"""
    classes: dict[str, int]


def _label_record(rec: VolumeRecord) -> VolumeRecord:
    """What a label map must be: its volume's shape, in uint8."""
    return dataclasses.replace(rec, dtype="uint8")


def _labelled(manifest: Manifest, labels: Labels, domain: str, seg: bool) -> list[VolumeRecord]:
    out = [r for r in manifest.select(domain=domain) if r.id in labels.records]
    if seg:
        out = [r for r in out if labels.records[r.id].labels is not None]
    if not out:
        raise ValueError(
            f"{manifest.root}: domain {domain!r} has no labelled volumes "
            f"(domains in the manifest: {manifest.domains()})"
        )
    return out


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
    for rec in _labelled(manifest, labels, domain, seg=lut is not None):
        lab = labels.records[rec.id]
        seg = None
        if lut is not None:
            seg = lut[np.asarray(open_volume(labels.label_path(rec.id), _label_record(rec)))]
        image = np.asarray(open_volume(manifest.abspath(rec), rec), dtype=np.float32)
        cases.append(Case(rec.id, rec.split, image, seg, dict(lab.classes)))
    return cases


def check_data(data_dir, cfg, task: str) -> None:
    """Everything the tasks of `cfg` selected by `task` (seg, cls, all) will read is there and sound:
    raises ValueError (ManifestError, LabelsError, VolumeError) naming the file and the fix."""
    manifest = read_manifest(data_dir)
    labels = read_labels(manifest.root)
    images: dict[str, VolumeRecord] = {}
    maps: dict[str, VolumeRecord] = {}
    for s in cfg.seg if task in ("seg", "all") else []:
        for name in s.labels:
            labels.label_id(name)
        recs = _labelled(manifest, labels, s.domain, seg=True)
        n_train = sum(r.split == "train" for r in recs)
        if not n_train or n_train == len(recs):
            raise ValueError(
                f"{manifest.root}: domain {s.domain!r} needs labelled train and val volumes "
                f"(has {n_train} train, {len(recs) - n_train} val)"
            )
        images.update((r.id, r) for r in recs)
        maps.update((r.id, r) for r in recs)
    for c in cfg.cls if task in ("cls", "all") else []:
        recs = [
            r
            for r in _labelled(manifest, labels, c.domain, seg=False)
            if c.target in labels.records[r.id].classes
        ]
        y = [labels.records[r.id].classes[c.target] for r in recs]
        if not set(y) <= {0, 1}:
            raise LabelsError(f"{labels.root / FILENAME}: classes.{c.target} of domain {c.domain!r} "
                              f"must be 0 or 1, found {sorted(set(y))}")  # fmt: skip
        if min(y.count(0), y.count(1)) < 2:
            raise ValueError(f"{manifest.root}: domain {c.domain!r} target {c.target!r} needs >= 2 volumes of "
                             f"each class, has {y.count(0)} of 0 and {y.count(1)} of 1")  # fmt: skip
        images.update((r.id, r) for r in recs)
    check_volumes(manifest, images.values(), purpose="the downstream tasks")
    _check_label_maps(labels, list(maps.values()))


def _check_label_maps(labels: Labels, recs: list[VolumeRecord]) -> None:
    bad = []
    for rec in recs:
        try:
            check_volume(labels.label_path(rec.id), _label_record(rec))
        except VolumeError as exc:
            bad.append(f"id {rec.id!r}: {exc}")  # "the manifest says": its volume's shape, in uint8
    if bad:
        raise LabelsError(
            f"{labels.root / FILENAME}: {len(bad)} of the {len(recs)} label maps the downstream tasks read "
            f"are missing, corrupt or not uint8 of their volume's shape; {labels.rewrite}:"
            + listing(bad, _LIST_AT_MOST)
        )


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
