"""`make demo`: the whole voxmix study on phantoms, on a laptop CPU (docs/guide.md runs it on real data).

phantoms (incl. a positive control, ct_abdomen_twin) -> ingest -> lawfit plan (pairs design) -> pilot
sweep (real `deepspeed` launches) -> lawfit fit -> allocate (budget = 4x the largest pilot) -> final runs,
proportional and law-optimal, 3 seeds each -> demo/report.md: measured gain with its 95% interval over
seeds against the predicted gain and its bootstrap interval, r and MAPE on the unseen budget, transfer
matrix with intervals, hub/island classes, the controls, law form and margin, identifiability, noise,
time; lawfit report figures.

    .venv/bin/python scripts/demo.py [--out demo] [--fresh] [--pilot-samples 2400] [--final-seeds 3] ...
    .venv/bin/python scripts/demo.py --out study --scales 2,4,8 ...   # several unseen budgets (make study)

Each stage leaves a stamp in <out>/.stages/; a rerun skips finished stages (the sweep also skips finished
runs), `--fresh` starts over. The numbers printed are the measured ones, whichever allocation wins.
The stages are voxmix.trainer.study.demo; this file only turns the command line into `DemoOptions`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voxmix.formats.errors import FormatError
from voxmix.lawfit.errors import LawfitError
from voxmix.trainer.cli import HelpFormatter
from voxmix.trainer.data.ingest import SpecError
from voxmix.trainer.study.demo import run_demo
from voxmix.trainer.study.options import (
    DEMO_DOMAINS,
    DEMO_PER_DOMAIN,
    DEMO_PILOT_SAMPLES,
    EVAL_CROPS,
    REPO,
    DemoOptions,
    StudyError,
)


def _scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--out", default=str(REPO / "demo"), help="output folder")
    p.add_argument("--fresh", action="store_true", help="delete the output folder and start over")
    p.add_argument(
        "--domains",
        nargs="+",
        default=list(DEMO_DOMAINS),
        help="phantom domains",
    )
    p.add_argument(
        "--per-domain",
        type=int,
        default=DEMO_PER_DOMAIN,
        help="phantom volumes per domain",
    )
    p.add_argument("--size", type=int, default=48, help="phantom grid side (voxels)")
    p.add_argument("--config", default="configs/tiny.yaml", help="trainer preset of every run")
    p.add_argument(
        "--pilot-samples",
        type=int,
        default=DEMO_PILOT_SAMPLES,
        help="samples per pilot run (multiple of 8; the default fits the demo in 15 min on 2 cores)",
    )
    p.add_argument(
        "--scales",
        type=_scales,
        default=(4.0,),
        help="final budgets = each scale x the largest pilot, comma-separated (default 4; e.g. 2,4,8)",
    )
    p.add_argument(
        "--final-seeds", type=int, default=3, help="seeds per final allocation (>= 2 for an interval)"
    )
    p.add_argument(
        "--eval-crops",
        type=int,
        default=EVAL_CROPS,
        help="held-out crops per domain and evaluation",
    )
    p.add_argument("--evals", type=int, default=8, help="evaluation points per pilot run")
    p.add_argument(
        "--min-eval", type=int, default=400, help="first pilot evaluation (samples); 0: the plan's"
    )
    p.add_argument("--final-evals", type=int, default=5, help="evaluation points per final run")
    p.add_argument("--parallel", type=int, default=2, help="pilot runs at once (one thread each on CPU)")
    p.add_argument("--bootstrap", type=int, default=20, help="bootstrap resamples of the law fit")
    p.add_argument("--workers", type=int, default=2, help="processes of the law fit")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the phantoms, the plan (mixtures, run seeds), the fit and the allocation",
    )
    p.add_argument("--set", action="append", default=[], help="trainer override for every run")
    p.add_argument("--no-report", action="store_true", help="skip the lawfit report figures")
    p.add_argument(
        "--downstream",
        choices=("auto", "yes", "no"),
        default="auto",
        help="fine-tune both final encoders with `trainer.compare_encoders --quick` (auto: if time allows)",
    )
    p.add_argument(
        "--downstream-seeds",
        type=int,
        default=3,
        help="seeds of the downstream comparison (3: the paired test needs >= 2 degrees of freedom)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=300.0,
        help="auto: run the downstream step only if the demo took less (s)",
    )
    return p.parse_args(argv)


def options_from_args(a: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        out=Path(a.out).resolve(),
        fresh=a.fresh,
        domains=tuple(a.domains),
        per_domain=a.per_domain,
        size=a.size,
        config=Path(a.config),
        pilot_samples=a.pilot_samples,
        scales=a.scales,
        final_seeds=a.final_seeds,
        eval_crops=a.eval_crops,
        evals=a.evals,
        min_eval=a.min_eval,
        final_evals=a.final_evals,
        parallel=a.parallel,
        bootstrap=a.bootstrap,
        workers=a.workers,
        seed=a.seed,
        overrides=tuple(a.set),
        report=not a.no_report,
        downstream=a.downstream,
        downstream_seeds=a.downstream_seeds,
        time_budget=a.time_budget,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return run_demo(options_from_args(parse_args(argv)))
    except (StudyError, FormatError, LawfitError, SpecError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
