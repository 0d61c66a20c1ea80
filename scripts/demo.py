"""`make demo`: the whole voxmix study on phantoms, on a laptop CPU (docs/guide.md runs it on real data).

phantoms -> ingest -> lawfit plan -> pilot sweep (real `deepspeed` launches) -> lawfit fit -> allocate
(budget = 4x the largest pilot) -> two final runs, proportional and transfer-aware (same seed, same
steps) -> table of predicted vs measured held-out loss, measured gain, r, hub/island class -> lawfit
report figures + demo/report.md.

    .venv/bin/python scripts/demo.py [--out demo] [--fresh] [--pilot-samples 3000] ...

Each stage leaves a stamp in <out>/.stages/; a rerun skips finished stages (the sweep also skips finished
runs), `--fresh` starts over. The numbers printed are the measured ones, whichever allocation wins.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from demo_report import compare, table  # noqa: E402

from voxmix.formats.io import atomic_write_json, atomic_write_text  # noqa: E402

PY = sys.executable
DOMAINS = ["ct_abdomen", "ct_chest", "mri_brain", "pet_wholebody"]
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[demo {time.monotonic() - T0:6.1f} s] {msg}", flush=True)


def sh(cmd: list[str], *, quiet: bool = False) -> None:
    """Run one step of the study; a failure stops the demo with the command and its exit code."""
    res = subprocess.run(cmd, cwd=REPO, capture_output=quiet, text=True)
    if res.returncode != 0:
        if quiet:
            sys.stderr.write((res.stdout or "")[-4000:] + (res.stderr or "")[-4000:])
        raise SystemExit(f"demo: step failed (exit {res.returncode}): {' '.join(cmd)}")


class Stages:
    """Stamp files: a finished stage is skipped on the next run unless --fresh."""

    def __init__(self, out: Path):
        self.dir = out / ".stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, fn) -> None:
        stamp = self.dir / f"{name}.done"
        if stamp.exists():
            say(f"{name}: done earlier ({stamp.read_text().strip()}), skipped")
            return
        t = time.monotonic()
        say(f"{name}: start")
        fn()
        took = f"{time.monotonic() - t:.1f} s"
        atomic_write_text(stamp, took + "\n")
        say(f"{name}: finished in {took}")


def train_counts(manifest: Path) -> dict[str, int]:
    from voxmix.formats.manifest import read_manifest

    m = read_manifest(manifest)
    return {d: len(m.select(domain=d, split="train")) for d in m.domains()}


def allocation_file(path: Path, samples: dict[str, int]) -> None:
    total = sum(samples.values())
    atomic_write_json(
        path,
        {
            "format": "voxmix.allocation/1",
            "budget": {"samples": total},
            "domains": {d: {"weight": n / total, "samples": int(n)} for d, n in sorted(samples.items())},
        },
    )


def final_plan(path: Path, allocs: dict[str, dict[str, int]], pilot: int, seed: int, n_evals: int) -> None:
    """Both final runs in one `voxmix.plan/1`: same budget, seed and evaluation points (all beyond the pilots)."""
    budget = sum(next(iter(allocs.values())).values())
    pts = np.unique(np.round(np.geomspace(1.25 * pilot, budget, n_evals)).astype(int)).tolist()
    runs = [
        {
            "run_id": f"final-{name}",
            "role": "final",
            # samples / budget reproduces the integer counts exactly under largest-remainder rounding
            "mixture": {d: n / budget for d, n in s.items()},
            "budget_samples": budget,
            "eval_at": pts,
            "seed": seed,
        }
        for name, s in allocs.items()
    ]
    doms = sorted(next(iter(allocs.values())))
    atomic_write_json(path, {"format": "voxmix.plan/1", "domains": doms, "runs": runs, "warnings": []})


def downstream(a, out: Path, st: Stages, encs: list[Path]) -> None:
    """Fine-tune both final encoders (issue 7's quick protocol, ~1 min) when it exists and time allows."""
    cmd = [
        PY,
        "-m",
        "trainer.compare_encoders",
        *map(str, encs),
        "--names",
        "proportional,transfer_aware",
        "--quick",
        "--scratch",  # the control: a random encoder of the same architecture
        "--seeds",
        str(a.downstream_seeds),
        "--phantoms",
        str(out / "downstream"),
        "--out",
        str(out / "downstream" / "comparison.json"),
    ]
    have = (REPO / "trainer" / "compare_encoders.py").exists()
    spent = time.monotonic() - T0
    if have and (a.downstream == "yes" or (a.downstream == "auto" and spent < a.time_budget)):
        st.run("downstream", lambda: sh(cmd))
    elif have:
        why = (
            "--downstream no"
            if a.downstream == "no"
            else f"{spent:.0f} s spent >= --time-budget {a.time_budget:g}"
        )
        say(
            f"downstream comparison skipped ({why}); run it with:\n  {' '.join(cmd)}\n  (`make demo-full` does)"
        )
    else:
        say("downstream fine-tuning of the two encoders: trainer/compare_encoders.py is not installed here")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "demo"), help="output folder (default demo/)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder and start over")
    p.add_argument("--domains", nargs="+", default=DOMAINS, help="phantom domains (default: four)")
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


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out).resolve()
    if a.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    st = Stages(out)
    data, runs, final = out / "data", out / "runs", out / "final"
    # Checkpoints only at the end: the sweep retries a failed pilot from scratch, and it is seconds long.
    # Constant lr after warm-up (WSD without its decay): every evaluation of a pilot, and the final runs'
    # intermediate points, then lie on one curve, which is what the laws describe.
    tset = ["checkpoint.every_steps=1000000", "optim.decay_frac=0", *a.set]
    sets = [x for s in tset for x in ("--set", s)]
    say(f"output in {out}; {len(a.domains)} domains, pilots of {a.pilot_samples} samples, final x{a.scale:g}")

    st.run(
        "phantoms",
        lambda: sh(
            [
                PY,
                "-m",
                "trainer.phantoms",
                "--out",
                str(out / "phantoms"),
                "--domains",
                *a.domains,
                "--per-domain",
                str(a.per_domain),
                "--size",
                str(a.size),
                "--seed",
                str(a.seed),
            ],
            quiet=True,
        ),
    )
    st.run(
        "ingest",
        lambda: sh(
            [
                PY,
                "-m",
                "trainer.ingest",
                "--spec",
                str(out / "phantoms" / "dataset.yaml"),
                "--out",
                str(data),
                "--workers",
                "2",
                "--quiet",
            ]
        ),
    )

    def plan():
        unique = train_counts(data / "manifest.jsonl")
        n_runs = len(unique) + max(2, len(unique) // 2) + 2  # lawfit plan's design (docs/lawfit.md)
        # lawfit plan splits pilot_fraction x target over its runs and caps the fraction at 1: plan the
        # target n_runs x pilot so that each pilot gets exactly --pilot-samples; the final budget is set below.
        sh(
            [
                PY,
                "-m",
                "lawfit",
                "plan",
                "--domains",
                *sorted(unique),
                "--unique",
                *[f"{d}={n}" for d, n in sorted(unique.items())],
                "--target-budget",
                str(n_runs * a.pilot_samples),
                "--pilot-fraction",
                "1",
                "--evals",
                str(a.evals),
                "--seed",
                str(a.seed),
                "-o",
                str(out / "plan.json"),
            ]
        )
        if a.min_eval:
            # The first tens of optimizer steps are the MAE loss's plateau near 1 (warm-up), not the power
            # law: evaluate each pilot from --min-eval samples on, at as many log-spaced points as planned.
            obj = json.loads((out / "plan.json").read_text())
            for r in obj["runs"]:
                n = r["budget_samples"]
                r["eval_at"] = np.unique(
                    np.round(np.geomspace(min(a.min_eval, n), n, a.evals)).astype(int)
                ).tolist()
            atomic_write_json(out / "plan.json", obj)

    st.run("plan", plan)
    st.run(
        "pilots",
        lambda: sh(
            [
                PY,
                "-m",
                "trainer.sweep",
                str(out / "plan.json"),
                "--runs-dir",
                str(runs),
                "--config",
                a.config,
                "--manifest",
                str(data / "manifest.jsonl"),
                "--parallel",
                str(a.parallel),
                *sets,
            ]
        ),
    )
    plan_obj = json.loads((out / "plan.json").read_text())
    fit_dirs = [str(runs / r["run_id"]) for r in plan_obj["runs"] if r["role"] == "fit"]
    st.run(
        "fit",
        lambda: sh(
            [
                PY,
                "-m",
                "lawfit",
                "fit",
                *fit_dirs,
                "--bootstrap",
                str(a.bootstrap),
                "--workers",
                str(a.workers),
                "--seed",
                str(a.seed),
                "--quiet",
                "-o",
                str(out / "laws.json"),
            ]
        ),
    )
    pilot_max = max(r["budget_samples"] for r in plan_obj["runs"])
    budget = int(round(a.scale * pilot_max / 8)) * 8  # whole global batches of the tiny preset
    st.run(
        "allocate",
        lambda: sh(
            [
                PY,
                "-m",
                "lawfit",
                "allocate",
                str(out / "laws.json"),
                "--budget-samples",
                str(budget),
                "--seed",
                str(a.seed),
                "-o",
                str(out / "allocation.json"),
            ]
        ),
    )

    def finals():
        alloc = json.loads((out / "allocation.json").read_text())
        ta = {d: e["samples"] for d, e in alloc["domains"].items()}
        prop = {d: e["samples"] for d, e in alloc["baselines"]["proportional"]["domains"].items()}
        allocation_file(out / "allocation_proportional.json", prop)
        final_plan(
            out / "final_plan.json",
            {"proportional": prop, "transfer_aware": ta},
            pilot_max,
            a.seed,
            a.final_evals,
        )
        sh(
            [
                PY,
                "-m",
                "trainer.sweep",
                str(out / "final_plan.json"),
                "--runs-dir",
                str(final),
                "--config",
                a.config,
                "--manifest",
                str(data / "manifest.jsonl"),
                "--parallel",
                str(a.parallel),
                *sets,
            ]
        )

    st.run("final_runs", finals)
    if not a.no_report:
        st.run(
            "report",
            lambda: sh(
                [
                    PY,
                    "-m",
                    "lawfit",
                    "report",
                    str(out / "laws.json"),
                    str(out / "allocation.json"),
                    "-o",
                    str(out / "report"),
                ],
                quiet=True,
            ),
        )
    res = compare(out)
    atomic_write_json(out / "comparison.json", res)
    text = table(res)
    md = [
        "# voxmix demo: transfer-aware vs proportional allocation (phantoms, tiny model, CPU)\n",
        f"Pilots: {len(plan_obj['runs'])} runs of {pilot_max} samples ({len(fit_dirs)} fitted, the rest held "
        f"out); final budget {budget} samples ({a.scale:g}x the largest pilot), both final runs with seed "
        f"{a.seed} and the same number of steps. Losses: mean normalized-pixel MAE loss on each domain's fixed "
        "held-out crops. Gain = (proportional - transfer-aware) / proportional; reducible: divided by "
        "(proportional - E) with E the fitted irreducible loss.\n",
        text,
        "Figures and the laws' own report: [report/report.md](report/report.md). Data: `comparison.json`, "
        "`laws.json`, `allocation.json`, run logs in `runs/` and `final/`.\n",
    ]
    atomic_write_text(out / "report.md", "\n".join(md))
    print("\n" + text)
    say(f"wrote {out / 'report.md'}")
    downstream(a, out, st, [final / f"final-{n}" / "encoder.pt" for n in ("proportional", "transfer_aware")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
