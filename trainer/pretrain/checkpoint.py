"""Checkpoints: DeepSpeed save/load plus the trainer's own state, safe against SIGKILL at any moment.

Layout under `<out>/checkpoints/`:
  step_000040/            DeepSpeed's files for tag `step_000040` (model, optimizer shards, lr scheduler)
  step_000040/voxmix_rank{r}.pt   per-rank RNG states as tensors and numbers only (torch, CUDA, NumPy,
                          Python, the mask generator), read back with `weights_only=True`
  step_000040/voxmix_files.json   size and sha256 of every file of the tag, written after all ranks finished
  latest.json             {"tag", "step", ...}: written after every rank saved, atomically (temp + rename)
  latest                  DeepSpeed's pointer (the tag as text), for DeepSpeed's tools (zero_to_fp32.py)
  zero_to_fp32.py         copied here by DeepSpeed at each save

`latest.json` only ever names a tag whose files are all on disk (it is replaced after a barrier that
follows every rank's save), so a kill mid-save leaves the previous checkpoint as the last good one.
DeepSpeed's `latest` is written by us, not by DeepSpeed (which writes it in place, not atomically, and
before the other ranks finished): atomically, after latest.json, naming the same tag. voxmix reads only
latest.json, and both files live outside the tag folders whose file lists are checked. Before anything of a
tag is loaded, `checkpoint_files.verify` checks the tag name, the file list, every sha256 and every pickle
(restricted unpickler): see that module for what is trusted.

`CheckpointManager` is the training loop's view: when a save is due, what the trainer adds to DeepSpeed's
state (loader position, evaluations done), and where the last good checkpoint is.
"""

from __future__ import annotations

import io
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxmix.formats.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from voxmix.trainer.pretrain import checkpoint_files
from voxmix.trainer.pretrain.checkpoint_files import FILES, LATEST, CheckpointError
from voxmix.trainer.pretrain.state import TrainState, every

__all__ = ["DIRNAME", "FILES", "LATEST", "CheckpointError", "CheckpointManager"]

DIRNAME = "checkpoints"
"""A run's checkpoints live in <run>/checkpoints/: the trainer writes there, the sweep looks there."""
DS_LATEST = "latest"
"""DeepSpeed's pointer file (the tag as text), beside latest.json."""


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def rng_state(mask_gen: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from, as tensors, ints, floats and None (what `weights_only` loads).

    NumPy's legacy state is ("MT19937", 624 uint32 keys, pos, has_gauss, cached_gaussian) and Python's
    is (version, 625 ints < 2**32, gauss_next): the keys go into int64 tensors, the rest stays numbers, so
    `set_rng_state` restores them bit for bit."""
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "mask_generator": mask_gen.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], mask_gen: torch.Generator) -> None:
    """Restore what `rng_state` saved; KeyError/TypeError/ValueError for anything else."""
    npy, py = state["numpy"], state["python"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    gauss = py["gauss_next"]
    random.setstate(
        (int(py["version"]), tuple(py["internal"].tolist()), None if gauss is None else float(gauss))
    )
    torch.set_rng_state(state["torch"])
    mask_gen.set_state(state["mask_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather(part: dict) -> list[dict] | None:
    """Every rank's `part` on every rank (None without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def save(
    engine, ckpt_dir: Path, step: int, client_state: dict, mask_gen: torch.Generator, *, rank: int, keep: int
) -> Path:
    """Save tag `step_<step>` on every rank, then publish it in latest.json (rank 0)."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0 and tag_dir.exists():
        shutil.rmtree(tag_dir)  # leftovers of a save that a kill interrupted; latest.json never names it
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    buf = io.BytesIO()
    torch.save(rng_state(mask_gen), buf)
    atomic_write_bytes(tag_dir / f"voxmix_rank{rank}.pt", buf.getvalue())
    _barrier()  # every rank's files are complete: their owners hash them
    parts = _gather(checkpoint_files.hash_own_files(tag_dir, rank))
    if rank == 0:
        checkpoint_files.record(tag_dir, parts)
        atomic_write_json(
            ckpt_dir / LATEST, {"tag": tag, "step": step, "world_size": client_state.get("world_size")}
        )
        # DeepSpeed's own pointer, for its tools (zero_to_fp32.py reads it); written after latest.json
        # and atomically, so it too names only a complete tag. voxmix itself never reads it.
        atomic_write_text(ckpt_dir / DS_LATEST, tag)
        tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name != tag)
        for old in tags[: max(0, len(tags) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return tag_dir


def find_latest(ckpt_dir: Path) -> tuple[str, Path]:
    """-> (tag, tag_dir) of the last complete checkpoint, verified (`checkpoint_files.verify`: name, file
    list, sha256, restricted unpickling); CheckpointError naming the file otherwise."""
    return checkpoint_files.verify(ckpt_dir)


def load_rng_file(path: Path) -> dict[str, Any]:
    """A voxmix_rank{r}.pt, tensors and numbers only (`weights_only=True`: no code runs on unpickling)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"--resume: checkpoint file {path} is corrupt: {err}") from err
    return state


def load(engine, ckpt_dir: Path, mask_gen: torch.Generator, *, rank: int, verified: tuple[str, Path]) -> dict:
    """Load checkpoint `verified` (the (tag, tag_dir) that `find_latest` checked) into `engine` and the
    RNGs; -> the trainer's client state."""
    tag, tag_dir = verified
    try:
        path, client = engine.load_checkpoint(
            str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except Exception as err:  # DeepSpeed/torch raise many types for an unreadable file
        raise CheckpointError(
            f"--resume: could not load DeepSpeed checkpoint {tag_dir}: {type(err).__name__}: {err}"
        ) from err
    if path is None or client is None:
        raise CheckpointError(f"--resume: DeepSpeed found no loadable checkpoint in {tag_dir}")
    rng_file = tag_dir / f"voxmix_rank{rank}.pt"
    if client.get("world_size") is not None and not rng_file.exists():
        raise CheckpointError(
            f"--resume: {rng_file} is missing: the checkpoint was saved with world size {client['world_size']}"
        )
    state = load_rng_file(rng_file)
    try:
        set_rng_state(state, mask_gen)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(
            f"--resume: checkpoint file {rng_file} does not hold voxmix RNG states ({type(err).__name__}: {err})"
        ) from None
    return client


@dataclass(kw_only=True)
class CheckpointManager:
    """Saves, finds and loads the checkpoints of one run under `<out>/checkpoints/` (collective: every
    rank calls `save` and `load` at the same step)."""

    dir: Path
    every_steps: int
    keep: int
    rank: int
    world_size: int
    mask_gen: torch.Generator
    verified: tuple[str, Path] | None = field(default=None, init=False)
    """(tag, tag_dir) that `latest()` verified: `load` reads exactly that, without hashing it again."""

    @property
    def latest_path(self) -> Path:
        return self.dir / LATEST

    def due(self, step: int, *, final: bool = False) -> bool:
        """A save after optimizer step `step`: every `checkpoint.every_steps` steps and at the end."""
        return every(step, self.every_steps, final=final)

    def latest(self) -> tuple[str, Path]:
        """(tag, tag_dir) of the last complete checkpoint, verified; CheckpointError naming the file."""
        self.verified = find_latest(self.dir)
        return self.verified

    def save(self, engine: Any, state: TrainState, loader: Any) -> Path:
        """Save after optimizer step `state.step` with the loader position and the evaluations done."""
        client = {
            "loader": loader.state_dict(),
            "evals_done": state.evals_done,
            "world_size": self.world_size,
            "step": state.step,
        }
        return save(engine, self.dir, state.step, client, self.mask_gen, rank=self.rank, keep=self.keep)

    def load(self, engine: Any, loader: Any) -> list[int]:
        """Restore the engine, the RNGs and the loader position; -> the evaluation points already done."""
        verified = self.verified or self.latest()
        client = load(engine, self.dir, self.mask_gen, rank=self.rank, verified=verified)
        loader.load_state_dict(client["loader"])
        return list(client["evals_done"])
