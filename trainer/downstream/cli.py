"""What the downstream commands share: usage errors as `voxmix: ...` with exit 2, and the output check.

Exit status of trainer.finetune / trainer.compare_encoders / trainer.downstream.labels: 0 done, 2 bad
input or usage (checked before any training starts), 1 a run that failed while training.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

USAGE = 2
FAILED = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors read like the rest of the project's: `voxmix: argument --task: ...`, exit 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"voxmix: {message}\n")


def fail(message: object, code: int = USAGE) -> int:
    print(f"voxmix: {message}", file=sys.stderr)
    return code


def check_out(flag: str, path: str | None) -> None:
    """`--out FILE` can be written (checked up front: a run that trains for an hour must not fail at
    its last line). The write is atomic (a temporary file beside it, then a rename), so what matters is
    that FILE is not a folder and that its folder exists, or can be made (as the writer would), and
    takes new files."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name, e.g. {p / 'results.json'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((q for q in p.parents if q.exists() and not q.is_dir()), p.parent)
        why = f"{blocker} is a file" if blocker.exists() and not blocker.is_dir() else (exc.strerror or exc)
        raise ValueError(f"{flag} {path}: cannot create its folder: {why}") from None
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create files in {p.parent} (permission denied)")


def check_folder(flag: str, path: str | None) -> None:
    if path is not None and not Path(path).is_dir():
        what = "is a file" if Path(path).exists() else "not found"
        raise ValueError(
            f"{flag} {path}: folder {what}; give the ingested folder (its manifest.jsonl and labels.jsonl)"
        )


def check_seed(flag: str, seed: int) -> None:
    # Seeds reach np.random.default_rng and torch.manual_seed, which refuse negative numbers.
    if not 0 <= seed < 2**32:
        raise ValueError(f"{flag} {seed}: must lie in [0, 2^32)")


def check_fraction(flag: str, value: float) -> None:
    if not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"{flag} {value}: must lie strictly between 0 and 1")


def check_comparison(a, seeds: int) -> None:
    """The first checks of every seed-paired comparison command (compare_encoders, evaluate_encoders):
    seeds, exactly one data source, the levels, the output file and the data folder."""
    if seeds < 2:
        raise ValueError(f"--seeds {seeds}: a paired test needs >= 2 seeds")
    if bool(a.data) == bool(a.phantoms):
        raise ValueError("give exactly one of --data and --phantoms")
    check_fraction("--level", a.level)
    check_fraction("--alpha", a.alpha)
    check_out("--out", a.out)
    check_folder("--data", a.data)
