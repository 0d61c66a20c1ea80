"""The pretrained encoder, `voxmix.encoder/1` (docs/formats.md): the weights under MONAI ViT's key names
with the ViT's constructor arguments, in a run folder as

  encoder.safetensors   the weights; metadata {"format", "monai_vit_kwargs" (JSON), ...extra (JSON)}
  encoder.pt            the same as a torch file {"format", "monai_vit_kwargs", "state_dict", ...extra}
  encoder.json          the card: architecture, preprocessing per domain, mixture, budget, seed, data hash,
                        versions, and the size and sha256 of each weights file (`read_card` validates it)

Written by the trainer at the end of a run (trainer/pretrain/card.py), read by the downstream tasks and
`load_monai_vit` / `load_unetr`. torch and safetensors are imported when a file is read or written, so
that importing voxmix.formats never needs them (lawfit does not).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from .errors import FormatError
from .io import atomic_write_bytes, atomic_write_json, read_json

FORMAT = "voxmix.encoder/1"
REQUIRED = ("monai_vit_kwargs", "state_dict")
# The MONAI ViT arguments every reader needs (trainer/downstream/models.py builds the networks from them).
KWARGS_INT = ("in_channels", "hidden_size", "mlp_dim", "num_layers", "num_heads")
KWARGS_SIZE = ("img_size", "patch_size")
# The files of an encoder in a run folder; a folder is read from the first weights file present
# (safetensors first: reading it cannot run code whatever the file holds).
SAFETENSORS, TORCH, CARD, MODEL_CARD = "encoder.safetensors", "encoder.pt", "encoder.json", "MODEL_CARD.md"
WEIGHTS = (SAFETENSORS, TORCH)
MODALITIES = ("CT", "MRI", "PET")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class EncoderError(FormatError):
    """Not a `voxmix.encoder/1` file; the message names the file and field."""


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------------
# Weights: writing


def write_encoder(
    path: str | os.PathLike, monai_vit_kwargs: dict[str, Any], state_dict: dict, extra: dict | None = None
) -> Path:
    """Write encoder.pt, or encoder.safetensors when `path` ends so, atomically (a reader never sees half
    a file). `extra` (run id, step, ...) must be JSON values for safetensors (its metadata is text)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return atomic_write_bytes(path, _safetensors_bytes(monai_vit_kwargs, state_dict, extra or {}))
    import torch

    buf = io.BytesIO()
    blob = {"format": FORMAT, "monai_vit_kwargs": dict(monai_vit_kwargs), "state_dict": state_dict}
    torch.save({**(extra or {}), **blob}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _safetensors_bytes(kwargs: dict, state_dict: dict, extra: dict) -> bytes:
    from safetensors.torch import save

    # safetensors metadata maps text to text: every value is stored as JSON, `format` as itself.
    meta = {k: json.dumps(v) for k, v in extra.items()}
    meta.update(format=FORMAT, monai_vit_kwargs=json.dumps(dict(kwargs)))
    return save({k: v.contiguous() for k, v in state_dict.items()}, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# Weights: reading


def _refusal(exc: BaseException) -> str:
    """The one line of torch's weights-only refusal that says what the file asked for. torch's own
    message goes on to suggest `weights_only=False`, which is exactly what must not be done with it."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or ln.startswith("Unsupported"):
            return ln
    return lines[-1] if lines else type(exc).__name__


_REDO = "use the encoder a voxmix run wrote (<out>/encoder.safetensors or <out>/encoder.pt, or <out> itself)"


def read_encoder(path: str | os.PathLike) -> dict[str, Any]:
    """encoder.safetensors, encoder.pt or a run folder -> {"monai_vit_kwargs", "state_dict", ...}, with
    the format checked.

    A folder is read from its encoder.safetensors, else its encoder.pt; when it holds the card
    (encoder.json), the weights file must have the sha256 and the architecture the card records, so a
    card never describes other weights than the ones loaded. encoder.pt loads with `weights_only=True`:
    torch's restricted unpickler builds tensors and plain containers only, so a file from elsewhere cannot
    run code when it is loaded (a pickle naming a function is refused, not run); safetensors holds no code
    at all. Every way a file can fail to load is an EncoderError naming it; whether the weights fit the
    architecture is checked by the downstream code (trainer/downstream/models.py: check_encoder).
    """
    path = Path(path)
    card = None
    if path.is_dir():
        folder = path
        path = next((folder / n for n in WEIGHTS if (folder / n).is_file()), folder)
        if path == folder:
            raise EncoderError(f"{folder}: is a folder without {SAFETENSORS} or {TORCH}; {_REDO}")
        card = read_card(folder / CARD) if (folder / CARD).is_file() else None
    blob = _load_safetensors(path) if path.suffix == ".safetensors" else _load(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise EncoderError(f"{path}: field 'format' is {got!r}, expected {FORMAT!r}; {_REDO}")
    for key in REQUIRED:
        if key not in blob:
            raise EncoderError(f"{path}: field {key!r} missing; {_REDO}")
    _check_kwargs(path, blob["monai_vit_kwargs"])
    _check_state_dict(path, blob["state_dict"])
    if card is not None:
        _check_against_card(path, blob, card)
    return blob


def _load(path: Path) -> Any:
    import pickle

    import torch

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


def _load_safetensors(path: Path) -> dict[str, Any]:
    """{"format", "monai_vit_kwargs", "state_dict", ...extra} from an encoder.safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            state_dict = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError:
        raise EncoderError(f"{path}: file not found") from None
    except PermissionError as exc:
        raise EncoderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise EncoderError(
            f"{path}: not a readable safetensors file, truncated or corrupt ({first}); {_REDO}"
        ) from None
    blob: dict[str, Any] = {}
    for key, text in meta.items():
        if key == "format":
            blob[key] = text
            continue
        try:
            blob[key] = json.loads(text)
        except json.JSONDecodeError:
            if key == "monai_vit_kwargs":
                raise EncoderError(f"{path}: metadata 'monai_vit_kwargs' is not JSON; {_REDO}") from None
            blob[key] = text  # another writer's plain-text metadata: kept as it is
    kw = blob.get("monai_vit_kwargs")
    if isinstance(kw, dict):  # JSON has no tuples: the sizes come back as torch.save keeps them
        blob["monai_vit_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    blob["state_dict"] = state_dict
    return blob


def _check_kwargs(path: Path, kw: Any, field: str = "monai_vit_kwargs") -> None:
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        raise EncoderError(f"{path}: field {field!r} must be a mapping of argument names")
    for key in KWARGS_INT + KWARGS_SIZE:
        v = kw.get(key)
        items = v if key in KWARGS_SIZE and isinstance(v, (list, tuple)) else [v]
        if not items or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in items):
            raise EncoderError(f"{path}: field '{field}.{key}' must be integers >= 1, got {v!r}")


def _check_state_dict(path: Path, sd: Any) -> None:
    import torch

    if not isinstance(sd, dict) or not sd:
        raise EncoderError(f"{path}: field 'state_dict' must be a non-empty mapping of names to tensors")
    for name, t in sd.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise EncoderError(f"{path}: field 'state_dict' entry {name!r} must be a float tensor, got {got}")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists: kwargs from either file compare alike


def _check_against_card(path: Path, blob: dict, card: dict) -> None:
    card_path = path.parent / CARD
    rec = card["weights"].get(path.name)
    if rec is None:
        raise EncoderError(f"{card_path}: field 'weights' does not list {path.name}, which the folder holds")
    digest = sha256_file(path)
    if digest != rec["sha256"]:
        raise EncoderError(
            f"{path}: sha256 {digest} differs from {rec['sha256']} recorded in {card_path}: the weights were "
            "replaced or damaged after the card was written; copy the run's encoder files together"
        )
    if _plain(blob["monai_vit_kwargs"]) != _plain(card["monai_vit_kwargs"]):
        raise EncoderError(f"{path}: 'monai_vit_kwargs' differ from those recorded in {card_path}")


# ---------------------------------------------------------------------------------------------------
# The card, encoder.json


def _card_fail(where: str, field: str, want: str, got: Any) -> EncoderError:
    return EncoderError(f"{where}: field {field!r} must be {want}, got {got!r}")


def _int(obj: dict, key: str, where: str, prefix: str = "") -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _card_fail(where, prefix + key, "an integer >= 0", v)
    return v


def _section(card: dict, key: str, where: str) -> dict:
    v = card.get(key)
    if not isinstance(v, dict) or not v:
        raise _card_fail(where, key, "a non-empty object", v)
    return v


def validate_card(card: Any, where: str) -> dict:
    """Check the fields every reader of encoder.json relies on (docs/formats.md, `encoder.json`); unknown
    fields are allowed. Returns `card` unchanged; EncoderError naming `where` and the field otherwise."""
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        got = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise EncoderError(f"{where}: field 'format' is {got!r}, expected {FORMAT!r}")
    for key in ("voxmix_version", "torch_version", "run_id"):
        if not isinstance(card.get(key), str) or not card[key]:
            raise _card_fail(where, key, "a non-empty string", card.get(key))
    _int(card, "step", where)
    _check_kwargs(Path(where), card.get("monai_vit_kwargs"))
    weights = _section(card, "weights", where)
    for name, rec in weights.items():
        if name not in WEIGHTS:
            raise _card_fail(where, "weights", f"keyed by {' or '.join(WEIGHTS)}", name)
        ok = isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and _HEX64.fullmatch(rec["sha256"])
        if not ok:
            raise _card_fail(where, f"weights.{name}", "{size, sha256 (64 hex digits)}", rec)
        _int(rec, "size", where, f"weights.{name}.")
    prep = _section(card, "preprocessing", where)
    for dom, p in prep.items():
        if not isinstance(p, dict) or p.get("modality") not in MODALITIES:
            got = p.get("modality") if isinstance(p, dict) else p
            raise _card_fail(where, f"preprocessing.{dom}.modality", f"one of {MODALITIES}", got)
    train = _section(card, "training", where)
    _int(train, "budget_samples", where, "training.")
    _int(train, "seed", where, "training.")
    mix = train.get("mixture")
    if not isinstance(mix, dict) or set(mix) != set(prep):
        raise _card_fail(
            where, "training.mixture", f"a weight per domain of 'preprocessing' {sorted(prep)}", mix
        )
    for dom, w in mix.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise _card_fail(where, f"training.mixture.{dom}", "a finite number >= 0", w)
    if abs(math.fsum(mix.values()) - 1.0) > 1e-6:
        raise _card_fail(where, "training.mixture", "weights summing to 1", mix)
    digest = _section(card, "data", where).get("manifest_sha256")
    if digest is not None and not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise _card_fail(where, "data.manifest_sha256", "64 hex digits or null", digest)
    return card


def read_card(path: str | os.PathLike) -> dict:
    """encoder.json (or the run folder holding it) -> the validated card."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD
    return validate_card(read_json(path, EncoderError), str(path))


def write_card(path: str | os.PathLike, card: dict) -> Path:
    """Validate, then write encoder.json atomically."""
    validate_card(card, str(path))
    return atomic_write_json(path, card)
