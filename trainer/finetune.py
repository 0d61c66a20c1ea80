"""Fine-tune a pretrained voxmix encoder on labelled downstream tasks (docs/downstream.md).

    python -m trainer.finetune --task seg|cls|all --encoder runs/X/encoder.pt --data DIR
                               [--config quick|default|FILE.yaml] [--seed 0] [--scratch] [--out R.json]

seg: UNETR (MONAI) with the encoder loaded into `UNETR.vit`, Dice + cross-entropy, sliding-window
inference, Dice per label on the validation split. cls: linear probe on frozen features (and full
fine-tuning when `finetune_steps` > 0), AUROC and accuracy over stratified folds. `--scratch` builds the
same networks with a randomly initialized encoder (the control). `DIR` is an ingested folder with
`labels.jsonl` (`python -m trainer.downstream.labels`). Every input is checked before training starts.
Exit 0 done, 2 bad input or usage (the message names the file, field or argument), 1 failed while training.
"""

from __future__ import annotations

import json
import sys
import time

from voxmix.trainer.cli import HelpFormatter, prog
from voxmix.trainer.downstream.cli import FAILED, ArgumentParser, check_folder, check_out, check_seed, fail

RESULT_FORMAT = "voxmix.downstream/1"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog=prog("python -m trainer.finetune"), description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument(
        "--task",
        choices=["seg", "cls", "all"],
        default="all",
        help="the config's seg tasks, cls tasks, or both",
    )
    p.add_argument("--encoder", required=True, help="encoder.pt written by trainer/run.py")
    p.add_argument("--data", required=True, help="ingested folder with manifest.jsonl and labels.jsonl")
    p.add_argument("--config", default="default", help="preset (quick, default) or YAML file")
    p.add_argument("--seed", type=int, default=0, help="decoder/head init, crops and folds")
    p.add_argument("--scratch", action="store_true", help="random encoder of the same architecture")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    # Cheap checks first, heavy imports (MONAI) last: a wrong argument or file fails in seconds.
    try:
        check_seed("--seed", a.seed)
        check_out("--out", a.out)
        check_folder("--data", a.data)
        from voxmix.formats.encoder import read_encoder
        from voxmix.trainer.downstream.config import load_config
        from voxmix.trainer.downstream.data import check_data

        cfg = load_config(a.config)
        blob = read_encoder(a.encoder)
        check_data(a.data, cfg, a.task)
        from voxmix.trainer.downstream.models import check_encoder

        check_encoder(blob, a.encoder, segment=a.task in ("seg", "all") and bool(cfg.seg))
    except (ValueError, OSError) as exc:  # FormatError, ConfigError... are ValueErrors naming the file
        return fail(exc)
    from voxmix.trainer.downstream.tasks import run_protocol

    try:
        results = run_protocol(blob, cfg, a.data, seed=a.seed, pretrained=not a.scratch, task=a.task)
    except (ValueError, OSError) as exc:  # e.g. a file changed or removed while the tasks ran
        return fail(exc, FAILED)
    print(json.dumps(results, indent=1))
    if a.out:
        from voxmix.formats.io import atomic_write_json

        out = {
            "format": RESULT_FORMAT,
            "encoder": a.encoder,
            "scratch": a.scratch,
            "seed": a.seed,
            "config": cfg.to_json(),
            "results": results,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        try:
            atomic_write_json(a.out, out)
        except OSError as exc:  # the results are on stdout above: the run is not lost
            return fail(f"--out {a.out}: cannot write: {exc.strerror or exc}", FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
