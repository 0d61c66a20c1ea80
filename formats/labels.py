"""Labels for downstream tasks, `voxmix.labels/1` (docs/formats.md): `labels.jsonl` next to an ingested
manifest, and `labels/<id>.npy` label maps. Written by `python -m trainer.downstream.labels` (which puts
label maps on the ingest grid), read by the downstream tasks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError
from .io import atomic_write_text, jsonl_values

FORMAT = "voxmix.labels/1"
FILENAME = "labels.jsonl"


class LabelsError(FormatError):
    """Bad labels input or file; the message names the file, line and field."""


@dataclass(frozen=True, kw_only=True)
class LabelRecord:
    id: str
    """Manifest record id."""
    labels: str | None = None
    """POSIX path (relative to the manifest's folder) of a uint8 `.npy` label map of the record's shape."""
    classes: dict[str, int] = field(default_factory=dict)
    """Class labels of the whole volume, e.g. {"lesion": 1}."""


@dataclass(frozen=True, kw_only=True)
class Labels:
    root: Path
    names: list[str]
    """Name of each label value (index = value) of the label maps."""
    records: dict[str, LabelRecord]
    header: dict[str, Any] = field(default_factory=dict)
    """The header line (format, label_names, and the `index` the file was written from)."""

    def label_path(self, rid: str) -> Path:
        rec = self.records.get(rid)
        if rec is None or rec.labels is None:
            raise LabelsError(f"{self.root / FILENAME}: record {rid!r} has no label map")
        return self.root / rec.labels

    def label_map(self, rid: str) -> np.ndarray:
        """The label map as a read-only memory map. The `.npy` is never unpickled (allow_pickle=False);
        readers that know the expected shape check the header first (trainer/downstream/data.py)."""
        path = self.label_path(rid)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise LabelsError(f"{path}: label map of record {rid!r} not found; {self.rewrite}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise LabelsError(
                f"{path}: unreadable label map of record {rid!r} ({exc}); {self.rewrite}"
            ) from None

    @property
    def rewrite(self) -> str:
        """What to run to rebuild the label maps (from the index named in the header, when it is)."""
        index = self.header.get("index") or "INDEX.jsonl"
        return f"rewrite them with `python -m trainer.downstream.labels --data {self.root} --index {index}`"

    def label_id(self, name: str) -> int:
        if name not in self.names:
            raise LabelsError(f"{self.root / FILENAME}: label {name!r} not in label_names {self.names}")
        return self.names.index(name)


def read_labels(data_dir: str | os.PathLike) -> Labels:
    path = Path(data_dir) / FILENAME
    if not path.exists():
        raise LabelsError(f"{path}: file not found (write it with `python -m trainer.downstream.labels`)")
    values = jsonl_values(path, LabelsError)
    _, header = next(values, (1, None))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else header
        raise LabelsError(f"{path}: line 1: field 'format' is {got!r}, expected {FORMAT!r}")
    names = header.get("label_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LabelsError(f"{path}: line 1: field 'label_names' must be a list of strings")
    records: dict[str, LabelRecord] = {}
    for no, obj in values:
        rid = obj.get("id") if isinstance(obj, dict) else None
        if not isinstance(rid, str):
            raise LabelsError(f"{path}: line {no}: field 'id' missing or not a string")
        lab = obj.get("labels")
        if lab is not None and (not isinstance(lab, str) or lab.startswith("/") or ".." in lab.split("/")):
            raise LabelsError(f"{path}: line {no}: field 'labels' must be a relative path, got {lab!r}")
        classes = obj.get("classes", {})
        if not isinstance(classes, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in classes.values()
        ):
            raise LabelsError(f"{path}: line {no}: field 'classes' must map names to integers")
        if rid in records:
            raise LabelsError(f"{path}: line {no}: duplicate id {rid!r}")
        records[rid] = LabelRecord(id=rid, labels=lab, classes=classes)
    return Labels(root=path.parent, names=names, records=records, header=header)


def write_labels_file(
    data_dir: str | os.PathLike, names: list[str], rows: list[dict[str, Any]], **header
) -> Path:
    """Write `labels.jsonl` atomically: the header (format, label_names, extra fields), then one row per
    record ({"id", "classes", optional "labels"}); the label maps themselves are written by the caller."""
    lines = [json.dumps({"format": FORMAT, "label_names": list(names), **header})]
    lines += [json.dumps(r, sort_keys=True) for r in rows]
    return atomic_write_text(Path(data_dir) / FILENAME, "\n".join(lines) + "\n")
