"""The study: sweeps of planned runs and the end-to-end demo, over the lawfit and trainer APIs.

options (typed options, errors) -> resume (the pure resume/retry policy) -> launchers (local
subprocesses of the real `deepspeed` launcher, or a SLURM job array) -> sweep (`run_sweep`) ->
compare, demo (the demo's stages; `run_demo`). Imports run that way only; lawfit never imports this.
"""

from .options import DemoOptions, StudyError, SweepError, SweepOptions
from .resume import Action, Verdict, decide, settle
from .sweep import SweepResult, run_sweep

__all__ = [
    "Action",
    "DemoOptions",
    "StudyError",
    "SweepError",
    "SweepOptions",
    "SweepResult",
    "Verdict",
    "decide",
    "run_sweep",
    "settle",
]
