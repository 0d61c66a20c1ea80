"""The fitted laws, `voxmix.laws/1` (docs/formats.md): written by `lawfit fit`, read by `lawfit allocate`,
`report` and `validate`, and by study code that predicts losses.

This module checks the file's structure (format, domains, a law per domain, d0, per-domain numbers,
alternatives); what a law *is* (its form's parameters, its transfer terms) is checked by
voxmix.lawfit.lawsfile, which builds the law objects from the validated dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import FormatError
from .io import atomic_write_json, read_json

FORMAT = "voxmix.laws/1"
DOMAIN_NUMBERS = ("unique_samples", "seconds_per_sample")


class LawsError(FormatError):
    """A laws file that does not follow `voxmix.laws/1`; the message names the file and field."""


def _domains(obj: dict, where: str) -> list[str]:
    domains = obj.get("domains")
    if not isinstance(domains, list) or not domains or not all(isinstance(d, str) for d in domains):
        raise LawsError(f"{where}: field 'domains': expected a non-empty list of names")
    if len(set(domains)) != len(domains):
        raise LawsError(f"{where}: field 'domains': duplicate names")
    return domains


def _targets(tobj: Any, base: str, domains: list[str], where: str) -> None:
    if not isinstance(tobj, dict):
        raise LawsError(f"{where}: field '{base}': expected an object")
    for d, t in tobj.items():
        if d not in domains:
            raise LawsError(f"{where}: field '{base}.{d}': unknown domain '{d}'")
        if not isinstance(t, dict):
            raise LawsError(f"{where}: field '{base}.{d}': expected an object")


def _domain_numbers(obj: dict, key: str, domains: list[str], where: str) -> None:
    m = obj.get(key) or {}
    if not isinstance(m, dict):
        raise LawsError(f"{where}: field '{key}': expected an object")
    for d, v in m.items():
        if d not in domains:
            raise LawsError(f"{where}: field '{key}.{d}': unknown domain '{d}'")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise LawsError(f"{where}: field '{key}.{d}': expected a positive number, got {v!r}")


def validate_laws(obj: Any, where: str) -> dict:
    """Check the structure of a decoded laws file; returns `obj` unchanged."""
    if not isinstance(obj, dict):
        raise LawsError(f"{where}: expected a JSON object")
    if obj.get("format") != FORMAT:
        raise LawsError(f"{where}: field 'format': expected '{FORMAT}', got {obj.get('format')!r}")
    if not isinstance(obj.get("form"), str):
        raise LawsError(f"{where}: field 'form': expected the name of a law form, got {obj.get('form')!r}")
    domains = _domains(obj, where)
    _targets(obj.get("targets"), "targets", domains, where)
    missing = [d for d in domains if d not in obj["targets"]]
    if missing:
        raise LawsError(f"{where}: field 'targets': no law for domain(s) {missing}")
    d0 = obj.get("d0", 1.0)
    if isinstance(d0, bool) or not isinstance(d0, (int, float)) or not d0 > 0:
        raise LawsError(f"{where}: field 'd0': expected a positive number, got {d0!r}")
    for key in DOMAIN_NUMBERS:
        _domain_numbers(obj, key, domains, where)
    alts = obj.get("alternatives")
    alts = {} if alts is None else alts
    if not isinstance(alts, dict):
        raise LawsError(f"{where}: field 'alternatives': expected an object")
    for f, a in alts.items():
        if not isinstance(a, dict):
            raise LawsError(f"{where}: field 'alternatives.{f}': expected an object")
        _targets(a.get("targets") or {}, f"alternatives.{f}.targets", domains, where)
    return obj


def read_laws(path: str | os.PathLike) -> dict:
    """The decoded, structure-checked laws file."""
    obj = read_json(path, LawsError)
    return validate_laws(obj, str(Path(path)))


def write_laws(path: str | os.PathLike, obj: dict) -> Path:
    """Check, then write atomically."""
    validate_laws(obj, str(path))
    return atomic_write_json(path, obj)
