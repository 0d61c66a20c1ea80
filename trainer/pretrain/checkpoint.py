"""Checkpoints: DeepSpeed save/load plus the trainer's own state, safe against SIGKILL at any moment.

Layout under `<out>/checkpoints/`:
  step_000040/            DeepSpeed's files for tag `step_000040` (model, optimizer shards, lr scheduler)
  step_000040/voxmix_rank{r}.pt   per-rank RNG states (torch, CUDA, numpy, python, the mask generator)
  step_000040/voxmix_files.json   size of every file of the tag, written after all ranks finished
  latest.json             {"tag", "step", ...}: written last, atomically (temp + rename)

`latest.json` only ever names a tag whose files are all on disk (it is replaced after a barrier that
follows every rank's save), so a kill mid-save leaves the previous checkpoint as the last good one.
DeepSpeed's own `latest` file is not used: it is written in place, not atomically.

`CheckpointManager` is the training loop's view: when a save is due, what the trainer adds to DeepSpeed's
state (loader position, evaluations done), and where the last good checkpoint is.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxmix.formats.io import atomic_write_bytes, atomic_write_json
from voxmix.trainer.pretrain.state import TrainState, every

LATEST = "latest.json"
DIRNAME = "checkpoints"
"""A run's checkpoints live in <run>/checkpoints/: the trainer writes there, the sweep looks there."""
FILES = "voxmix_files.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the file."""


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def rng_state(mask_gen: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "mask_generator": mask_gen.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], mask_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    mask_gen.set_state(state["mask_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
    _barrier()
    if rank == 0:
        files = {
            str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*")) if p.is_file()
        }
        atomic_write_json(tag_dir / FILES, files)
        atomic_write_json(
            ckpt_dir / LATEST, {"tag": tag, "step": step, "world_size": client_state.get("world_size")}
        )
        tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name != tag)
        for old in tags[: max(0, len(tags) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return tag_dir


def find_latest(ckpt_dir: Path) -> tuple[str, Path]:
    """-> (tag, tag_dir) of the last complete checkpoint; CheckpointError naming the file otherwise."""
    latest = Path(ckpt_dir) / LATEST
    try:
        info = json.loads(latest.read_text(encoding="utf-8"))
        tag = info["tag"]
    except FileNotFoundError:
        raise CheckpointError(f"--resume: no checkpoint to resume from: {latest} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"--resume: {latest} is corrupt ({type(err).__name__}: {err})") from None
    tag_dir = latest.parent / str(tag)
    files_path = tag_dir / FILES
    try:
        files = json.loads(files_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"--resume: checkpoint {tag} named by {latest} is incomplete: {files_path} is missing"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"--resume: {files_path} is corrupt ({err})") from None
    for name, size in files.items():
        p = tag_dir / name
        if not p.is_file():
            raise CheckpointError(f"--resume: checkpoint file {p} is missing")
        if p.stat().st_size != size:
            raise CheckpointError(
                f"--resume: checkpoint file {p} is corrupt: {p.stat().st_size} bytes, saved with {size}"
            )
    return tag, tag_dir


def load(engine, ckpt_dir: Path, mask_gen: torch.Generator, *, rank: int) -> dict:
    """Load the last complete checkpoint into `engine` and the RNGs; -> the trainer's client state."""
    tag, tag_dir = find_latest(ckpt_dir)
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
    try:
        state = torch.load(rng_file, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"--resume: checkpoint file {rng_file} is corrupt: {err}") from err
    set_rng_state(state, mask_gen)
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

    @property
    def latest_path(self) -> Path:
        return self.dir / LATEST

    def due(self, step: int, *, final: bool = False) -> bool:
        """A save after optimizer step `step`: every `checkpoint.every_steps` steps and at the end."""
        return every(step, self.every_steps, final=final)

    def latest(self) -> tuple[str, Path]:
        """(tag, tag_dir) of the last complete checkpoint; CheckpointError naming the file otherwise."""
        return find_latest(self.dir)

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
        client = load(engine, self.dir, self.mask_gen, rank=self.rank)
        loader.load_state_dict(client["loader"])
        return list(client["evals_done"])
