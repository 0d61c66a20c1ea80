"""The training loop behind trainer/run.py: DeepSpeed engine, evaluation schedule, run log, checkpoints.

`Trainer.run` checks its inputs, builds everything (`setup`) and runs `_train`, a list of steps over parts
that each own one concern (as torchtitan's `train()` over its checkpointer, validator and metrics
processor):

  TrainState          state.py           progress: steps, micro-batches, evaluations done/pending, loss sum
  train_step          step.py            the micro-batches of one optimizer step
  boundary_loss       step.py            the mean loss at a boundary, all-reduced; the NaN guard
  Evaluator           evaluation.py      held-out loss, NaN check, results to the sink
  CheckpointManager   checkpoint.py      save/load/latest, `due(step)`
  MetricsSink         sink.py            run log, TensorBoard and W&B (rank 0, tracking.py), console
  ThroughputWindow    metrics.py         samples/s, data wait, TFLOP/s, MFU between two boundaries

Before anything is written or the process group starts, every rank takes its run-folder lock
(runlock.py, held until `run` returns) and, with --resume, verifies the checkpoint (checkpoint_files.py)
and checks that the settings and data match the ones the run started with (resume_check.py).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxmix.formats.io import atomic_write_json
from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.trainer.pretrain.card import write_encoder_files
from voxmix.trainer.pretrain.checkpoint import DIRNAME as CHECKPOINTS
from voxmix.trainer.pretrain.checkpoint import CheckpointError, CheckpointManager
from voxmix.trainer.pretrain.config import Config, eval_schedule
from voxmix.trainer.pretrain.evaluation import EvalSet, Evaluator
from voxmix.trainer.pretrain.metrics import ThroughputWindow, peak_tflops
from voxmix.trainer.pretrain.model import MAE3D, train_flops_per_sample
from voxmix.trainer.pretrain.optim import build_optimizer, deepspeed_config
from voxmix.trainer.pretrain.resume_check import check_resume, data_digest
from voxmix.trainer.pretrain.runlock import RunFolderBusy, RunFolderLock
from voxmix.trainer.pretrain.sink import MetricsSink
from voxmix.trainer.pretrain.state import Boundary, TrainState
from voxmix.trainer.pretrain.step import BatchStream, NonFiniteLoss, boundary_loss, train_step
from voxmix.trainer.pretrain.tracking import WandbOptions, check_trackers

__all__ = ["NonFiniteLoss", "Trainer"]


def _remove_shm_buffer(rank: int) -> None:
    """Unlink this rank's shared-memory all-reduce buffer of DeepSpeed's CPU communication op.

    DeepSpeed 0.19 creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> (69 MB) for
    every CPU process and never removes it: the files outlive the run, and on this project's machine 330
    launches had filled /dev/shm (RAM) with 22 GB until training stalled in swap. Each rank removes its own
    buffer when the process exits (a killed process still leaks one)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return
    with contextlib.suppress(OSError):
        os.unlink(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}")


class Trainer:
    """One rank of a pretraining run: `run()` trains the allocation's budget and returns the exit status."""

    def __init__(
        self,
        cfg: Config,
        *,
        manifest: Any,
        alloc: Any,
        sampler: Any,
        rank: int,
        world: int,
        local_rank: int,
        resume: bool,
        run_id: str,
    ):
        self.cfg, self.manifest, self.alloc, self.sampler = cfg, manifest, alloc, sampler
        self.rank, self.world, self.resume, self.run_id = rank, world, resume, run_id
        self.out = Path(cfg.train.out)
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        prec = cfg.train.precision
        self.bf16 = (prec == "bf16") or (prec == "auto" and self.device.type == "cuda")
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.precision = "bf16" if self.bf16 else "fp32"
        self.mask_gen = torch.Generator()  # seeded per rank in `_init_process`
        self.ckpt = CheckpointManager(
            dir=self.out / CHECKPOINTS,
            every_steps=cfg.checkpoint.every_steps,
            keep=cfg.checkpoint.keep,
            rank=rank,
            world_size=world,
            mask_gen=self.mask_gen,
        )
        self.sink: MetricsSink | None = None
        self.lock: RunFolderLock | None = None

    # -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Train to the end of the budget: exit status 0, or 1 with the error on stderr (every rank)."""
        started_at = time.monotonic()  # this attempt's start: the elapsed time of the log lines
        try:
            self._preflight()
            self.setup()
            self.sink = MetricsSink(
                self.out,
                rank=self.rank,
                domains=self.alloc.domains,
                schedule=self.schedule,
                log_every=self.cfg.train.log_every,
                tensorboard=self.cfg.train.tensorboard,
                wandb=WandbOptions.from_config(self.cfg.train),
                started_at=started_at,
            )
            self._train(self.sink)
            return 0
        except (NonFiniteLoss, CheckpointError, RunFolderBusy, ValueError) as err:
            print(f"voxmix: rank {self.rank}: {err}", file=sys.stderr, flush=True)
            if self.sink is not None:
                self.sink.failed(int(getattr(getattr(self, "engine", None), "global_steps", 0)), str(err))
            return 1
        finally:
            if self.sink is not None:
                self.sink.close()
            if self.lock is not None:
                self.lock.release()  # the process exits next (main returns); in-process callers reuse the folder

    def _train(self, sink: MetricsSink) -> int:
        """Resume or start, then optimizer steps with evaluations, logs and saves at their boundaries."""
        cfg = self.cfg
        state = self._restore(sink)
        if self.resume and sink.completed and state.step >= self.total_steps:
            sink.log("the run had already completed; nothing to do")
            return state.step
        self._begin(sink, state.step)
        sink.log(
            f"{self.run_id}: {self.total_steps} steps x {cfg.data.batch_size * self.world * cfg.optim.grad_accum} "
            f"samples, world {self.world}, {self.device.type}, {self.precision}, evals at {self.eval_at}"
        )
        evaluator = self._evaluator(sink)
        self.engine.train()
        self.window.reset()
        batches = BatchStream(self.loader, self.schedule, len(self.alloc.domains))
        while state.micro_done < self.micro_steps:
            train_step(
                self.engine,
                batches,
                state,
                self.window,
                grad_accum=cfg.optim.grad_accum,
                mask_gen=self.mask_gen,
            )
            due = self._due(state, sink)
            if not due:
                continue  # the throughput window keeps accumulating until the next boundary
            train_loss = boundary_loss(state, world=self.world, last_good=self.ckpt.latest_path)
            if due.log:
                self._report(sink, state.step, train_loss)
            if due.evals:
                evaluator(state.step, due.position)
                state.mark_evaluated(due.evals)
            if due.checkpoint:
                self.ckpt.save(self.engine, state, self.loader)
            self.window.reset()  # evaluations and saves stay out of the throughput numbers
        self._export()
        sink.completed_run(state.step)
        sink.log(f"done: {state.step} steps, {self.out}")
        return state.step

    def _preflight(self) -> None:
        """Checked on every rank before any start-up cost and before anything is written (the lock file
        aside), so all ranks stop alike and a refused run leaves its folder as it was."""
        try:
            self.lock = RunFolderLock(self.out, self.rank).acquire()
        except OSError as err:
            raise ValueError(f"--out {self.out}: cannot create the run folder's lock: {err}") from None
        self._plan_steps(len(self.sampler) // (self.cfg.data.batch_size * self.world))
        if self.resume:
            self.ckpt.latest()  # name, file list, sha256, restricted unpickling: before anything loads
            check_resume(
                self.out,
                config=self.cfg.to_dict(),
                defaults=Config().to_dict(),
                identity={**self._start_fields(), "world_size": self.world},
            )
        elif (self.out / RUNLOG).exists():
            raise ValueError(
                f"{self.out / RUNLOG} exists: pass --resume to continue that run, or choose another --out"
            )
        check_trackers(self.cfg.train)  # on every rank: a missing package stops all ranks alike

    def _begin(self, sink: MetricsSink, step: int) -> None:
        """`sink.begin` on every rank; rank 0 opens the trackers there, and W&B may refuse (not logged in,
        server unreachable). Every rank learns whether rank 0 started, so that all stop alike instead of
        the others waiting for it in the first all-reduce of training."""
        failure: Exception | None = None
        try:
            sink.begin(
                config=self.cfg.to_dict(), world_size=self.world, start=self._start_fields(), step=step
            )
        except Exception as err:
            failure = err
        flag = torch.tensor([failure is not None], dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if failure is not None:
            raise failure
        if flag.item():  # CPU-GPU sync, once per run
            raise ValueError("rank 0 could not start the run (its error is above): nothing was trained")

    def _restore(self, sink: MetricsSink) -> TrainState:
        """The state to start from: the last checkpoint's with --resume (engine, RNGs, loader restored)."""
        evals_done: list[int] = []
        if self.resume:
            evals_done = self.ckpt.load(self.engine, self.loader)
            sink.log(f"resumed at step {self.engine.global_steps}, sample position {self.loader.position}")
        return TrainState.begin(
            step=self.engine.global_steps,
            grad_accum=self.cfg.optim.grad_accum,
            eval_at=self.eval_at,
            evals_done=evals_done,
            device=self.device,
        )

    def _evaluator(self, sink: MetricsSink) -> Evaluator:
        return Evaluator(
            model=self.engine.module,
            eval_set=self.eval_set,
            sink=sink,
            rank=self.rank,
            world_size=self.world,
            batch_size=self.cfg.eval.batch_size,
            device=self.device,
            dtype=self.dtype,
            pad_to_equal=self.cfg.train.zero_stage == 3,  # ZeRO-3 gathers parameters in every forward
        )

    def _due(self, state: TrainState, sink: MetricsSink) -> Boundary:
        """What the boundary after `state.step` owes: evaluations reached, a throughput event, a save."""
        final = state.micro_done == self.micro_steps
        position = self.loader.position
        return Boundary(
            step=state.step,
            position=position,
            evals=state.due_evals(position),
            log=sink.due(state.step, final=final),
            checkpoint=self.ckpt.due(state.step, final=final),
        )

    def _report(self, sink: MetricsSink, step: int, train_loss: float) -> None:
        rep = self.window.report()
        if rep is not None:
            sink.throughput(
                step=step,
                total_steps=self.total_steps,
                train_loss=train_loss,
                lr=self.engine.get_lr()[0],
                report=rep,
            )

    def _start_fields(self) -> dict[str, Any]:
        """Fields of the run log's `start` event (besides config and world size), in the log's order."""
        return dict(
            run_id=self.run_id,
            domains=self.alloc.domains,
            mixture=self.alloc.weights,
            budget_samples=self.budget,
            unique_samples=self.sampler.unique_samples,
            seed=self.cfg.train.seed,
            eval_at=self.eval_at,
            precision=self.precision,
            device=str(self.device),
            total_steps=self.total_steps,
            data_digest=data_digest(self.manifest, self.alloc),
        )

    # -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Process group, model, loader, step plan, DeepSpeed engine, evaluation set, meters (this order:
        the model's initialization draws from the seeded RNG first)."""
        import deepspeed

        from voxmix.trainer.data.loader import build_eval_set, build_loader

        cfg = self.cfg
        self._init_process(deepspeed)
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
        self.schedule = self.sampler.domain_ids()
        opt, sched = build_optimizer(self.model, cfg, self.total_steps)
        ds_cfg = deepspeed_config(cfg, world_size=self.world, bf16=self.bf16)
        if self.rank == 0:  # the effective config as passed to DeepSpeed (it adds its own defaults)
            atomic_write_json(self.out / "deepspeed_config.json", ds_cfg)
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
            peak=peak_tflops(self.device, self.precision, cfg.train.peak_tflops),
            device=self.device,
        )

    def _init_process(self, deepspeed: Any) -> None:
        """Device, CPU threads, the process group and the seeds (identical init on every rank)."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif "OMP_NUM_THREADS" not in os.environ:
            # CPU ranks share the cores: more threads than cores makes OpenMP spin-wait (10x slower steps
            # seen on 2 cores with 2 ranks x 2 threads). DeepSpeed's launcher sets LOCAL_SIZE.
            # The CPUs this process may use (Slurm/cgroup limits), not the machine's count.
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            torch.set_num_threads(max(1, cpus // int(os.environ.get("LOCAL_SIZE", "1"))))
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cpu":
            atexit.register(_remove_shm_buffer, self.rank)
        torch.manual_seed(cfg.train.seed)  # identical init on every rank (DeepSpeed also broadcasts)
        np.random.seed(cfg.train.seed + self.rank)
        self.mask_gen.manual_seed(cfg.train.seed * 1_000_003 + self.rank)

    def _plan_steps(self, micro: int) -> None:
        """Optimizer steps, micro-batches and trained samples of the run from its micro-batch count (the
        loader's length: whole global batches of the sampler's sequence)."""
        cfg = self.cfg
        accum = cfg.optim.grad_accum
        self.total_steps = micro // accum
        self.micro_steps = self.total_steps * accum
        step_samples = cfg.data.batch_size * self.world
        self.budget = self.micro_steps * step_samples
        if self.budget != len(self.sampler):
            warnings.warn(
                f"allocation total {len(self.sampler)} is not a multiple of batch_size x world_size x grad_accum "
                f"= {step_samples * accum}: the last {len(self.sampler) - self.budget} samples are not trained",
                stacklevel=3,
            )
        if self.total_steps < 1:
            raise ValueError(
                f"allocation total {len(self.sampler)} is smaller than one optimizer step "
                f"(data.batch_size x world size x optim.grad_accum = {step_samples * accum})"
            )
        self.eval_at = eval_schedule(self.cfg.eval, self.budget)

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

    def _export(self) -> None:
        """encoder.safetensors + encoder.pt (MONAI ViT layout), encoder.json (the card) and MODEL_CARD.md
        (rank 0); under ZeRO-3 all ranks gather the parameters first."""
        import deepspeed

        model = self.engine.module
        gather = (
            deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
            if self.cfg.train.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            if self.rank == 0:
                write_encoder_files(
                    self.out,
                    model,
                    self.cfg,
                    self.alloc,
                    self.manifest,
                    self.run_id,
                    int(self.engine.global_steps),
                    budget=self.budget,
                )
