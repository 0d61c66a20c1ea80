"""Ingest: NIfTI/DICOM/NRRD/MHA -> oriented, resampled, normalized float16 .npy + manifest (docs/data.md).

The command is `python -m trainer.ingest` (trainer/ingest.py)."""

from .pipeline import Result, ingest
from .spec import DomainSpec, Spec, SpecError, load_spec

__all__ = ["DomainSpec", "Result", "Spec", "SpecError", "ingest", "load_spec"]
