"""`make demo-full`'s second half: the evaluation protocol on the demo's encoders (docs/downstream.md).

    .venv/bin/python scripts/evaluate_demo.py [--out demo] [--control supervised|target] [--seeds 5]
                                              [--finetune-steps 100] [--supervised-steps 1500]
    .venv/bin/python scripts/evaluate_demo.py --out study --tag _x8 --control-scale 2   # make study

1. The positive control. Round 3 (the default, `--control supervised`, docs/downstream.md): the arms'
   encoder architecture trained with a linear head on the token anatomy labels of 16 labelled phantoms
   per domain made with generator seed 1 (the evaluation set is seed 0: no evaluated volume is seen), into
   <out>/controls/supervised/encoder.pt (trainer/downstream/supervised.py; reused when present).
   Round 2 (`--control target`): per domain, an encoder pretrained on that domain alone for
   `--target-scale` times the final runs' whole budget into <out>/controls/<domain>, and round 1's
   mixture control (`--control-scale` x the final budget, <out>/control) reported as `control_mix`; each
   with `python trainer/run.py` (one process). A completed run is reused; an incomplete folder is moved
   aside (never deleted) and run anew.
2. `python -m trainer.evaluate_encoders` with the control, the proportional and transfer-aware final
   encoders (one per seed) as the two arms and their allocations, on a labelled phantom set of the demo's
   domains made in <out>/evaluation; the report goes to <out>/evaluation/report.md and evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voxmix.formats.allocation import read_allocation  # noqa: E402
from voxmix.formats.encoder import read_encoder, write_encoder  # noqa: E402
from voxmix.formats.manifest import read_manifest  # noqa: E402
from voxmix.trainer import evaluate_encoders  # noqa: E402

ARMS = ("proportional", "transfer_aware")


def _completed(run: Path) -> bool:
    log = run / "runlog.jsonl"
    if not (run / "encoder.pt").exists() or not log.exists():
        return False
    last = log.read_text(encoding="utf-8").strip().splitlines()[-1]
    return json.loads(last).get("status") == "completed"


def _train(run: Path, out: Path, mix: str, budget: int, run_id: str, what: str) -> Path:
    if _completed(run):
        print(f"control: reusing {run}", flush=True)
        return run
    if run.exists():
        aside = run.with_name(f"{run.name}.incomplete-{int(time.time())}")
        run.rename(aside)
        print(f"control: {run} was incomplete, moved to {aside}", flush=True)
    cmd = [sys.executable, str(REPO / "trainer" / "run.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
           "--manifest", str(out / "data" / "manifest.jsonl"), "--mixture", mix, "--budget-samples", str(budget),
           "--eval-at", str(budget), "--seed", "0", "--run-id", run_id, "--out", str(run),
           "--set", "eval.crops_per_domain=32", "--set", "data.num_threads=1"]  # fmt: skip
    # One OpenMP thread: with two, a second busy process makes both spin (measured 4 vs 120 samples/s).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"control: {budget} samples on {what} -> {run}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    print(f"control: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def train_controls(out: Path, scale: int, target_scale: int, tag: str) -> tuple[Path, dict[str, Path]]:
    """(round 1's mixture control, {domain: target-domain control})."""
    prop = read_allocation(out / f"allocation_proportional{tag}.json")
    mix = ",".join(f"{d}={w}" for d, w in prop.weights.items())
    mixed = _train(out / "control", out, mix, scale * prop.total, f"control-x{scale}",
                   f"the proportional mixture ({scale}x the final budget)")  # fmt: skip
    budget = target_scale * prop.total
    targets = {d: _train(out / "controls" / d, out, f"{d}=1", budget, f"control-{d}-x{target_scale}",
                         f"{d} alone ({target_scale}x the final budget)") for d in prop.weights}  # fmt: skip
    return mixed, targets


def train_supervised_control(out: Path, arm_encoder: Path, domains: list[str], steps: int) -> Path:
    """<out>/controls/supervised/encoder.pt (round 3's control), trained unless it is there (written
    atomically, so a file that exists is whole)."""
    import torch

    from voxmix.trainer.downstream.compare import make_phantom_set
    from voxmix.trainer.downstream.supervised import SupervisedConfig, train_supervised

    path = out / "controls" / "supervised" / "encoder.pt"
    if path.exists():
        print(f"control: reusing {path}", flush=True)
        return path
    # 16 per domain, generator seed 1: disjoint from the evaluation set (seed 0, 48 per domain).
    data = make_phantom_set(out / "controls" / "supervised_data", 16, 48, domains, seed=1)
    torch.set_num_threads(1)  # one thread: see _train
    blob = train_supervised(data, domains, read_encoder(arm_encoder), SupervisedConfig(steps=steps))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_encoder(path, blob["monai_vit_kwargs"], blob["state_dict"], {"supervised": blob["supervised"]})
    print(f"control: trained in {blob['supervised']['seconds']:.0f} s -> {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo", help="the demo's folder (scripts/demo.py --out)")
    p.add_argument("--control", choices=("supervised", "target"), default="supervised",
                   help="the positive control: round 3's supervised encoder, or round 2's target-domain ones")  # fmt: skip
    p.add_argument(
        "--supervised-steps", type=int, default=1500, help="training steps of the supervised control"
    )
    p.add_argument(
        "--target-scale", type=int, default=2, help="each target-domain control: this x the final budget"
    )
    p.add_argument(
        "--control-scale",
        type=int,
        default=4,
        help="mixture control (--control target): this x the final budget",
    )
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument(
        "--tag", default="", help="the final budget's tag when there are several (make study: _x8)"
    )
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    run_tag = a.tag.replace("_", "-")
    finals = {arm: sorted((out / "final").glob(f"final-{arm}{run_tag}-s[0-9]*")) for arm in ARMS}
    missing = [arm for arm, runs in finals.items() if len(runs) < 2]
    if missing or not (out / f"allocation_proportional{a.tag}.json").exists():
        print(f"{out}: run `make demo` first (final runs of {missing or list(ARMS)} and the allocations are "
              "needed; >= 2 seeds per arm)", file=sys.stderr)  # fmt: skip
        return 2
    t0 = time.perf_counter()
    domains = read_manifest(out / "data").domains()
    if a.control == "supervised":
        control = str(train_supervised_control(out, finals["proportional"][0], domains, a.supervised_steps))
        extra = []
    else:
        mixed, targets = train_controls(out, a.control_scale, a.target_scale, a.tag)
        control = ",".join(f"{d}={run}" for d, run in targets.items())
        extra = ["--encoder", f"control_mix={mixed}"]
    ev = out / "evaluation"
    args = ["--control", control, *extra, "--phantoms", str(ev), "--seeds", str(a.seeds),
            "--finetune-steps", str(a.finetune_steps), "--out", str(ev / "evaluation.json"),
            "--report", str(ev / "report.md"),
            "--allocation", f"proportional={out / f'allocation_proportional{a.tag}.json'}",
            "--allocation", f"transfer_aware={out / f'allocation{a.tag}.json'}"]  # fmt: skip
    for arm, runs in finals.items():
        args += ["--arm", f"{arm}=" + ",".join(str(r) for r in runs)]
    # The demo's own domains (make study adds mri_abdomen), every one labelled in the phantom set.
    args += ["--domains", ",".join(domains)]
    code = evaluate_encoders.main(args)
    print(f"evaluate_demo: {time.perf_counter() - t0:.0f} s in all (control included)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
