r"""Train the 3D MAE on an allocated data mixture (docs/training.md).

    deepspeed [--num_gpus N | --hostfile H] trainer/run.py --config configs/tiny.yaml \
        --allocation allocation.json [--manifest data/manifest.jsonl] [--out runs/NAME] [--resume]
    python trainer/run.py ...          (one process; same code path, a one-rank process group)

Writes <out>/runlog.jsonl (voxmix.runlog/1), <out>/checkpoints/, <out>/encoder.pt (MONAI ViT layout),
<out>/config.json. Exit status: 0 completed, 1 failed (bad input, NaN loss, corrupt checkpoint).
`--resume` refuses a checkpoint that fails verification (trainer/pretrain/checkpoint_files.py) and settings
or data that differ from the ones the run started with (trainer/pretrain/resume_check.py lists the few
that may change); a run folder that another trainer holds (trainer/pretrain/runlock.py) is refused.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from voxmix.trainer.cli import HelpFormatter, prog
from voxmix.trainer.pretrain.config import Config, ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=prog("trainer/run.py"), description=__doc__, formatter_class=HelpFormatter
    )
    ap.add_argument("--config", required=True, help="YAML preset (configs/NAME.yaml)")
    ap.add_argument("--allocation", help="allocation.json (voxmix.allocation/1); overrides data.allocation")
    ap.add_argument(
        "--mixture", help="instead of --allocation: weights 'ct=0.5,mri=0.5' with --budget-samples"
    )
    ap.add_argument("--manifest", help="manifest.jsonl; overrides data.manifest")
    ap.add_argument("--out", help="output folder; overrides train.out")
    ap.add_argument("--run-id", help="overrides train.run_id")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/latest.json")
    ap.add_argument("--reference", action="store_true", help="PyTorch references instead of kernels")
    ap.add_argument("--budget-samples", type=int, help="train on N samples with the allocation's weights")
    ap.add_argument("--eval-at", help="comma-separated sample counts at which to evaluate (eval.at)")
    ap.add_argument("--seed", type=int, help="overrides train.seed")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="typed override of any config field (YAML value), repeatable",
    )
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_config(args) -> Config:
    sets = list(args.set)
    for flag, key in (
        ("allocation", "data.allocation"),
        ("manifest", "data.manifest"),
        ("out", "train.out"),
        ("run_id", "train.run_id"),
        ("budget_samples", "train.budget_samples"),
        ("seed", "train.seed"),
    ):
        val = getattr(args, flag)
        if val is not None:
            sets.append(f"{key}={val}" if not isinstance(val, str) else f"{key}={val!r}")
    if args.reference:
        sets.append("model.reference=true")
    if args.eval_at:
        try:
            pts = [int(v) for v in args.eval_at.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--eval-at {args.eval_at!r}: expected comma-separated integers") from None
        sets.append(f"eval.at={pts}")
    return load_config(args.config, sets)


def _dist_env() -> tuple[int, int, int]:
    """Rank, world size, local rank from the launcher's environment; a one-rank group when absent."""
    if "RANK" not in os.environ:
        for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
            n = os.environ.get(var, "1")
            if n.isdigit() and int(n) > 1:
                # One of several srun/MPI tasks (e.g. `deepspeed --launcher slurm`) that no launcher gave a
                # rank: each would silently become its own one-rank run, all writing the same --out.
                raise ConfigError(
                    f"started as one of {n} tasks ({var}) without RANK/WORLD_SIZE (e.g. deepspeed "
                    "--launcher slurm): start one deepspeed launcher per node (scripts/slurm/train.sbatch, "
                    "docs/training.md 'Multi-node')"
                )
        with socket.socket() as s:  # plain `python trainer/run.py`: a free port for the one-rank group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def _parse_mixture(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, sep, w = item.partition("=")
        try:
            out[name.strip()] = float(w)
        except ValueError:
            raise ConfigError(f"--mixture item {item!r}: expected domain=weight") from None
        if not sep:
            raise ConfigError(f"--mixture item {item!r}: expected domain=weight")
    return out


def load_data(cfg: Config, args, rank: int, world: int):
    """Manifest, allocation (rescaled to the budget) and sampler; every mismatch raises before training."""
    from voxmix.formats.allocation import make_allocation, read_allocation
    from voxmix.formats.manifest import read_manifest
    from voxmix.trainer.data.mixture import MixtureSampler

    if not cfg.data.manifest:
        raise ConfigError("config field 'data.manifest' is empty: pass --manifest or set it in the config")
    manifest = read_manifest(cfg.data.manifest)
    if args.mixture:
        if cfg.train.budget_samples is None:
            raise ConfigError("--mixture needs --budget-samples (train.budget_samples)")
        alloc = make_allocation(_parse_mixture(args.mixture), cfg.train.budget_samples)
    else:
        if not cfg.data.allocation:
            raise ConfigError("config field 'data.allocation' is empty: pass --allocation or --mixture")
        alloc = read_allocation(cfg.data.allocation)
        if cfg.train.budget_samples is not None and cfg.train.budget_samples != alloc.total:
            # The plan's budget with the allocation's weights: the sampler then trains exactly these counts.
            alloc = make_allocation(alloc.weights, cfg.train.budget_samples)
    sampler = MixtureSampler(
        alloc, manifest, seed=cfg.train.seed, rank=rank, world_size=world, max_epochs=cfg.data.max_epochs
    )
    return manifest, alloc, sampler


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as err:
        print(f"voxmix: {err}", file=sys.stderr)
        return 1
    out = Path(cfg.train.out)
    if out.exists() and not out.is_dir():
        print(
            f"voxmix: --out {out} (train.out) exists and is not a folder: choose another --out",
            file=sys.stderr,
        )
        return 1
    try:
        rank, world, local_rank = _dist_env()
    except ConfigError as err:
        print(f"voxmix: {err}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from voxmix.trainer.pretrain.loop import (
        Trainer,  # after the accelerator is chosen: deepspeed reads it at import
    )

    try:
        manifest, alloc, sampler = load_data(cfg, args, rank, world)
    except (ValueError, OSError) as err:  # ManifestError/AllocationError are ValueErrors naming file+field
        print(f"voxmix: rank {rank}: {err}", file=sys.stderr)
        return 1
    trainer = Trainer(
        cfg,
        manifest=manifest,
        alloc=alloc,
        sampler=sampler,
        rank=rank,
        world=world,
        local_rank=local_rank,
        resume=args.resume,
        run_id=cfg.train.run_id or Path(cfg.train.out).name,
    )
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
