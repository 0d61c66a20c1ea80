"""The pretrained encoder, `voxmix.encoder/1` (docs/formats.md): `encoder.pt`, a torch file holding
{"format", "monai_vit_kwargs", "state_dict", ...extra} with the weights under MONAI ViT's key names.

Written by the trainer at the end of a run, read by the downstream tasks. torch is imported when a file
is read or written, so that importing voxmix.formats never needs it (lawfit does not).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import FormatError
from .io import atomic_write_bytes

FORMAT = "voxmix.encoder/1"
REQUIRED = ("monai_vit_kwargs", "state_dict")
# The MONAI ViT arguments every reader needs (trainer/downstream/models.py builds the networks from them).
KWARGS_INT = ("in_channels", "hidden_size", "mlp_dim", "num_layers", "num_heads")
KWARGS_SIZE = ("img_size", "patch_size")


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


def _refusal(exc: BaseException) -> str:
    """The one line of torch's weights-only refusal that says what the file asked for. torch's own
    message goes on to suggest `weights_only=False`, which is exactly what must not be done with it."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or ln.startswith("Unsupported"):
            return ln
    return lines[-1] if lines else type(exc).__name__


_REDO = "use an encoder.pt written by trainer/run.py (a run writes <out>/encoder.pt)"


def read_encoder(path: str | os.PathLike) -> dict[str, Any]:
    """encoder.pt -> {"monai_vit_kwargs", "state_dict", ...}, with the format checked.

    `weights_only=True`: torch's restricted unpickler builds tensors and plain containers only, so a file
    from elsewhere cannot run code when it is loaded (a pickle naming a function is refused, not run).
    Every way a file can fail to load is an EncoderError naming it; whether the weights fit the
    architecture is checked by the downstream code (trainer/downstream/models.py: check_encoder).
    """
    path = Path(path)
    blob = _load(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise EncoderError(f"{path}: field 'format' is {got!r}, expected {FORMAT!r}; {_REDO}")
    for key in REQUIRED:
        if key not in blob:
            raise EncoderError(f"{path}: field {key!r} missing; {_REDO}")
    _check_kwargs(path, blob["monai_vit_kwargs"])
    _check_state_dict(path, blob["state_dict"])
    return blob


def _load(path: Path) -> Any:
    import pickle

    import torch

    if path.is_dir():
        inside = path / "encoder.pt"
        hint = f"did you mean {inside}?" if inside.is_file() else _REDO
        raise EncoderError(f"{path}: is a folder, expected an encoder.pt file; {hint}")
    try:
        # torch warns about unusual pickle protocols before refusing them; the refusal below says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderError(f"{path}: file not found") from None
    except PermissionError as exc:
        raise EncoderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except pickle.UnpicklingError as exc:
        what = _refusal(exc)
        if "GLOBAL" in what:
            raise EncoderError(
                f"{path}: refused: loading it would import and call code ({what}); a voxmix encoder holds "
                f"tensors only. Do not load this file with weights_only=False; {_REDO}"
            ) from None
        raise EncoderError(f"{path}: not a torch weights file ({what}); {_REDO}") from None
    except Exception as exc:  # noqa: BLE001 - on junk torch raises RuntimeError, OSError, EOFError, KeyError...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise EncoderError(
            f"{path}: not a readable torch file, truncated or corrupt ({why}); {_REDO}"
        ) from None


def _check_kwargs(path: Path, kw: Any) -> None:
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        raise EncoderError(f"{path}: field 'monai_vit_kwargs' must be a mapping of argument names")
    for key in KWARGS_INT + KWARGS_SIZE:
        v = kw.get(key)
        items = v if key in KWARGS_SIZE and isinstance(v, (list, tuple)) else [v]
        if not items or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in items):
            raise EncoderError(f"{path}: field 'monai_vit_kwargs.{key}' must be integers >= 1, got {v!r}")


def _check_state_dict(path: Path, sd: Any) -> None:
    import torch

    if not isinstance(sd, dict) or not sd:
        raise EncoderError(f"{path}: field 'state_dict' must be a non-empty mapping of names to tensors")
    for name, t in sd.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise EncoderError(f"{path}: field 'state_dict' entry {name!r} must be a float tensor, got {got}")
