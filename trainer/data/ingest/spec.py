r"""The ingest spec (YAML): which files make which domain, and how to preprocess them.

    defaults: {spacing: [1.5, 1.5, 1.5], val_fraction: 0.1}
    domains:
      ct_abdomen:
        modality: CT
        sources: ["msd/Task03_Liver/imagesTr/*.nii.gz", "hospital/ct_abdomen/",
                  {nnunet: nnUNet_raw/Dataset003_Liver, channel: 0}]
        window: [-1000, 1000]
        subject: 'liver_(?P<subject>\d+)'
      mri_brain:
        modality: MRI
        sources: [{nnssl: openmind/pretrain_data.json, modalities: [T1w]}]

Relative sources are relative to the spec file's folder. Every field is validated here and a bad one
names the domain and field (the CLI exits 2). The dataset files themselves are read by sources.py.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

FORMAT = "voxmix.dataset/1"
MODALITIES = ("CT", "MRI", "PET")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """A bad spec; the message names the file, domain and field."""


DATASET_KINDS = {"nnunet": ("channel",), "nnssl": ("modalities", "datasets")}


@dataclass(frozen=True, kw_only=True)
class DatasetSource:
    """A `sources` entry naming a dataset file instead of a glob (read by sources.py)."""

    kind: str
    """`nnunet` (nnU-Net v2 dataset folder or its dataset.json) or `nnssl` (a pretrain_data.json)."""
    path: str
    """As written in the spec (relative to the spec's folder)."""
    channel: int | str | None = None
    """nnunet: channel index or name from `channel_names`; None: the only channel."""
    modalities: tuple[str, ...] | None = None
    """nnssl: keep only images whose `modality` is one of these; None: all."""
    datasets: tuple[str, ...] | None = None
    """nnssl: keep only these datasets (keys of `datasets`); None: all."""

    def __str__(self) -> str:
        return f"{{{self.kind}: {self.path}}}"


def _dataset_source(where: str, entry: dict) -> DatasetSource:
    kinds = [k for k in DATASET_KINDS if k in entry]
    if len(kinds) != 1:
        raise SpecError(
            f"{where}: a mapping needs exactly one of {sorted(DATASET_KINDS)} "
            f"(e.g. {{nnunet: nnUNet_raw/Dataset001_X, channel: 0}}), got keys {sorted(entry)}"
        )
    kind = kinds[0]
    unknown = set(entry) - {kind, *DATASET_KINDS[kind]}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)} for a {kind} source")
    path = entry[kind]
    if not isinstance(path, str) or not path:
        raise SpecError(f"{where}: {kind!r} must be a path, got {path!r}")
    channel = entry.get("channel")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, (int, str))):
        raise SpecError(f"{where}: 'channel' must be a channel index or name, got {channel!r}")
    lists = {}
    for key in ("modalities", "datasets"):
        v = entry.get(key)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            v = [v]
        if v is not None and (
            not isinstance(v, list) or not v or not all(isinstance(x, (str, int)) for x in v)
        ):
            raise SpecError(f"{where}: {key!r} must be a non-empty list of names, got {v!r}")
        lists[key] = None if v is None else tuple(str(x) for x in v)
    return DatasetSource(kind=kind, path=path, channel=channel, **lists)


@dataclass(kw_only=True)
class DomainSpec:
    name: str
    """Domain name used in the manifest and the allocation (letters, digits, `_ . -`)."""
    modality: str
    """CT, MRI or PET: chooses the intensity normalization."""
    sources: list[str | DatasetSource]
    """Globs (`**` recurses), files, or folders (searched recursively; DICOM grouped by series), or
    dataset files: `{nnunet: FOLDER, channel: 0}` (nnU-Net v2 dataset.json), `{nnssl: FILE}`."""
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    """Target voxel size in mm (RAS axes); `null` keeps each volume's own spacing."""
    window: tuple[float, float] = (-1000.0, 1000.0)
    """CT: HU window mapped to [0, 1] (values outside are clipped)."""
    percentiles: tuple[float, float] = (0.5, 99.5)
    """MRI and PET without SUV: foreground percentiles mapped to [0, 1]."""
    suv_max: float = 10.0
    """PET with SUV metadata: SUV in [0, suv_max] mapped to [0, 1]."""
    val_fraction: float = 0.1
    """Share of volumes in the validation split (by hash of the subject, else of the source checksum)."""
    subject: str | None = None
    """Regular expression searched in each source's name (as the manifest writes it); its group
    `subject` (else group 1, else the whole match) is the volume's subject, which overrides a dataset
    file's. Volumes of one subject share a split. None: the dataset file's subject, if any."""
    min_size: int = 16
    """Smallest allowed extent (voxels) on every axis after resampling and cropping."""
    margin: int = 2
    """Voxels kept around the foreground box."""
    dtype: str = "float16"

    def __post_init__(self) -> None:
        where = f"domain {self.name!r}"
        self._check_what(where)
        self._check_intensity(where)
        self._check_sizes(where)

    def _check_what(self, where: str) -> None:
        """Check name, modality and sources (a single source string becomes a list)."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SpecError(f"{where}: name must be letters, digits, '_', '.', '-'")
        if self.modality not in MODALITIES:
            raise SpecError(f"{where}: field 'modality' must be one of {MODALITIES}, got {self.modality!r}")
        if isinstance(self.sources, (str, dict)):
            self.sources = [self.sources]
        if not isinstance(self.sources, list) or not self.sources:
            raise SpecError(f"{where}: field 'sources' must be a non-empty list of globs or folders")
        out: list[str | DatasetSource] = []
        for i, s in enumerate(self.sources):
            if isinstance(s, dict):
                s = _dataset_source(f"{where}: field 'sources' entry {i}", s)
            elif not isinstance(s, (str, DatasetSource)):
                raise SpecError(
                    f"{where}: field 'sources' entry {i} must be a glob, a folder or "
                    f"{{nnunet: ...}} / {{nnssl: ...}}, got {s!r}"
                )
            out.append(s)
        self.sources = out
        if self.subject is not None:
            _check_subject(where, self.subject)

    def _check_intensity(self, where: str) -> None:
        """Check spacing, window, percentiles and suv_max (number lists become float tuples)."""
        if self.spacing is not None:
            self.spacing = _floats(where, "spacing", self.spacing, 3, positive=True)
        self.window = _floats(where, "window", self.window, 2)
        if not self.window[0] < self.window[1]:
            raise SpecError(
                f"{where}: field 'window' must be [low, high] with low < high, got {list(self.window)}"
            )
        self.percentiles = _floats(where, "percentiles", self.percentiles, 2)
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise SpecError(f"{where}: field 'percentiles' must satisfy 0 <= low < high <= 100")
        if not isinstance(self.suv_max, (int, float)) or not self.suv_max > 0:
            raise SpecError(f"{where}: field 'suv_max' must be > 0, got {self.suv_max!r}")

    def _check_sizes(self, where: str) -> None:
        """Check val_fraction, min_size, margin and dtype."""
        vf = self.val_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
            raise SpecError(f"{where}: field 'val_fraction' must be in [0, 1), got {vf!r}")
        for key in ("min_size", "margin"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "min_size" else 0):
                raise SpecError(f"{where}: field {key!r} must be a non-negative integer, got {v!r}")
        if self.dtype not in ("float16", "float32"):
            raise SpecError(f"{where}: field 'dtype' must be float16 or float32, got {self.dtype!r}")


def _check_subject(where: str, pattern: Any) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise SpecError(f"{where}: field 'subject' must be a regular expression, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise SpecError(
            f"{where}: field 'subject' is not a valid regular expression {pattern!r}: {exc}"
        ) from None


def _floats(where: str, key: str, value: Any, n: int, positive: bool = False) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and n == 3:
        value = [value] * 3
    ok = isinstance(value, (list, tuple)) and len(value) == n
    ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if ok and positive:
        ok = all(v > 0 for v in value)
    if not ok:
        raise SpecError(
            f"{where}: field {key!r} must be {n} finite{' positive' if positive else ''} numbers, got {value!r}"
        )
    return tuple(float(v) for v in value)


@dataclass(kw_only=True)
class Spec:
    path: Path
    domains: list[DomainSpec] = field(default_factory=list)

    @property
    def base(self) -> Path:
        return self.path.parent


_DOMAIN_KEYS = {f.name for f in fields(DomainSpec)} - {"name"}


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML: {exc}") from None


def _top_level(path: Path, raw: Any) -> tuple[dict, dict]:
    """The spec's checked top level: (defaults, domains)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with 'domains'")
    unknown = set(raw) - {"format", "defaults", "domains"}
    if unknown:
        raise SpecError(f"{path}: unknown top-level field(s) {sorted(unknown)}")
    if raw.get("format", FORMAT) != FORMAT:
        raise SpecError(f"{path}: field 'format' must be {FORMAT!r}, got {raw['format']!r}")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - _DOMAIN_KEYS:
        bad = sorted(set(defaults) - _DOMAIN_KEYS) if isinstance(defaults, dict) else defaults
        raise SpecError(f"{path}: field 'defaults' has unknown keys {bad}")
    doms = raw.get("domains")
    if not isinstance(doms, dict) or not doms:
        raise SpecError(f"{path}: field 'domains' must be a non-empty mapping of name -> settings")
    return defaults, doms


def _domain(path: Path, name: Any, body: Any, defaults: dict) -> DomainSpec:
    if not isinstance(body, dict):
        raise SpecError(f"{path}: domain {name!r}: expected a mapping")
    unknown = set(body) - _DOMAIN_KEYS
    if unknown:
        raise SpecError(f"{path}: domain {name!r}: unknown field(s) {sorted(unknown)}")
    try:
        return DomainSpec(name=str(name), **{**defaults, **body})
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except TypeError as exc:
        raise SpecError(f"{path}: domain {name!r}: {exc}") from None


def load_spec(path: str | os.PathLike) -> Spec:
    path = Path(path)
    defaults, doms = _top_level(path, _read_yaml(path))
    out = [_domain(path, name, body, defaults) for name, body in doms.items()]
    return Spec(path=path.resolve(), domains=out)
