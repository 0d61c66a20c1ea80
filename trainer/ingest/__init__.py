"""`python -m trainer.ingest --spec dataset.yaml --out DIR [--workers N]` (docs/data.md)."""

from .pipeline import Result, ingest
from .spec import DomainSpec, Spec, SpecError, load_spec

__all__ = ["DomainSpec", "Result", "Spec", "SpecError", "ingest", "load_spec"]
