"""Compare pretrained encoders on the same downstream protocol over several seeds (docs/downstream.md).

    python -m trainer.compare_encoders A/encoder.pt B/encoder.pt [...] --data DIR
        [--config quick|default|FILE.yaml] [--seeds 3] [--names prop,transfer] [--scratch]
        [--wilcoxon] [--correction holm|none] [--level 0.95] [--alpha 0.05] [--out comparison.json]
    python -m trainer.compare_encoders A B --quick --phantoms WORKDIR   # the demo's 2-core setting

Every encoder runs the protocol once per seed with identical crops, folds and head initializations, so
results pair by seed. The table gives each metric's mean and t confidence interval per encoder, and each
encoder's difference to the first one (the baseline) with a paired t-test across seeds (and Wilcoxon
signed-rank with `--wilcoxon`). A table tests every metric against every encoder, so "significant" is
decided on Holm-adjusted p-values over all those tests (`--correction none`: per test).
`--phantoms WORKDIR` makes a labelled phantom set there first (or reuses it). Exit 0 done, 1 failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from voxmix.formats.encoder import read_encoder
from voxmix.formats.io import atomic_write_json
from voxmix.trainer.downstream.compare import (
    FORMAT,
    QUICK,
    compare,
    format_table,
    make_phantom_set,
    run_comparison,
)
from voxmix.trainer.downstream.config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.compare_encoders", description=__doc__.splitlines()[0]
    )
    p.add_argument("encoders", nargs="+", help="encoder.pt files; the first is the baseline")
    p.add_argument("--data", help="ingested folder with labels.jsonl")
    p.add_argument("--phantoms", help="work folder: make (or reuse) a labelled phantom set there")
    p.add_argument("--config", default=None, help="preset (quick, default) or YAML file")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--quick", action="store_true", help=f"the 2-core demo preset: {QUICK}")
    p.add_argument("--names", help="comma-separated display names (default: the parent folder names)")
    p.add_argument("--scratch", action="store_true", help="add a randomly initialized encoder (control)")
    p.add_argument("--wilcoxon", action="store_true", help="decide significance by Wilcoxon signed-rank")
    p.add_argument("--correction", choices=["holm", "none"], default="holm",
                   help="multiple-testing correction of the significance decision (default holm)")  # fmt: skip
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", help="write the comparison as JSON here")
    a = p.parse_args(argv)
    seeds = a.seeds or (QUICK["seeds"] if a.quick else 5)
    config = a.config or ("quick" if a.quick else "default")
    names = a.names.split(",") if a.names else [Path(e).resolve().parent.name for e in a.encoders]
    if len(names) != len(a.encoders) or len(set(names)) != len(names):
        print(f"error: --names: need {len(a.encoders)} distinct names, got {names}", file=sys.stderr)
        return 1
    if seeds < 2:
        print(f"error: --seeds={seeds}: a paired test needs >= 2 seeds", file=sys.stderr)
        return 1
    if bool(a.data) == bool(a.phantoms):
        print("error: give exactly one of --data and --phantoms", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    try:
        cfg = load_config(config)
        blobs = {n: read_encoder(e) for n, e in zip(names, a.encoders)}
        data = a.data
        if a.phantoms:
            domains = sorted({t.domain for t in cfg.seg} | {t.domain for t in cfg.cls})
            data = make_phantom_set(Path(a.phantoms), QUICK["per_domain"], QUICK["size"], domains)
        order, values = run_comparison(blobs, cfg, data, seeds, scratch=a.scratch)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = compare(values, level=a.level, alpha=a.alpha, wilcoxon=a.wilcoxon, correction=a.correction)
    print(format_table(table, order, a.level, a.wilcoxon, a.correction))
    print(f"({seeds} seeds, config {config}, {time.perf_counter() - t0:.0f} s)")
    if a.out:
        atomic_write_json(a.out, {"format": FORMAT, "encoders": dict(zip(names, a.encoders)), "seeds": seeds,
                                  "config": cfg.to_json(), "level": a.level, "alpha": a.alpha,
                                  "correction": a.correction, "table": table})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
