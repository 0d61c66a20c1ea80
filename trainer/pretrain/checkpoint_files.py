"""A checkpoint tag's file list (`voxmix_files.json`) and the checks that run before anything of it is loaded.

Each rank hashes the files it wrote (`hash_own_files`); rank 0 writes the list after every rank has saved
(`record`), checked on every rank at `--resume` (`verify`):

  version 2   {"version": 2, "tag": "step_000040", "files": {name: {"size": bytes, "sha256": hex}}}

`verify` reads nothing with pickle. In order: `latest.json` names a plain tag (`step_<digits>`, a real
folder directly inside checkpoints/, not a symlink), the tag holds exactly the recorded files (no symlink,
no extra file such as a planted optimizer shard), every file has its recorded size and sha256 (same-size
corruption too), and every `.pt` file passes torch's restricted unpickler (`weights_only=True`) with only
the few DeepSpeed classes its checkpoints hold allowed (`DEEPSPEED_GLOBALS`). DeepSpeed then reads its own
files with `weights_only=False` (its checkpoint engine; we cannot change that), but only files that the
restricted unpickler has already accepted: a pickle that names `os.system` or any other callable is
refused here and never reaches DeepSpeed.

The sha256 protects against corruption and mix-ups, not against someone who can write the folder (they
can rewrite voxmix_files.json too); the restricted unpickler is what keeps a planted pickle from running.
A checkpoint from before version 2 (sizes only, RNG states pickled with NumPy objects) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from voxmix.formats.io import atomic_write_json

FILES = "voxmix_files.json"
LATEST = "latest.json"
VERSION = 2
TAG_RE = re.compile(r"step_\d+")

# module, class name: the objects (besides tensors, containers and numbers, which torch always allows)
# that DeepSpeed 0.19's ZeRO 0-3 / bf16 optimizers put into their checkpoints. Found by listing the
# pickle globals of real checkpoints and reading their `state_dict` methods.
DEEPSPEED_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


_FIX = "restore it from a copy, or start the run again in a new --out"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or refused; the message names the file."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _digests(tag_dir: Path, names: list[str]) -> dict[str, str]:
    # hashlib releases the GIL: a few threads hash a multi-GB tag's shards in parallel.
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(tag_dir / n), names)))


def _walk(tag_dir: Path) -> tuple[list[str], list[str]]:
    """(relative names of the regular files, relative names of symlinks) under `tag_dir`, not following
    links; voxmix_files.json itself is not listed."""
    files, links = [], []
    for root, dirs, names in os.walk(tag_dir, followlinks=False):
        rel = Path(root).relative_to(tag_dir)
        links += [(rel / d).as_posix() for d in dirs if (Path(root) / d).is_symlink()]
        for name in names:
            (links if (Path(root) / name).is_symlink() else files).append((rel / name).as_posix())
    return sorted(f for f in files if f != FILES), sorted(links)


_RANK_FILE = re.compile(r"(?:^|_)zero_pp_rank_(\d+)_|^voxmix_rank(\d+)\.pt$")


def owner_rank(name: str) -> int:
    """The rank that writes file `name` of a tag: DeepSpeed's per-rank shards (`*zero_pp_rank_<r>_*`; the
    data-parallel rank, which is the global rank here: no model or pipeline parallelism) and voxmix's
    `voxmix_rank<r>.pt`; every other file (the ZeRO-1/2 model states, DeepSpeed's scripts) is rank 0's."""
    m = _RANK_FILE.search(Path(name).name)
    return int(next(g for g in m.groups() if g is not None)) if m else 0


def hash_own_files(tag_dir: Path, rank: int) -> dict[str, dict[str, Any]]:
    """{name: {size, sha256}} of the files of the tag that rank `rank` wrote (`owner_rank`).

    Each rank hashes its own shards right after writing them, on its own node: the work is spread over
    the ranks instead of rank 0 reading every shard at every save, and a file is hashed where it was
    written, so a shared filesystem whose other nodes see a new file late (NFS attribute caches) cannot
    leave it out of the list."""
    tag_dir = Path(tag_dir)
    names, _ = _walk(tag_dir)
    mine = [n for n in names if owner_rank(n) == rank]
    digests = _digests(tag_dir, mine)
    return {n: {"size": (tag_dir / n).stat().st_size, "sha256": digests[n]} for n in mine}


def record(tag_dir: Path, parts: list[dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Write `tag_dir/voxmix_files.json` (rank 0, after all ranks saved). `parts`: every rank's
    `hash_own_files`, gathered; None (one process) hashes every file here. -> the written object."""
    tag_dir = Path(tag_dir)
    if parts is None:
        names, _ = _walk(tag_dir)
        digests = _digests(tag_dir, names)
        files = {n: {"size": (tag_dir / n).stat().st_size, "sha256": digests[n]} for n in names}
    else:
        files = {}
        for part in parts:
            files.update(part)
    obj = {"version": VERSION, "tag": tag_dir.name, "files": dict(sorted(files.items()))}
    atomic_write_json(tag_dir / FILES, obj)
    return obj


def _read_json(path: Path, missing: str) -> Any:
    """The decoded JSON file; CheckpointError `missing` when it is absent, naming it when corrupt."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"--resume: {missing}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"--resume: {path} is corrupt ({type(err).__name__}: {err})") from None


def latest_tag(ckpt_dir: Path) -> tuple[str, Path]:
    """(tag, tag_dir) named by `ckpt_dir/latest.json`, checked to be a plain folder name inside `ckpt_dir`."""
    latest = Path(ckpt_dir) / LATEST
    info = _read_json(latest, f"no checkpoint to resume from: {latest} does not exist")
    tag = info.get("tag") if isinstance(info, dict) else None
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise CheckpointError(
            f"--resume: {latest}: field 'tag' = {tag!r} is not a checkpoint name of this run (expected "
            f"step_<digits>, a folder directly inside {latest.parent}); refusing to load it"
        )
    tag_dir = latest.parent / tag
    if tag_dir.is_symlink() or not tag_dir.is_dir():
        what = "is a symlink" if tag_dir.is_symlink() else "does not exist"
        raise CheckpointError(
            f"--resume: {latest}: field 'tag' = {tag!r} names {tag_dir}, which {what}; refusing to load it"
        )
    return tag, tag_dir


def _read_list(tag: str, tag_dir: Path) -> dict[str, dict[str, Any]]:
    path = tag_dir / FILES
    obj = _read_json(path, f"checkpoint {tag} is incomplete: {path} is missing")
    if not isinstance(obj, dict) or "version" not in obj:
        raise CheckpointError(
            f"--resume: {path} has no 'version': checkpoint {tag} was written by an older voxmix that "
            "recorded file sizes only (no sha256) and pickled its RNG states, so it cannot be checked "
            "before it is unpickled and is not loaded. Start the run again in a new --out (or move "
            f"{tag_dir.parent.parent} aside), or resume it with the voxmix version that wrote it if you "
            "trust this folder"
        )
    files = obj.get("files")
    ok = obj["version"] == VERSION and isinstance(files, dict)
    ok = ok and all(
        isinstance(v, dict)
        and isinstance(v.get("size"), int)
        and isinstance(v.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", v["sha256"])
        for v in files.values()
    )
    if not ok:
        raise CheckpointError(
            f"--resume: {path}: expected version {VERSION} with 'files': {{name: {{size, sha256}}}}, "
            f"got version {obj.get('version')!r}; refusing checkpoint {tag}"
        )
    return files


def _allowed_globals() -> list[Any]:
    import importlib

    return [getattr(importlib.import_module(mod), name) for mod, name in DEEPSPEED_GLOBALS]


def check_pickle(path: Path) -> None:
    """Unpickle `path` with torch's restricted unpickler (tensor data memory-mapped, not read); a global
    outside torch's safe set and DEEPSPEED_GLOBALS raises CheckpointError naming it."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"references {found.group(1)}" if found else "holds objects"
        raise CheckpointError(
            f"--resume: checkpoint file {path} is refused: its pickle {what}, which is not among the "
            "tensors and DeepSpeed classes a checkpoint holds, and unpickling it could run code. Nothing "
            "was loaded. Delete that checkpoint, or start the run again in a new --out"
        ) from None
    except Exception as err:  # torch raises RuntimeError/ValueError/EOFError... for unreadable files
        raise CheckpointError(
            f"--resume: checkpoint file {path} is unreadable ({type(err).__name__}: {str(err)[:300]})"
        ) from None


def verify(ckpt_dir: Path) -> tuple[str, Path]:
    """Every check of the module docstring, nothing unpickled without restriction. -> (tag, tag_dir)."""
    tag, tag_dir = latest_tag(ckpt_dir)
    files = _read_list(tag, tag_dir)
    for name in files:
        parts = Path(name).parts
        if Path(name).is_absolute() or not parts or ".." in parts:
            raise CheckpointError(f"--resume: {tag_dir / FILES}: file name {name!r} is outside {tag_dir}")
    names, links = _walk(tag_dir)
    if links:
        raise CheckpointError(f"--resume: checkpoint {tag_dir} holds symlinks {links}; refusing to load it")
    missing = sorted(set(files) - set(names))
    if missing:
        raise CheckpointError(f"--resume: checkpoint file {tag_dir / missing[0]} is missing")
    extra = sorted(set(names) - set(files))
    if extra:
        raise CheckpointError(
            f"--resume: checkpoint {tag_dir} holds {extra}, not recorded in {FILES} when it was saved; "
            "refusing to load it (remove the file if you put it there)"
        )
    for name, rec in files.items():
        size = (tag_dir / name).stat().st_size
        if size != rec["size"]:
            raise CheckpointError(
                f"--resume: checkpoint file {tag_dir / name} is corrupt: {size} bytes, saved with {rec['size']}; "
                f"{_FIX}"
            )
    for name, digest in _digests(tag_dir, sorted(files)).items():
        if digest != files[name]["sha256"]:
            raise CheckpointError(
                f"--resume: checkpoint file {tag_dir / name} is corrupt: sha256 {digest} differs from "
                f"{files[name]['sha256']} recorded when it was saved; {_FIX}"
            )
    for name in sorted(files):
        if name.endswith(".pt"):
            check_pickle(tag_dir / name)
    return tag, tag_dir
