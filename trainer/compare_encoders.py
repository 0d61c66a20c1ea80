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
`--phantoms WORKDIR` makes a labelled phantom set there first (or reuses it). Every input is checked before
the first seed runs. Exit 0 done, 2 bad input or usage (named in the message), 1 failed while running.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from voxmix.trainer.cli import HelpFormatter, prog
from voxmix.trainer.downstream.cli import FAILED, ArgumentParser, check_comparison, fail
from voxmix.trainer.downstream.config import QUICK

# The display name of the randomly initialized control (`--scratch`).
SCRATCH = "scratch"
# Seeds per encoder without --seeds (--quick: QUICK["seeds"]).
SEEDS = 5


def _names(a) -> list[str]:
    names = a.names.split(",") if a.names else [Path(e).resolve().parent.name for e in a.encoders]
    if len(names) != len(a.encoders) or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise ValueError(
            f"--names: need {len(a.encoders)} distinct, non-empty names (one per encoder), got {names}"
        )
    if a.scratch and SCRATCH in names:
        raise ValueError(f"--names: {SCRATCH!r} is the name of the --scratch control; choose another")
    return names


def _phantom_folder(path: str) -> Path:
    work = Path(path)
    if work.exists() and not work.is_dir():
        raise ValueError(f"--phantoms {path}: is a file; give a work folder (it is created when missing)")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--phantoms {path}: cannot create the work folder: {exc.strerror or exc}") from None
    return work


def _read_encoders(names: list[str], paths: list[str], *, segment: bool) -> dict[str, dict]:
    """Every encoder file read (weights only) and checked; every bad one named in one message."""
    from voxmix.formats.encoder import read_encoder

    blobs, bad = {}, []
    for n, e in zip(names, paths):
        try:
            blobs[n] = read_encoder(e)
        except ValueError as exc:
            bad.append(str(exc))
    if blobs:  # MONAI (seconds to import) only when there is an architecture to check
        from voxmix.trainer.downstream.models import check_encoder

        for n, e in zip(names, paths):
            try:
                if n in blobs:
                    check_encoder(blobs[n], e, segment=segment)
            except ValueError as exc:
                bad.append(str(exc))
    if bad:
        raise ValueError(f"{len(bad)} of the {len(paths)} encoders cannot be used:\n  " + "\n  ".join(bad))
    return blobs


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog=prog("python -m trainer.compare_encoders"), description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("encoders", nargs="+", help="encoder.pt files; the first is the baseline")
    p.add_argument("--data", help="ingested folder with labels.jsonl")
    p.add_argument("--phantoms", help="work folder: make (or reuse) a labelled phantom set there")
    p.add_argument(
        "--config",
        default=None,
        help="preset (quick, default) or YAML file (default: default; quick with --quick)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds per encoder (default: {SEEDS}; {QUICK['seeds']} with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"the 2-core demo: config {QUICK['config']}, {QUICK['seeds']} seeds, {QUICK['per_domain']} phantoms "
        f"of {QUICK['size']}^3 per domain",
    )
    p.add_argument("--names", help="comma-separated display names (default: the parent folder names)")
    p.add_argument("--scratch", action="store_true", help="add a randomly initialized encoder (control)")
    p.add_argument("--wilcoxon", action="store_true", help="decide significance by Wilcoxon signed-rank")
    p.add_argument("--correction", choices=["holm", "none"], default="holm",
                   help="multiple-testing correction of the significance decision")  # fmt: skip
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the tests")
    p.add_argument("--out", help="write the comparison as JSON here")
    a = p.parse_args(argv)
    from voxmix.trainer.downstream.config import load_config

    seeds = a.seeds if a.seeds is not None else (QUICK["seeds"] if a.quick else SEEDS)
    config = a.config or ("quick" if a.quick else "default")
    # Cheap checks first (arguments, config, encoder files, data), then the comparison.
    try:
        names = _names(a)
        check_comparison(a, seeds)
        work = _phantom_folder(a.phantoms) if a.phantoms else None
        from voxmix.trainer.downstream.data import check_data

        cfg = load_config(config)
        blobs = _read_encoders(names, a.encoders, segment=bool(cfg.seg))
        data = a.data
        if work is not None:
            from voxmix.trainer.downstream.compare import make_phantom_set

            domains = sorted({t.domain for t in cfg.seg} | {t.domain for t in cfg.cls})
            data = make_phantom_set(work, QUICK["per_domain"], QUICK["size"], domains)
        try:
            check_data(data, cfg, "all")
        except ValueError as exc:
            if work is None:
                raise
            # A reused phantom set that was damaged since: it is generated, so the fix is to remake it.
            raise ValueError(
                f"{exc}\n(--phantoms {work}: delete {data} to make the phantom set anew)"
            ) from None
    except (ValueError, OSError) as exc:  # FormatError, ConfigError... are ValueErrors naming the file
        return fail(exc)
    from voxmix.trainer.downstream.compare import FORMAT, compare, format_table, run_comparison

    t0 = time.perf_counter()
    try:
        order, values = run_comparison(blobs, cfg, data, seeds, scratch=a.scratch)
    except (ValueError, OSError) as exc:  # e.g. a file changed or removed while the tasks ran
        return fail(exc, FAILED)
    table = compare(values, level=a.level, alpha=a.alpha, wilcoxon=a.wilcoxon, correction=a.correction)
    print(format_table(table, order, a.level, a.wilcoxon, a.correction))
    print(f"({seeds} seeds, config {config}, {time.perf_counter() - t0:.0f} s)")
    if a.out:
        from voxmix.formats.io import atomic_write_json

        try:
            atomic_write_json(a.out, {"format": FORMAT, "encoders": dict(zip(names, a.encoders)), "seeds": seeds,
                                      "config": cfg.to_json(), "level": a.level, "alpha": a.alpha,
                                      "correction": a.correction, "table": table})  # fmt: skip
        except OSError as exc:  # the table is on stdout above: the comparison is not lost
            return fail(f"--out {a.out}: cannot write: {exc.strerror or exc}", FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
