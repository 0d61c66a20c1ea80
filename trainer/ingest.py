"""`python -m trainer.ingest --spec dataset.yaml --out DIR [--workers N]` (docs/data.md).

The command line of the ingest: exit 0 when every source succeeded, 3 when some failed, 2 for a bad spec
(including a domain whose sources match no file) or an `--out` that cannot be a folder."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from voxmix.trainer.cli import HelpFormatter, prog


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog("python -m trainer.ingest"), description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--spec", required=True, help="dataset spec (YAML), see configs/dataset.example.yaml")
    p.add_argument(
        "--out", required=True, help="output folder: <domain>/*.npy, manifest.jsonl, failures.jsonl"
    )
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    # After parsing: `--help` and usage errors need none of the ingest's imports (numpy, readers).
    from voxmix.trainer.data.ingest.pipeline import FAILURES, ingest
    from voxmix.trainer.data.ingest.spec import SpecError, load_spec
    from voxmix.trainer.data.volumes import OutputFolderError

    if args.workers < 1:
        print(f"voxmix: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        res = ingest(spec, args.out, workers=args.workers, progress=not args.quiet)
    except (SpecError, OutputFolderError) as exc:
        print(f"voxmix: {exc}", file=sys.stderr)
        return 2
    per_domain = Counter(r.domain for r in res.done)
    rebuilt = f", {len(res.rebuilt)} rebuilt (missing or corrupt output)" if res.rebuilt else ""
    print(
        f"ingest: {len(res.done)} volumes ({res.skipped} unchanged{rebuilt}), {len(res.failures)} failed; "
        + ", ".join(f"{d}: {n}" for d, n in sorted(per_domain.items()))
    )
    if res.failures:
        print(f"failed sources (see {args.out}/{FAILURES}):")
        for f in res.failures[:50]:
            print(f"  [{f['reason']}] {f['domain']}: {f['source']}: {f['detail']}")
        if len(res.failures) > 50:
            print(f"  ... and {len(res.failures) - 50} more")
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
