"""Fine-tune a pretrained voxmix encoder on labelled downstream tasks (docs/downstream.md).

    python -m trainer.finetune --task seg|cls|all --encoder runs/X/encoder.pt --data DIR
                               [--config quick|default|FILE.yaml] [--seed 0] [--scratch] [--out R.json]

seg: UNETR (MONAI) with the encoder loaded into `UNETR.vit`, Dice + cross-entropy, sliding-window
inference, Dice per label on the validation split. cls: linear probe on frozen features (and full
fine-tuning when `finetune_steps` > 0), AUROC and accuracy over stratified folds. `--scratch` builds the
same networks with a randomly initialized encoder (the control). `DIR` is an ingested folder with
`labels.jsonl` (`python -m trainer.downstream.labels`). Exit 0 done, 1 failed (message names the field).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from voxmix.formats.encoder import read_encoder
from voxmix.formats.io import atomic_write_json
from voxmix.formats.labels import LabelsError
from voxmix.trainer.downstream.config import load_config
from voxmix.trainer.downstream.tasks import run_protocol

RESULT_FORMAT = "voxmix.downstream/1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["seg", "cls", "all"], default="all")
    p.add_argument("--encoder", required=True, help="encoder.pt written by trainer/run.py")
    p.add_argument("--data", required=True, help="ingested folder with manifest.jsonl and labels.jsonl")
    p.add_argument("--config", default="default", help="preset (quick, default) or YAML file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch", action="store_true", help="random encoder of the same architecture")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cfg = load_config(a.config)
        blob = read_encoder(a.encoder)
        results = run_protocol(blob, cfg, a.data, seed=a.seed, pretrained=not a.scratch, task=a.task)
    except (ValueError, LabelsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = {
        "format": RESULT_FORMAT,
        "encoder": a.encoder,
        "scratch": a.scratch,
        "seed": a.seed,
        "config": cfg.to_json(),
        "results": results,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if a.out:
        atomic_write_json(a.out, out)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
