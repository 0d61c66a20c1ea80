"""The pretrained encoder, `voxmix.encoder/1` (docs/formats.md): `encoder.pt`, a torch file holding
{"format", "monai_vit_kwargs", "state_dict", ...extra} with the weights under MONAI ViT's key names.

Written by the trainer at the end of a run, read by the downstream tasks. torch is imported when a file
is read or written, so that importing voxmix.formats never needs it (lawfit does not).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from .errors import FormatError
from .io import atomic_write_bytes

FORMAT = "voxmix.encoder/1"
REQUIRED = ("monai_vit_kwargs", "state_dict")


class EncoderError(FormatError):
    """Not a `voxmix.encoder/1` file; the message names the file and field."""


def write_encoder(
    path: str | os.PathLike, monai_vit_kwargs: dict[str, Any], state_dict: dict, extra: dict | None = None
) -> Path:
    """Write encoder.pt atomically (a reader never sees half a checkpoint)."""
    import torch

    buf = io.BytesIO()
    blob = {"format": FORMAT, "monai_vit_kwargs": dict(monai_vit_kwargs), "state_dict": state_dict}
    torch.save({**blob, **(extra or {})}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_encoder(path: str | os.PathLike) -> dict[str, Any]:
    """encoder.pt -> {"monai_vit_kwargs", "state_dict", ...}, with the format checked.

    `weights_only=True`: a file from elsewhere cannot run code when it is loaded.
    """
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderError(f"{path}: file not found") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise EncoderError(f"{path}: field 'format' is {got!r}, expected {FORMAT!r}")
    for key in REQUIRED:
        if key not in blob:
            raise EncoderError(f"{path}: field {key!r} missing")
    return blob
