"""The training loop behind trainer/run.py: DeepSpeed engine, evaluation schedule, run log, checkpoints."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from voxmix.formats.io import atomic_write_json
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import RunLogWriter, read_state
from voxmix.trainer.pretrain import checkpoint
from voxmix.trainer.pretrain.checkpoint import CheckpointError
from voxmix.trainer.pretrain.config import Config, eval_points
from voxmix.trainer.pretrain.evaluation import EvalSet, evaluate
from voxmix.trainer.pretrain.metrics import ThroughputWindow, peak_tflops
from voxmix.trainer.pretrain.model import MAE3D, export_encoder, train_flops_per_sample
from voxmix.trainer.pretrain.optim import build_optimizer, deepspeed_config


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: Config, *, manifest, alloc, sampler, rank, world, local_rank, resume, run_id):
        self.cfg, self.manifest, self.alloc, self.sampler = cfg, manifest, alloc, sampler
        self.rank, self.world, self.resume, self.run_id = rank, world, resume, run_id
        self.out = Path(cfg.train.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        prec = cfg.train.precision
        self.bf16 = (prec == "bf16") or (prec == "auto" and self.device.type == "cuda")
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[voxmix {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        import deepspeed

        from voxmix.trainer.data.loader import build_eval_set, build_loader

        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif "OMP_NUM_THREADS" not in os.environ:
            # CPU ranks share the cores: more threads than cores makes OpenMP spin-wait (10x slower steps
            # seen on 2 cores with 2 ranks x 2 threads). DeepSpeed's launcher sets LOCAL_SIZE.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_SIZE", "1"))))
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        torch.manual_seed(cfg.train.seed)  # identical init on every rank (DeepSpeed also broadcasts)
        np.random.seed(cfg.train.seed + self.rank)
        self.mask_gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.rank)
        self.model = MAE3D(cfg.model)

        self.loader = build_loader(
            self.manifest,
            self.sampler,
            crop=cfg.model.crop,
            batch_size=cfg.data.batch_size,
            device=str(self.device),
            backend=cfg.data.backend,
            dtype=self.dtype,
            num_threads=cfg.data.num_threads,
            seed=cfg.train.seed,
            augment=cfg.data.augment,
        )
        micro = len(self.loader)
        accum = cfg.optim.grad_accum
        self.total_steps = micro // accum
        self.micro_steps = self.total_steps * accum
        step_samples = cfg.data.batch_size * self.world
        self.budget = self.micro_steps * step_samples
        if self.budget != len(self.sampler):
            warnings.warn(
                f"allocation total {len(self.sampler)} is not a multiple of batch_size x world_size x grad_accum "
                f"= {step_samples * accum}: the last {len(self.sampler) - self.budget} samples are not trained",
                stacklevel=2,
            )
        if self.total_steps < 1:
            raise ValueError(
                f"allocation total {len(self.sampler)} is smaller than one optimizer step "
                f"(data.batch_size x world size x optim.grad_accum = {step_samples * accum})"
            )
        self.eval_at = eval_points(cfg.eval, self.budget)
        self.schedule = self.sampler.domain_ids()
        opt, sched = build_optimizer(self.model, cfg, self.total_steps)
        ds_cfg = deepspeed_config(cfg, world_size=self.world, bf16=self.bf16)
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=opt, lr_scheduler=sched, config=ds_cfg
        )
        crops = build_eval_set(
            self.manifest,
            self._eval_domains(),
            crops_per_domain=cfg.eval.crops_per_domain,
            crop=cfg.model.crop,
            seed=cfg.eval.seed,
        )
        self.eval_set = EvalSet(crops, self.model, cfg.eval.seed)
        self.flops = train_flops_per_sample(cfg.model)
        self.window = ThroughputWindow(
            domains=self.alloc.domains,
            flops_per_sample=self.flops,
            voxels_per_sample=cfg.model.crop**3,
            world_size=self.world,
            peak=peak_tflops(self.device, "bf16" if self.bf16 else "fp32", cfg.train.peak_tflops),
            device=self.device,
        )

    def _eval_domains(self) -> list[str]:
        have = [d for d in self.alloc.domains if self.manifest.select(domain=d, split="val")]
        missing = sorted(set(self.alloc.domains) - set(have))
        if missing:
            warnings.warn(f"domains without 'val' volumes are not evaluated: {missing}", stacklevel=2)
        if not have:
            raise ValueError(
                f"{self.manifest.root}: no domain of the allocation has 'val' volumes to evaluate on"
            )
        return have

    def samples_seen(self, position: int) -> dict[str, int]:
        """Global training samples per domain before sequence position `position` (no communication)."""
        counts = np.bincount(self.schedule[:position], minlength=len(self.alloc.domains))
        return {d: int(counts[i]) for i, d in enumerate(self.alloc.domains)}

    # -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.writer = None
        try:
            # Checked on every rank before any start-up cost, so all ranks stop alike.
            if self.resume:
                checkpoint.find_latest(self.ckpt_dir)
            elif (self.out / RUNLOG).exists():
                raise ValueError(
                    f"{self.out / RUNLOG} exists: pass --resume to continue that run, or choose another --out"
                )
            if self.cfg.train.tensorboard:
                self._tensorboard_class()  # on every rank: a missing package stops all ranks alike
            self.setup()
            if self.rank == 0:
                self.writer = RunLogWriter(self.out / RUNLOG)
            self._train(self.writer)
            return 0
        except (NonFiniteLoss, CheckpointError, ValueError) as err:
            print(f"voxmix: rank {self.rank}: {err}", file=sys.stderr, flush=True)
            if self.writer is not None and self.writer.path.exists():
                step = int(getattr(getattr(self, "engine", None), "global_steps", 0))
                self.writer.end(status="failed", step=step, error=str(err)[:500])
            return 1

    def _train(self, writer) -> int:
        cfg = self.cfg
        logged = read_state(self.out / RUNLOG)
        has_start, last_logged_eval, completed = (
            logged.started,
            logged.last_eval_step,
            logged.status == "completed",
        )
        evals_done: list[int] = []
        if self.resume:
            client = checkpoint.load(self.engine, self.ckpt_dir, self.mask_gen, rank=self.rank)
            self.loader.load_state_dict(client["loader"])
            evals_done = list(client["evals_done"])
            self.log(f"resumed at step {self.engine.global_steps}, sample position {self.loader.position}")
            if completed and self.engine.global_steps >= self.total_steps:
                self.log("the run had already completed; nothing to do")
                return self.engine.global_steps
        tb = self._tensorboard()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", {"config": cfg.to_dict(), "world_size": self.world})
            if not has_start:
                writer.start(
                    run_id=self.run_id,
                    domains=self.alloc.domains,
                    mixture=self.alloc.weights,
                    budget_samples=self.budget,
                    unique_samples=self.sampler.unique_samples,
                    seed=cfg.train.seed,
                    config=cfg.to_dict(),
                    world_size=self.world,
                    eval_at=self.eval_at,
                    precision="bf16" if self.bf16 else "fp32",
                    device=str(self.device),
                    total_steps=self.total_steps,
                )
        self.log(
            f"{self.run_id}: {self.total_steps} steps x {cfg.data.batch_size * self.world * cfg.optim.grad_accum} "
            f"samples, world {self.world}, {self.device.type}, {'bf16' if self.bf16 else 'fp32'}, "
            f"evals at {self.eval_at}"
        )

        def do_eval(step: int, position: int) -> None:
            loss = evaluate(
                self.engine.module,
                self.eval_set,
                rank=self.rank,
                world_size=self.world,
                batch_size=cfg.eval.batch_size,
                device=self.device,
                dtype=self.dtype,
                pad_to_equal=cfg.train.zero_stage == 3,
            )
            bad = {d: v for d, v in loss.items() if not math.isfinite(v)}
            if bad:
                raise NonFiniteLoss(f"step {step}: evaluation loss is not finite {bad}")
            if self.rank == 0 and step > last_logged_eval:
                if tb is not None:
                    for d, v in loss.items():
                        tb.add_scalar(f"eval_loss/{d}", v, position)
                writer.eval(
                    step=step, samples_seen=self.samples_seen(position), loss=loss, samples_total=position
                )
            self.log(
                f"step {step} eval at {position} samples: "
                + ", ".join(f"{d} {v:.4f}" for d, v in loss.items())
            )

        def save(step: int) -> None:
            client = {
                "loader": self.loader.state_dict(),
                "evals_done": evals_done,
                "world_size": self.world,
                "step": step,
            }
            checkpoint.save(
                self.engine,
                self.ckpt_dir,
                step,
                client,
                self.mask_gen,
                rank=self.rank,
                keep=cfg.checkpoint.keep,
            )

        loss_acc = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of losses, micro-batches)
        step = self.engine.global_steps
        # Evaluation points are sample counts >= 1: the first lands after the first optimizer step.
        pending = [p for p in self.eval_at if p not in evals_done]
        self.engine.train()
        self.window.reset()
        it = iter(self.loader)
        micro_done = step * cfg.optim.grad_accum
        while micro_done < self.micro_steps:
            before = self.loader.position
            t0 = time.perf_counter()
            x, _ = next(it)
            wait = time.perf_counter() - t0
            loss, _ = self.engine(x, generator=self.mask_gen)
            self.engine.backward(loss)
            self.engine.step()
            micro_done += 1
            loss_acc[0] += loss.detach().double()
            loss_acc[1] += 1
            # Global samples of this micro-step per domain, from the sampler's schedule (no communication).
            counts = np.bincount(
                self.schedule[before : self.loader.position], minlength=len(self.alloc.domains)
            )
            self.window.add(
                data_wait=wait, counts=counts.tolist(), optimizer_step=micro_done % cfg.optim.grad_accum == 0
            )
            if micro_done % cfg.optim.grad_accum:
                continue
            step = self.engine.global_steps
            position = self.loader.position
            due_eval = [p for p in pending if p <= position]
            due_log = step % cfg.train.log_every == 0 or micro_done == self.micro_steps
            due_ckpt = step % cfg.checkpoint.every_steps == 0 or micro_done == self.micro_steps
            if not (due_eval or due_log or due_ckpt):
                continue
            # Boundary: check the loss of every step since the last boundary before anything is saved.
            if self.world > 1:
                dist.all_reduce(loss_acc)
            train_loss = float(loss_acc[0] / loss_acc[1])  # CPU-GPU sync, once per boundary
            loss_acc.zero_()
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(
                    f"step {step}: training loss is {train_loss}; stopping. The last good checkpoint is "
                    f"{self.ckpt_dir / 'latest.json'} (parameters after this step are not saved)"
                )
            if due_log:
                rep = self.window.report()
                if rep is not None:
                    if self.rank == 0:
                        writer.throughput(step=step, train_loss=train_loss, lr=self.engine.get_lr()[0], **rep)
                        if tb is not None:
                            tb.add_scalar("train/loss", train_loss, step)
                            for k in ("samples_per_s", "data_wait_frac", "tflops_per_device", "mfu"):
                                if k in rep:
                                    tb.add_scalar(f"throughput/{k}", rep[k], step)
                    self.log(
                        f"step {step}/{self.total_steps} loss {train_loss:.4f} "
                        f"{rep['samples_per_s']:.1f} samples/s, data wait {100 * rep['data_wait_frac']:.0f}%"
                    )
            if due_eval:
                do_eval(step, position)
                evals_done += due_eval
                pending = [p for p in pending if p not in due_eval]
            if due_ckpt:
                save(step)
            self.window.reset()
        self._export()
        if tb is not None:
            tb.close()
        if self.rank == 0:
            writer.end(status="completed", step=step)
        self.log(f"done: {step} steps, {self.out}")
        return step

    def _tensorboard_class(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "config field 'train.tensorboard' = True needs the tensorboard package"
            ) from None
        return SummaryWriter

    def _tensorboard(self):
        """A SummaryWriter under <out>/tb on rank 0 when train.tensorboard is set (optional dependency)."""
        if not self.cfg.train.tensorboard or self.rank != 0:
            return None
        return self._tensorboard_class()(str(self.out / "tb"))

    def _export(self) -> None:
        """encoder.pt in MONAI ViT layout (rank 0); under ZeRO-3 all ranks gather the parameters first."""
        import contextlib

        import deepspeed

        model = self.engine.module
        gather = (
            deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
            if self.cfg.train.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            if self.rank == 0:
                export_encoder(
                    model,
                    self.out / "encoder.pt",
                    extra={"run_id": self.run_id, "step": int(self.engine.global_steps)},
                )
