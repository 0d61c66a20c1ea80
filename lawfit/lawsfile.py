"""`laws.json` (`voxmix.laws/1`): the fitted laws of every target, how well they fit, and their uncertainty."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxmix.formats.laws import DOMAIN_NUMBERS, FORMAT, read_laws, validate_laws, write_laws

from .errors import LawfitError
from .forms import FORMS, get_form
from .intervals import interval
from .laws import D0_DEFAULT, TargetLaw, law_value_grad
from .lawvec import LawMatrix


@dataclass
class Laws:
    form: str
    domains: list[str]
    targets: dict[str, TargetLaw]
    d0: float = D0_DEFAULT
    unique_samples: dict[str, float] = field(default_factory=dict)
    seconds_per_sample: dict[str, float] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    alternatives: dict[str, dict[str, TargetLaw]] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- prediction ---------------------------------------------------------------------------------
    @property
    def U(self) -> np.ndarray:
        return np.array([self.unique_samples.get(d, np.inf) for d in self.domains], dtype=np.float64)

    def predict(self, D: np.ndarray, targets: dict[str, TargetLaw] | None = None) -> np.ndarray:
        """Loss of every domain (columns) at rows of samples seen D (n, m)."""
        targets = targets or self.targets
        D = np.atleast_2d(np.asarray(D, dtype=np.float64))
        return np.stack(
            [law_value_grad(targets[d], self.domains, D, self.U, self.d0)[0] for d in self.domains], axis=1
        )

    def value_grad(self, D: np.ndarray, targets: dict[str, TargetLaw] | None = None):
        """Losses L (m,) at one point D (m,) and the Jacobian dL_i/dD_j (m, m), all targets at once
        (lawfit/lawvec.py; the allocator calls this thousands of times)."""
        return self._matrix(targets or self.targets).value_grad(D)

    def _matrix(self, targets: dict[str, TargetLaw]) -> LawMatrix:
        # TargetLaw is frozen: the identities of a target set's laws (kept alive in the entry, so that no id
        # is reused), the unique data and d0 say whether the arrays still hold.
        laws = tuple(targets[d] for d in self.domains)
        key = (tuple(map(id, laws)), tuple(self.U), self.d0)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= 8:  # the chosen laws, the no-transfer alternative, a few resamples
                self._cache.pop(next(iter(self._cache)))
            hit = self._cache[key] = (laws, LawMatrix(targets, self.domains, self.U, self.d0))
        return hit[1]

    def bootstrap_targets(self) -> list[dict[str, TargetLaw]]:
        """The laws refitted on each bootstrap resample (empty without uncertainty)."""
        unc = self.uncertainty
        if not unc or not unc.get("samples"):
            return []
        return unpack_samples(self.form, self.domains, unc["samples"], self.d0)

    @property
    def interval_rule(self) -> str:
        """How this file's intervals are read off the draws (files written before #12 have none)."""
        return self.uncertainty.get("interval", "percentile")

    def interval_of(self, draws, estimate=None, level: float | None = None, axis: int = 0):
        """(lo, hi) of bootstrap draws of any quantity, at this file's level and with its rule; `estimate`
        (the quantity under the point laws) is needed by the 'bc' rule only."""
        level = level or self.uncertainty.get("level", 0.9)
        return interval(draws, level, self.interval_rule, estimate=estimate, axis=axis)

    def predict_interval(self, D: np.ndarray, level: float | None = None, boots: list | None = None):
        """(lo, hi) of the predicted losses at rows D over the bootstrap laws, or None without them, read
        off with the file's interval rule (files written before #12 have none: 'percentile').
        Pass `boots` (from `bootstrap_targets()`) when calling repeatedly, to unpack them once."""
        boots = self.bootstrap_targets() if boots is None else boots
        if not boots:
            return None
        preds = np.stack([self.predict(D, t) for t in boots])
        estimate = self.predict(D) if self.interval_rule == "bc" else None
        return self.interval_of(preds, estimate, level=level, axis=0)

    # ---- file ---------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "form": self.form,
            "form_description": FORMS[self.form].description,
            "domains": self.domains,
            "d0": self.d0,
            "targets": {d: self.targets[d].to_json() for d in self.domains},
            "unique_samples": {d: u for d, u in self.unique_samples.items() if np.isfinite(u)},
            "seconds_per_sample": self.seconds_per_sample,
            "fit": self.fit,
            "alternatives": {
                f: {"targets": {d: t.to_json() for d, t in tg.items()}} for f, tg in self.alternatives.items()
            },
            "uncertainty": self.uncertainty,
        }

    def save(self, path: str | os.PathLike) -> Path:
        return write_laws(path, self.to_json())

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Laws:
        """Laws from a decoded `voxmix.laws/1` object: the file's structure is checked by
        voxmix.formats.laws, the forms and each law's parameters and transfer terms here."""
        validate_laws(obj, where)
        form, domains = obj["form"], list(obj["domains"])
        if form not in FORMS:
            raise LawfitError(f"{where}: field 'form': unknown form {form!r} (known: {sorted(FORMS)})")
        n = get_form(form).n_params(len(domains) - 1)
        for d, v in ((obj.get("uncertainty") or {}).get("samples") or {}).items():
            # n - 1: draws written before d0 was fitted per target (unpack_samples inserts it).
            if v and len(v[0]) not in (n, n - 1):
                raise LawfitError(
                    f"{where}: field 'uncertainty.samples.{d}': a draw of form {form!r} over "
                    f"{len(domains)} domains has {n} parameters, got {len(v[0])}"
                )
        alts = {}
        for f, a in (obj.get("alternatives") or {}).items():
            if f not in FORMS:
                raise LawfitError(f"{where}: field 'alternatives.{f}': unknown form or not an object")
            alts[f] = _parse_targets(a.get("targets") or {}, f"alternatives.{f}.targets", domains, where)
        numbers = {k: {d: float(v) for d, v in (obj.get(k) or {}).items()} for k in DOMAIN_NUMBERS}
        return cls(
            form=form,
            domains=domains,
            targets=_parse_targets(obj["targets"], "targets", domains, where),
            d0=float(obj.get("d0", D0_DEFAULT)),
            unique_samples=numbers["unique_samples"],
            seconds_per_sample=numbers["seconds_per_sample"],
            fit=obj.get("fit") or {},
            alternatives=alts,
            uncertainty=obj.get("uncertainty") or {},
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Laws:
        return cls.from_json(read_laws(path), str(path))


def _parse_targets(tobj: dict, base: str, domains: list[str], where: str) -> dict[str, TargetLaw]:
    out = {}
    for d, t in tobj.items():
        law = TargetLaw.from_json(d, t, where)
        bad = [j for j in law.transfer if j not in domains or j == d]
        if bad:
            raise LawfitError(f"{where}: field '{base}.{d}.transfer': unknown or self domain(s) {bad}")
        out[d] = law
    return out


def unpack_samples(
    form: str, domains: list[str], samples: dict, d0: float = D0_DEFAULT
) -> list[dict[str, TargetLaw]]:
    """Bootstrap draws as laws: samples[d] holds target d's natural parameter vectors (one per resample);
    draw b is {d: law of d in resample b}, over the resamples every target has. Vectors written before d0
    was fitted per target lack log_d0 (the 4th entry): the file's global d0 is put there."""
    f = get_form(form)
    per = {}
    for d in domains:
        v = np.asarray(samples[d], dtype=np.float64)
        if v.ndim == 2 and v.shape[1] == f.n_params(len(domains) - 1) - 1:
            v = np.insert(v, 3, np.log(d0), axis=1)
        per[d] = v
    n = min(len(v) for v in per.values())
    return [{d: f.unpack(per[d][b], d, [o for o in domains if o != d]) for d in domains} for b in range(n)]
