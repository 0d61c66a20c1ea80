"""`make demo`: the whole voxmix study on phantoms, on a laptop CPU (docs/guide.md runs it on real data).

phantoms -> ingest -> lawfit plan -> pilot sweep (real `deepspeed` launches) -> lawfit fit -> allocate
(budget = 4x the largest pilot) -> two final runs, proportional and transfer-aware (same seed, same
steps) -> table of predicted vs measured held-out loss, measured gain, r, hub/island class -> lawfit
report figures + demo/report.md.

    .venv/bin/python scripts/demo.py [--out demo] [--fresh] [--pilot-samples 3000] ...

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
from voxmix.trainer.data.ingest import SpecError
from voxmix.trainer.study.demo import run_demo
from voxmix.trainer.study.options import DEMO_DOMAINS, REPO, DemoOptions, StudyError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "demo"), help="output folder (default demo/)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder and start over")
    p.add_argument("--domains", nargs="+", default=list(DEMO_DOMAINS), help="phantom domains (default: four)")
    p.add_argument("--per-domain", type=int, default=16, help="phantom volumes per domain")
    p.add_argument("--size", type=int, default=48, help="phantom grid side (voxels)")
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--pilot-samples", type=int, default=6000, help="samples per pilot run (multiple of 8)")
    p.add_argument("--scale", type=float, default=4.0, help="final budget = scale x the largest pilot")
    p.add_argument("--evals", type=int, default=8, help="evaluation points per pilot run")
    p.add_argument(
        "--min-eval", type=int, default=400, help="first pilot evaluation (samples); 0: the plan's"
    )
    p.add_argument("--final-evals", type=int, default=5, help="evaluation points per final run")
    p.add_argument("--parallel", type=int, default=2, help="pilot runs at once (one thread each on CPU)")
    p.add_argument("--bootstrap", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
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
        scale=a.scale,
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
