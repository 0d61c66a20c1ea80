"""Spec sources -> the items to ingest, each with its subject (docs/data.md, "Sources").

Three kinds of `sources` entry:
- a glob, file or folder (readers.discover): no subject unless the domain's `subject` pattern gives one;
- `{nnunet: FOLDER, channel: C}`: an nnU-Net v2 raw dataset: `FOLDER/dataset.json` (`channel_names`,
  `file_ending`) with `imagesTr/{case}_{CCCC}{file_ending}`, or the file's optional `dataset` mapping
  (case -> {"images": [one path per channel], "label": ...}, relative to FOLDER). Only training images
  are read: imagesTs is the downstream test set, and pretraining on it would leak. Subject: the case;
- `{nnssl: FILE}`: an nnssl `pretrain_data.json` (a Collection: datasets -> subjects -> sessions ->
  images, as MIC-DKFZ/nnssl's `src/nnssl/data/raw_dataset.py` writes it). Subject: dataset/subject id,
  since nnssl subject ids are unique only within a dataset.

A malformed dataset file is a DatasetFileError (a SpecError: exit 2, before any work) naming the file
and the field; an image the file lists but the disk lacks is an ordinary failure (failures.jsonl).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import ITK, NIFTI, Item, discover, source_name
from .spec import DatasetSource, DomainSpec, Spec, SpecError


class DatasetFileError(SpecError):
    """A malformed nnU-Net dataset.json or nnssl pretrain_data.json; the message names file and field."""


@dataclass(frozen=True, kw_only=True)
class Found:
    item: Item
    subject: str | None


def expand(entry: str | DatasetSource, base: Path) -> list[Found]:
    """The items of one `sources` entry, in a fixed order, with the subject the entry gives."""
    if isinstance(entry, str):
        return [Found(item=it, subject=None) for it in discover(entry, base)]
    path = _resolve(entry.path, base)
    if entry.kind == "nnunet":
        listed = read_nnunet(path, entry.channel)
    else:
        listed = read_nnssl(path, modalities=entry.modalities, datasets=entry.datasets)
    out: list[Found] = []
    for file, subject in listed:
        if os.path.lexists(file):
            # Escaped: a listed name is a file name, never a pattern ("scan[1].nii.gz").
            out += [Found(item=it, subject=subject) for it in discover(glob.escape(str(file)), base)]
        else:
            error = f"not found (listed in {_json_file(path, entry.kind)})"
            out.append(
                Found(
                    item=Item(source=source_name(file, base), kind="bad", files=[file], error=error),
                    subject=subject,
                )
            )
    return out


def source_jobs(spec: Spec) -> list[tuple[Item, DomainSpec, str | None]]:
    """Every source of every domain, once per domain, in spec and discovery order, with its subject.

    A domain whose sources match nothing is a SpecError (exit 2), even when other domains match: it is
    found before any work, and a domain silently missing from the manifest would only surface at
    training. So is a `subject` pattern that misses a source (its volume's split would be by file, the
    leak the pattern is there to prevent). A single source matching nothing in a domain that has others
    is a warning."""
    jobs: list[tuple[Item, DomainSpec, str | None]] = []
    empty: list[str] = []
    for d in spec.domains:
        seen: set[str] = set()
        unmatched: list[str] = []
        pattern = re.compile(d.subject) if d.subject else None
        missed: list[str] = []
        for entry in d.sources:
            found = expand(entry, spec.base)
            if not found:
                unmatched.append(describe(entry, spec.base))
            for f in found:
                if f.item.source in seen:
                    continue
                seen.add(f.item.source)
                subject = f.subject
                if pattern is not None:
                    subject = subject_of(pattern, f.item.source)
                    if subject is None:
                        missed.append(f.item.source)
                jobs.append((f.item, d, subject))
        if missed:
            shown = ", ".join(repr(m) for m in missed[:3]) + (
                f" and {len(missed) - 3} more" if len(missed) > 3 else ""
            )
            empty.append(
                f"domain {d.name!r}: field 'subject' pattern {d.subject!r} finds no subject in {shown}"
            )
        looked = ", ".join(unmatched)
        if not seen:
            empty.append(f"domain {d.name!r}: field 'sources' matched no volume: {looked}")
        elif unmatched:
            print(
                f"warning: {spec.path}: domain {d.name!r}: source {looked} matched no volume", file=sys.stderr
            )
    if empty:
        raise SpecError(
            f"{spec.path}: "
            + "; ".join(empty)
            + ". Fix the glob, folder, dataset file or pattern (relative sources are relative to the "
            "spec's folder), or remove the domain"
        )
    return jobs


def describe(entry: str | DatasetSource, base: Path) -> str:
    """How an entry is named in 'matched no volume' messages."""
    if isinstance(entry, str):
        return f"{entry!r} (looked for {entry if os.path.isabs(entry) else base / entry})"
    filters = {k: list(v) for k, v in (("modalities", entry.modalities), ("datasets", entry.datasets)) if v}
    return (
        f"{entry} ({_json_file(_resolve(entry.path, base), entry.kind)}{f', {filters}' if filters else ''})"
    )


def subject_of(pattern: re.Pattern[str], source: str) -> str | None:
    """The subject that `pattern` finds in a source name: group `subject`, else group 1, else the match."""
    m = pattern.search(source)
    if m is None:
        return None
    if "subject" in pattern.groupindex:
        got = m.group("subject")
    else:
        got = m.group(1) if pattern.groups else m.group(0)
    return got or None


def _resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else base / p


def _json_file(path: Path, kind: str) -> Path:
    return path / "dataset.json" if kind == "nnunet" and path.suffix != ".json" else path


def _load_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFileError(f"{file}: file not found (the {what} source names it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFileError(f"{file}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetFileError(f"{file}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def _mapping(file: Path, where: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise DatasetFileError(f"{file}: {where} must be an object, got {type(v).__name__}")
    return v


def _expand_path(file: Path, where: str, v: Any, folder: Path) -> Path:
    """A listed path: `$VAR` expanded (as nnU-Net and nnssl do), relative to `folder`."""
    if not isinstance(v, str) or not v:
        raise DatasetFileError(f"{file}: {where} must be a non-empty path string, got {v!r}")
    p = os.path.expandvars(v)
    unset = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", p)
    if unset:
        raise DatasetFileError(
            f"{file}: {where} {v!r} uses ${unset.group(1)}, which is not set in the environment"
        )
    p = Path(p)
    return p if p.is_absolute() else folder / p


# --- nnU-Net v2 ---------------------------------------------------------------------------------------


def read_nnunet(path: Path, channel: int | str | None) -> list[tuple[Path, str]]:
    """(image file of `channel`, subject "<dataset folder>/<case>") per training case, sorted by case."""
    file = _json_file(path, "nnunet")
    folder = file.parent
    obj = _mapping(file, "the top level", _load_json(file, "nnunet"))
    ending = obj.get("file_ending")
    if ending not in NIFTI + ITK:
        raise DatasetFileError(
            f"{file}: field 'file_ending' must be one of {list(NIFTI + ITK)} (3D formats voxmix reads), got {ending!r}"
        )
    index = _channel(file, obj.get("channel_names"), channel)
    if "dataset" in obj:
        cases = _listed_cases(file, _mapping(file, "field 'dataset'", obj["dataset"]), index, folder)
    else:
        cases = _images_tr(file, folder / "imagesTr", ending, index)
    n = obj.get("numTraining")
    if isinstance(n, int) and n != len(cases):
        print(
            f"warning: {file}: field 'numTraining' is {n}, but {len(cases)} cases were found", file=sys.stderr
        )
    return [(img, f"{folder.name}/{case}") for case, img in sorted(cases.items())]


def _channel(file: Path, names: Any, channel: int | str | None) -> int:
    if not isinstance(names, dict) or not names:
        raise DatasetFileError(
            f'{file}: field \'channel_names\' must be a non-empty object {{"0": "CT", ...}}'
        )
    if not all(isinstance(k, str) and k.isdigit() for k in names):
        raise DatasetFileError(
            f"{file}: field 'channel_names' keys must be channel indices, got {sorted(names)}"
        )
    by_index = {int(k): str(v) for k, v in names.items()}
    listing = ", ".join(f"{k}: {v}" for k, v in sorted(by_index.items()))
    if channel is None:
        if len(by_index) > 1:
            raise DatasetFileError(
                f"{file}: {len(by_index)} channels ({listing}): set 'channel' in the spec's nnunet source"
            )
        return next(iter(by_index))
    if isinstance(channel, int) and channel in by_index:
        return channel
    hits = [k for k, v in by_index.items() if v == channel]
    if isinstance(channel, str) and len(hits) == 1:
        return hits[0]
    raise DatasetFileError(f"{file}: field 'channel_names' has no single channel {channel!r} ({listing})")


def _images_tr(file: Path, images: Path, ending: str, index: int) -> dict[str, Path]:
    if not images.is_dir():
        raise DatasetFileError(
            f"{file}: no imagesTr folder at {images} (and no 'dataset' field listing the images)"
        )
    name = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    cases: set[str] = set()
    for f in sorted(os.listdir(images)):
        if not f.endswith(ending) or f.startswith("."):
            continue
        m = name.fullmatch(f)
        if m is None:
            raise DatasetFileError(
                f"{file}: imagesTr/{f} does not follow nnU-Net's {{case}}_{{XXXX}}{ending} naming (XXXX: 4-digit channel)"
            )
        cases.add(m.group(1))
    # A case without this channel's file stays listed: ingest reports it as 'not found'.
    return {c: images / f"{c}_{index:04d}{ending}" for c in cases}


def _listed_cases(file: Path, dataset: dict, index: int, folder: Path) -> dict[str, Path]:
    out = {}
    for case, body in dataset.items():
        where = f"dataset[{case!r}]"
        imgs = _mapping(file, where, body).get("images")
        if not isinstance(imgs, list) or len(imgs) <= index:
            raise DatasetFileError(
                f"{file}: {where}.images must be a list with an entry for channel {index}, got {imgs!r}"
            )
        out[str(case)] = _expand_path(file, f"{where}.images[{index}]", imgs[index], folder)
    return out


# --- nnssl ----------------------------------------------------------------------------------------------


def read_nnssl(
    file: Path, *, modalities: tuple[str, ...] | None = None, datasets: tuple[str, ...] | None = None
) -> list[tuple[Path, str]]:
    """(image path, subject "<dataset_index>/<subject_id>") of every image of a pretrain_data.json, in the
    file's order, filtered by dataset key or index and by image modality."""
    obj = _mapping(file, "the top level", _load_json(file, "nnssl"))
    if "datasets" not in obj:
        raise DatasetFileError(
            f"{file}: missing field 'datasets' (an nnssl pretrain_data.json is a Collection)"
        )
    all_ds = _mapping(file, "field 'datasets'", obj["datasets"])
    out: list[tuple[Path, str]] = []
    for dkey, ds in all_ds.items():
        where = f"datasets[{dkey!r}]"
        ds = _mapping(file, where, ds)
        dindex = str(ds.get("dataset_index", dkey))
        if datasets is not None and str(dkey) not in datasets and dindex not in datasets:
            continue
        subjects = _mapping(file, f"{where}.subjects", ds.get("subjects"))
        for skey, subj in subjects.items():
            sw = f"{where}.subjects[{skey!r}]"
            sessions = _mapping(file, f"{sw}.sessions", _mapping(file, sw, subj).get("sessions"))
            for sess_key, sess in sessions.items():
                images = _mapping(file, f"{sw}.sessions[{sess_key!r}]", sess).get("images")
                iw = f"{sw}.sessions[{sess_key!r}].images"
                if not isinstance(images, list):
                    raise DatasetFileError(f"{file}: {iw} must be a list, got {images!r}")
                for i, img in enumerate(images):
                    img = _mapping(file, f"{iw}[{i}]", img)
                    path = _expand_path(file, f"{iw}[{i}].image_path", img.get("image_path"), file.parent)
                    modality = img.get("modality")
                    if modalities is not None and not isinstance(modality, str):
                        raise DatasetFileError(
                            f"{file}: {iw}[{i}].modality must be a string, got {modality!r}"
                        )
                    if modalities is None or modality in modalities:
                        out.append((path, f"{dindex}/{skey}"))
    return out
