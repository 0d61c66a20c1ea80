"""`voxmix <command> [args]`: one command line for the whole workflow (beside `lawfit`).

    voxmix phantoms --out raw/ --labels            synthetic NIfTI datasets (demo, tests)
    voxmix ingest --spec dataset.yaml --out data/  files -> .npy volumes + manifest.jsonl
    voxmix labels --data data/ --index raw/phantoms.jsonl
    voxmix lawfit plan ...                         the same as `lawfit plan ...`
    voxmix sweep plan.json --runs-dir runs/ --manifest data/manifest.jsonl
    voxmix train --config configs/tiny.yaml --allocation allocation.json --manifest data/manifest.jsonl
    voxmix finetune --encoder runs/X/encoder.pt --data data/
    voxmix compare A/encoder.pt B/encoder.pt --data data/

Each command is the module's own `main(argv)`, so `voxmix ingest ...` and `python -m trainer.ingest ...`
are the same program. `voxmix train` is one process (one GPU, or the CPU); several GPUs or nodes go
through the DeepSpeed launcher: `deepspeed --num_gpus N trainer/run.py ...` (docs/training.md).
A command's module is imported only when it runs, so `voxmix --help` loads no torch, MONAI or DeepSpeed
and `voxmix <command> --help` only what that command's parser needs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import platform
import sys
from dataclasses import dataclass

USAGE = 2


@dataclass(frozen=True)
class Command:
    module: str
    """The module whose `main(argv) -> int` runs the command."""
    summary: str
    """One line for `voxmix --help`."""


# In the order of the workflow (README "The workflow").
COMMANDS: dict[str, Command] = {
    "phantoms": Command("voxmix.trainer.phantoms", "synthetic multi-domain NIfTI datasets"),
    "ingest": Command("voxmix.trainer.ingest", "NIfTI/DICOM/NRRD -> .npy volumes + manifest.jsonl"),
    "labels": Command("voxmix.trainer.downstream.labels", "label maps onto the ingest grid -> labels.jsonl"),
    "lawfit": Command("voxmix.lawfit.cli", "plan, fit, allocate, validate, report, simulate (= lawfit)"),
    "sweep": Command("voxmix.trainer.sweep", "run a plan's pilot runs (local or SLURM)"),
    "train": Command("voxmix.trainer.run", "pretrain the MAE, one process (several GPUs: deepspeed trainer/run.py)"),
    "finetune": Command("voxmix.trainer.finetune", "fine-tune an encoder on the downstream tasks"),
    "compare": Command("voxmix.trainer.compare_encoders", "compare encoders downstream over seeds"),
    "evaluate": Command(
        "voxmix.trainer.evaluate_encoders", "the evaluation protocol: positive control, probes, context, curves"
    ),
}  # fmt: skip


def prog(classic: str) -> str:
    """The program name for a command's usage line: `voxmix <command>` when it runs through `voxmix`
    (which sets sys.argv[0], the program name as typed, to that while the command runs), else its
    classic spelling (`python -m trainer.ingest`): the usage shown is the one the user typed."""
    name = sys.argv[0] if sys.argv else ""
    return name if name.startswith("voxmix ") else classic


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in `--help`, and descriptions kept as written (their usage examples).

    argparse's ArgumentDefaultsHelpFormatter also prints `(default: None)` for options that have no
    default and `(default: False)` for flags; those say nothing and are left out here, as are defaults a
    help text states itself ("(default: all but ct_abdomen_twin)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (
            action.required
            or d is None
            or d is False
            or d is argparse.SUPPRESS
            or (isinstance(d, (list, tuple)) and not d)
            or "(default" in text
        ):
            return action.help
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)  # as typed: --domains a b
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def version_line() -> str:
    """voxmix's version and those of the big dependencies, from their installed metadata (cheap: nothing
    is imported, so `--version` stays fast and works where torch is not installed)."""
    from importlib import metadata  # ~0.1 s to import: only for --version

    import voxmix

    parts = [f"python {platform.python_version()}"]
    for dist in ("torch", "deepspeed", "monai"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"voxmix {voxmix.__version__} ({', '.join(parts)})"


def overview() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items())
    return (
        "usage: voxmix <command> [args]   (voxmix <command> --help: that command's options)\n"
        "       voxmix --version\n\n"
        f"commands:\n{rows}\n\n"
        "Several GPUs or nodes: deepspeed --num_gpus N trainer/run.py ... (docs/training.md).\n"
    )


def _exit_code(exc: SystemExit) -> int:
    # argparse exits 0 after --help and 2 on a usage error; sys.exit("message") carries a string.
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else USAGE
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"voxmix: unknown command {name!r}{hint}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return USAGE
    module = importlib.import_module(command.module)
    saved = sys.argv[:]
    sys.argv[:] = [f"voxmix {name}", *rest]
    try:
        return int(module.main(rest) or 0)
    except SystemExit as exc:
        return _exit_code(exc)
    finally:
        sys.argv[:] = saved


if __name__ == "__main__":
    sys.exit(main())
