"""The fitted laws, `voxmix.laws/1` (docs/formats.md): written by `lawfit fit`, read by `lawfit allocate`,
`report` and `validate`, and by study code that predicts losses.

This module checks the file's structure (format, domains, a law per domain, d0, per-domain numbers,
alternatives, and the parts of `fit` and `uncertainty` that readers use); what a law *is* (its form's
parameters, its transfer terms, the length of a bootstrap draw) is checked by voxmix.lawfit.lawsfile, which
builds the law objects from the validated dict.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import FormatError
from .io import atomic_write_json, read_json

FORMAT = "voxmix.laws/1"
DOMAIN_NUMBERS = ("unique_samples", "seconds_per_sample")
INTERVAL_RULES = ("percentile", "bc", "linear", "weibull")
"""Values of `uncertainty.interval` (voxmix.lawfit.intervals); files written before #12 have none."""


class LawsError(FormatError):
    """A laws file that does not follow `voxmix.laws/1`; the message names the file and field."""


def _positive(v: Any) -> bool:
    # JSON's 1e999 decodes to inf: a cost or a data count must be finite as well as positive.
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


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
        if not _positive(v):
            raise LawsError(f"{where}: field '{key}.{d}': expected a positive finite number, got {v!r}")


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _obj(v: Any, name: str, where: str) -> dict:
    """`v` as an object; absent (None) is an empty one."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise LawsError(f"{where}: field '{name}': expected an object, got {type(v).__name__}")
    return v


def _rows(v: Any, name: str, width: int | None, where: str, ok=_finite) -> int:
    """Check a list of equally long rows of numbers accepted by `ok`; returns the row length."""
    if not isinstance(v, list):
        raise LawsError(f"{where}: field '{name}': expected a list of rows")
    for r, row in enumerate(v):
        if not isinstance(row, list) or len(row) != (len(v[0]) if width is None else width):
            raise LawsError(f"{where}: field '{name}[{r}]': expected a row of {width or len(v[0])} numbers")
        bad = [x for x in row if not ok(x)]
        if bad:
            raise LawsError(f"{where}: field '{name}[{r}]': invalid value {bad[0]!r}")
    return len(v[0]) if v else 0


def _fit(fit: Any, m: int, where: str) -> None:
    """What `lawfit report` reads of `fit`: the fitted points (`data`), `runs`, `selection`, `per_target`."""
    fit = _obj(fit, "fit", where)
    runs = fit.get("runs")
    if runs is not None and not (isinstance(runs, list) and all(isinstance(r, str) for r in runs)):
        raise LawsError(f"{where}: field 'fit.runs': expected a list of run ids")
    data = _obj(fit.get("data"), "fit.data", where)
    if data:
        ids, run = data.get("run_ids"), data.get("run")
        if not isinstance(ids, list) or not all(isinstance(r, str) for r in ids):
            raise LawsError(f"{where}: field 'fit.data.run_ids': expected a list of run ids")
        if not isinstance(run, list) or not all(type(r) is int and 0 <= r < len(ids) for r in run):
            raise LawsError(f"{where}: field 'fit.data.run': expected indices into fit.data.run_ids")
        _rows(data.get("samples_seen"), "fit.data.samples_seen", m, where, lambda x: _finite(x) and x >= 0)
        _rows(data.get("loss"), "fit.data.loss", m, where, lambda x: x is None or (_finite(x) and x > 0))
        if not len(run) == len(data["samples_seen"]) == len(data["loss"]):
            raise LawsError(f"{where}: field 'fit.data': run, samples_seen and loss differ in length")
    sel = _obj(fit.get("selection"), "fit.selection", where)
    if not isinstance(sel.get("method", ""), str):
        raise LawsError(f"{where}: field 'fit.selection.method': expected a string")
    for f, v in _obj(sel.get("cv_rmse_log"), "fit.selection.cv_rmse_log", where).items():
        if not _finite(v):
            raise LawsError(f"{where}: field 'fit.selection.cv_rmse_log.{f}': expected a number, got {v!r}")
    for d, t in _obj(fit.get("per_target"), "fit.per_target", where).items():
        rm = _obj(t, f"fit.per_target.{d}", where).get("rmse_log")
        if rm is not None and not _finite(rm):
            raise LawsError(f"{where}: field 'fit.per_target.{d}.rmse_log': expected a number, got {rm!r}")


def _uncertainty(unc: Any, domains: list[str], where: str) -> None:
    """The bootstrap block: `level`, `interval`, per-parameter `intervals` and the draws (`samples`)."""
    unc = _obj(unc, "uncertainty", where)
    level = unc.get("level")
    if level is not None and not (_finite(level) and 0 < level < 1):
        raise LawsError(f"{where}: field 'uncertainty.level': expected a number in (0, 1), got {level!r}")
    rule = unc.get("interval")
    if rule is not None and rule not in INTERVAL_RULES:
        raise LawsError(
            f"{where}: field 'uncertainty.interval': expected one of {INTERVAL_RULES}, got {rule!r}"
        )
    for d, params in _obj(unc.get("intervals"), "uncertainty.intervals", where).items():
        params = _obj(params, f"uncertainty.intervals.{d}", where)
        for k, iv in ((k, params[k]) for k in ("E", "A", "alpha") if k in params):  # what report reads
            if not (isinstance(iv, list) and len(iv) == 2 and all(_finite(x) for x in iv)):
                raise LawsError(f"{where}: field 'uncertainty.intervals.{d}.{k}': expected [low, high]")
    samples = _obj(unc.get("samples"), "uncertainty.samples", where)
    missing = [d for d in domains if d not in samples]
    if samples and missing:
        raise LawsError(f"{where}: field 'uncertainty.samples': no draws for domain(s) {missing}")
    for d, v in samples.items():
        if d not in domains:
            raise LawsError(f"{where}: field 'uncertainty.samples.{d}': unknown domain '{d}'")
        _rows(v, f"uncertainty.samples.{d}", None, where)


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
    if not _positive(d0):
        raise LawsError(f"{where}: field 'd0': expected a positive finite number, got {d0!r}")
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
    _fit(obj.get("fit"), len(domains), where)
    _uncertainty(obj.get("uncertainty"), domains, where)
    return obj


def read_laws(path: str | os.PathLike) -> dict:
    """The decoded, structure-checked laws file."""
    obj = read_json(path, LawsError)
    return validate_laws(obj, str(Path(path)))


def write_laws(path: str | os.PathLike, obj: dict) -> Path:
    """Check, then write atomically."""
    validate_laws(obj, str(path))
    return atomic_write_json(path, obj)
