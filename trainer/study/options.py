"""Typed options of the study: the sweep (`SweepOptions`) and the demo (`DemoOptions`).

The command lines (trainer/sweep.py, scripts/demo.py) only fill these in; every check of a value lives
in `__post_init__`, so a library caller gets the same errors as a user of the command.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCHERS = ("local", "slurm")
DOWNSTREAM = ("auto", "yes", "no")
# ct_abdomen_twin: the positive control (same generator as ct_abdomen); mri_brain vs ct_abdomen: the
# negative one (no shared anatomy). trainer/study/compare.py states the rules both are judged by.
DEMO_DOMAINS = ("ct_abdomen", "ct_abdomen_twin", "ct_chest", "mri_brain", "pet_wholebody")
# Held-out crops per domain in every evaluation (the trainer's eval.crops_per_domain; its preset has 8).
# More crops lower the evaluation noise that the law fit and the seed comparison see, at a cost of one
# forward pass per crop and evaluation. Measured on the demo's phantoms (a 750-step model, 1 thread):
# se/loss 3-6% at 8 crops, 1.0-2.7% at 64, 0.75-1.9% at 128 (0.6 s per evaluation of 4 domains); 128
# reaches ~1% except ct_chest, whose few validation volumes differ (hence 24 volumes per domain).
EVAL_CROPS = 128
DEMO_PER_DOMAIN = 24
# Samples per pilot, chosen so that `make demo` fits 15 min on 2 cores. Estimate from the previous demo
# (tiny preset ~165 samples/s per one-thread process, two at a time; ~15-20 s per launch) and a shrunken
# run of this one (evaluation ~1 s per point at 64 crops x 5 domains; the fit with --bootstrap 20 took
# 104 s on the 60 points of 15 pilots under load, so ~150 s for the 120 points here): 5 domains, pairs
# design = 5 + 10 fit + 3 validation = 18 pilots = 9 waves of (P/165 + 25) s; finals 2 x 3 seeds at 4P
# = 3 waves of (4P/165 + 23) s; fit ~150 s, phantoms, ingest, allocation, report ~30 s.
# Total ~ 21 P/165 + 474 s: P = 2400 gives ~780 s (13 min), P = 3200 ~880 s (too close to 15 min).
DEMO_PILOT_SAMPLES = 2400


class StudyError(ValueError):
    """Bad input or a failed stage of a study; the message names the option, file or run."""


class SweepError(StudyError):
    """Bad input to the sweep (plan, options): the message names the file and field."""


def _default_deepspeed() -> str:
    # The launcher of the interpreter's own environment, so that a venv's trainer is the one started.
    return str(Path(sys.executable).with_name("deepspeed"))


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    plan: Path
    """plan.json (`voxmix.plan/1`, written by `lawfit plan` or a study's stage)."""
    runs_dir: Path
    """One folder per run: <runs_dir>/<run_id>/runlog.jsonl; the sweep's own files in <runs_dir>/_sweep/."""
    manifest: Path
    """manifest.jsonl of the ingested data."""
    config: Path = Path("configs/tiny.yaml")
    """Trainer preset (YAML)."""
    overrides: tuple[str, ...] = ()
    """Trainer overrides `section.field=value`, passed to every run as `--set`."""
    launcher: str = "local"
    """"local" (subprocesses on this machine) or "slurm" (one job array)."""
    gpus_per_run: int = 1
    """GPUs (or CPU processes without a GPU) per run."""
    parallel: int = 0
    """Runs at once; 0: every GPU group (1 on CPU), or the whole array on SLURM."""
    retries: int = 1
    """Retries of a failed run before it is reported as failed."""
    only: tuple[str, ...] = ()
    """Run only these run ids of the plan (empty: all)."""
    sbatch: tuple[str, ...] = ()
    """Extra `#SBATCH` lines, e.g. `--partition=gpu`."""
    deepspeed: str = field(default_factory=_default_deepspeed)
    """The DeepSpeed launcher (a path or a name on PATH)."""
    dry_run: bool = False
    """Print the commands (or the sbatch script) only; nothing is started or written."""
    rerun_stale: bool = False
    """Move a stale run (finished, or interrupted, with other settings than the plan's) aside to
    `<id>.staleN/` and run it again; without it (or `keep_stale`), stale runs are reported and the sweep
    exits 1."""
    keep_stale: bool = False
    """Accept stale runs as they are (still listed, with their differences); they count as done."""

    def __post_init__(self) -> None:
        self._check_text()
        if self.rerun_stale and self.keep_stale:
            raise SweepError("--rerun-stale and --keep-stale exclude each other: choose one")
        if self.launcher not in LAUNCHERS:
            raise SweepError(f"--launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}")
        if self.gpus_per_run < 1:
            raise SweepError(f"--gpus-per-run must be >= 1, got {self.gpus_per_run}")
        if self.parallel < 0:
            raise SweepError(f"--parallel must be >= 0, got {self.parallel}")
        if self.retries < 0:
            raise SweepError(f"--retries must be >= 0, got {self.retries}")
        if any(not x for x in self.only):
            raise SweepError("--only: empty run id")

    def _check_text(self) -> None:
        """No control character in any value that reaches a command line or the SLURM script: there a
        newline would start a new script line (an `#SBATCH` directive or a command of its own)."""
        values = [("--sbatch", x) for x in self.sbatch] + [("--set", x) for x in self.overrides]
        values += [("--only", x) for x in self.only] + [("--deepspeed", self.deepspeed)]
        values += [
            ("--" + k.replace("_", "-"), str(getattr(self, k))) for k in ("plan", "runs_dir", "manifest")
        ]
        values.append(("--config", str(self.config)))
        for flag, value in values:
            bad = sorted({c for c in value if ord(c) < 32 or ord(c) == 127})
            if bad:
                raise SweepError(
                    f"{flag} {value!r}: control character(s) {bad} are not allowed (they would break the "
                    "command line or the SLURM script)"
                )

    @property
    def summary_name(self) -> str:
        """A sweep of a subset (a SLURM array task) writes its own summary, never the whole plan's."""
        return "summary.json" if not self.only else f"summary.{'+'.join(self.only)}.json"


def _split_domains(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Space- or comma-separated names, as `python -m trainer.phantoms --domains` accepts them."""
    return tuple(d.strip() for item in items for d in item.split(",") if d.strip())


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: Path = REPO / "demo"
    """Output folder; every stage writes below it."""
    fresh: bool = False
    """Delete the output folder first and start over."""
    domains: tuple[str, ...] = DEMO_DOMAINS
    """Phantom domains (space- or comma-separated names of voxmix.trainer.data.phantoms)."""
    per_domain: int = DEMO_PER_DOMAIN
    """Phantom volumes per domain."""
    size: int = 48
    """Phantom grid side (voxels)."""
    config: Path = Path("configs/tiny.yaml")
    """Trainer preset; a relative path is relative to the repository."""
    pilot_samples: int = DEMO_PILOT_SAMPLES
    """Samples per pilot run (a multiple of the preset's global batch, 8 for tiny)."""
    scales: tuple[float, ...] = (4.0,)
    """Final budgets = each scale x the largest pilot (unseen by the pilots: every scale > 1.25)."""
    final_seeds: int = 3
    """Seeds of each final allocation (o.seed, o.seed + 1, ...): the measured gain's interval needs >= 2."""
    eval_crops: int = EVAL_CROPS
    """Held-out crops per domain and evaluation (trainer override eval.crops_per_domain)."""
    evals: int = 8
    """Evaluation points per pilot run."""
    min_eval: int = 400
    """First pilot evaluation (samples); 0: the plan's own points."""
    final_evals: int = 5
    """Evaluation points per final run."""
    parallel: int = 2
    """Runs at once in the pilot and final sweeps (one thread each on CPU)."""
    bootstrap: int = 20
    """Bootstrap resamples of the law fit."""
    workers: int = 2
    """Processes of the law fit."""
    ingest_workers: int = 2
    """Processes of the ingest."""
    seed: int = 0
    """Seed of the phantoms, the plan (mixtures, run seeds), the fit and the allocation."""
    overrides: tuple[str, ...] = ()
    """Trainer overrides `section.field=value` for every run, after the demo's own."""
    report: bool = True
    """Write the lawfit report figures (report/)."""
    downstream: str = "auto"
    """Fine-tune both final encoders: "yes", "no", or "auto" (if the demo took < time_budget)."""
    downstream_seeds: int = 3
    """Seeds of the downstream comparison (3: the paired test needs >= 2 degrees of freedom)."""
    time_budget: float = 300.0
    """auto: run the downstream step only if the demo took less (seconds)."""

    def __post_init__(self) -> None:
        # Imported here: the sweep's command line reads this module and needs none of the phantom stack.
        from voxmix.trainer.data.phantoms import DOMAINS as PHANTOM_DOMAINS

        object.__setattr__(self, "domains", _split_domains(self.domains))
        bad = [d for d in self.domains if d not in PHANTOM_DOMAINS]
        if bad or not self.domains:
            raise StudyError(f"--domains: unknown {bad}; choose from {list(PHANTOM_DOMAINS)}")
        if len(set(self.domains)) != len(self.domains):
            raise StudyError(f"--domains: duplicate names in {list(self.domains)}")
        self._check_counts()
        self._check_scales()
        if self.downstream not in DOWNSTREAM:
            raise StudyError(f"--downstream must be one of {list(DOWNSTREAM)}, got {self.downstream!r}")

    def _check_counts(self) -> None:
        lower = {
            "per_domain": 1, "size": 16, "pilot_samples": 1, "evals": 1, "min_eval": 0, "final_evals": 1,
            "parallel": 0, "bootstrap": 0, "workers": 0, "ingest_workers": 1, "downstream_seeds": 1,
            "final_seeds": 1, "eval_crops": 1,
        }  # fmt: skip
        for name, lo in lower.items():
            if getattr(self, name) < lo:
                flag = "--" + name.replace("_", "-")
                raise StudyError(f"{flag} ({name}) must be >= {lo}, got {getattr(self, name)}")
        if not self.time_budget >= 0:
            raise StudyError(f"--time-budget (time_budget) must be >= 0, got {self.time_budget}")

    def _check_scales(self) -> None:
        object.__setattr__(self, "scales", tuple(sorted(float(s) for s in self.scales)))
        # The final runs are evaluated from 1.25x the largest pilot on: a budget at or below that has no
        # unseen point to compare with.
        ok = all(s > 1.25 for s in self.scales) and len(set(self.scales)) == len(self.scales)
        if not (self.scales and ok):
            raise StudyError(f"--scales (scales) must be distinct numbers > 1.25, got {list(self.scales)}")

    @property
    def config_path(self) -> Path:
        """The preset as the trainer gets it: the demo always ran from the repository root."""
        return self.config if self.config.is_absolute() else REPO / self.config

    @property
    def trainer_overrides(self) -> tuple[str, ...]:
        # Checkpoints only at the end: the sweep retries a failed pilot from scratch, and it is seconds
        # long. Constant lr after warm-up (WSD without its decay): every evaluation of a pilot, and the
        # final runs' intermediate points, then lie on one curve, which is what the laws describe.
        # eval.crops_per_domain before the user's overrides, so that --set can still change it.
        return (
            "checkpoint.every_steps=1000000",
            "optim.decay_frac=0",
            f"eval.crops_per_domain={self.eval_crops}",
            *self.overrides,
        )
