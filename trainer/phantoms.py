"""`python -m trainer.phantoms --out DIR [--domains ...] [--labels]`: synthetic multi-domain NIfTI datasets for the demo and tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voxmix.trainer.cli import HelpFormatter, prog
from voxmix.trainer.data.phantoms import DOMAINS, write_dataset
from voxmix.trainer.data.volumes import OutputFolderError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog("python -m trainer.phantoms"),
        description=__doc__.split(": ", 1)[1],
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--out", required=True, help="output folder: <domain>/*.nii.gz, phantoms.jsonl, dataset.yaml"
    )
    p.add_argument(
        "--domains",
        nargs="+",
        # The twin is the demo's positive control (a second sample of ct_abdomen's generator), not a domain.
        default=[d for d in DOMAINS if d != "ct_abdomen_twin"],
        help=f"names (space or comma separated) from {list(DOMAINS)} (default: all but ct_abdomen_twin)",
    )
    p.add_argument("--per-domain", type=int, default=8, help="volumes per domain")
    p.add_argument("--size", type=int, default=64, help="grid side in voxels (>= 16)")
    p.add_argument(
        "--seed", type=int, default=0, help="volume i of a domain depends on (seed, domain, i) only"
    )
    p.add_argument("--labels", action="store_true", help="also write label maps (*_labels.nii.gz)")
    a = p.parse_args(argv)
    domains = [d.strip() for item in a.domains for d in item.split(",") if d.strip()]
    bad = [d for d in domains if d not in DOMAINS]
    if bad or not domains:
        print(f"voxmix: --domains: unknown {bad}; choose from {list(DOMAINS)}", file=sys.stderr)
        return 2
    if a.per_domain < 1 or a.size < 16:
        print("voxmix: --per-domain must be >= 1 and --size >= 16", file=sys.stderr)
        return 2
    try:
        write_dataset(Path(a.out), domains, a.per_domain, a.size, a.seed, a.labels)
    except OutputFolderError as exc:  # --out names a file, or a parent of it is one
        print(f"voxmix: {exc}", file=sys.stderr)
        return 2
    ingest = "voxmix ingest" if p.prog.startswith("voxmix ") else "python -m trainer.ingest"  # as typed
    print(
        f"wrote {len(domains) * a.per_domain} volumes to {a.out}; ingest with: "
        f"{ingest} --spec {a.out}/dataset.yaml --out DIR"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
