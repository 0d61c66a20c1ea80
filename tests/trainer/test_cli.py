"""`voxmix <command>` (trainer/cli.py): dispatch to the commands' own `main`, help with defaults and
without heavy imports, `--version`, log-friendly progress, and finetune's up-front class-count check."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import voxmix
from voxmix.formats.labels import write_labels_file
from voxmix.formats.progress import progress
from voxmix.lawfit import cli as lawfit_cli
from voxmix.trainer.cli import COMMANDS, main

# One help text per command, with a default it must show (argparse's own wording, "(default: X)").
DEFAULTS = {
    "ingest": "parallel worker processes (default: 1)",
    "phantoms": "volumes per domain (default: 8)",
    "sweep": "trainer preset (default: configs/tiny.yaml)",
    "train": "--seed SEED",  # every option overrides the config: nothing to show but the option
    "finetune": "decoder/head init, crops and folds (default: 0)",
    "compare": "confidence level of the intervals (default: 0.95)",
    "evaluate": "steps per fine-tuning of the curves (0: none) (default: 100)",
    "labels": "(default: dataset.yaml next to the index)",
    "lawfit": "simulate",
}


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps help at the terminal width


def test_overview_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in COMMANDS), out
    assert main([]) == 2 and "usage: voxmix <command>" in capsys.readouterr().err
    assert main(["finetun"]) == 2
    assert "unknown command 'finetun' (did you mean 'finetune'?)" in capsys.readouterr().err
    # A command's own usage error, named as typed, and sys.argv given back.
    argv = sys.argv[:]
    assert main(["ingest", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "usage: voxmix ingest" in err and "--spec" in err, err
    assert sys.argv == argv


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_shows_its_defaults(name, wide, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert DEFAULTS[name] in out, out
    assert "(default: None)" not in out and "(default: False)" not in out, out
    if name != "lawfit":  # lawfit keeps its own name: `lawfit fit ...` is the same command
        assert out.startswith(f"usage: voxmix {name} "), out


def test_lawfit_subcommands_show_defaults(wide, capsys):
    with pytest.raises(SystemExit) as exc:
        lawfit_cli.main(["fit", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "bootstrap resamples (0: none) (default: 100)" in out, out


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"voxmix {voxmix.__version__} (") and f"torch {torch.__version__}" in out, out
    with pytest.raises(SystemExit) as exc:
        lawfit_cli.main(["--version"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and f"voxmix {voxmix.__version__}" in out and np.__version__ in out, out


def test_help_imports_no_torch():
    """In a fresh interpreter: `voxmix --help` imports not even numpy, and the `--help` of the commands
    that train or launch (whose modules import torch, MONAI or DeepSpeed) none of those: the reason
    `finetune --help` once took 7.5 s. (phantoms and ingest need numpy/nibabel for their parsers.)"""
    code = (
        "import sys\nfrom voxmix.trainer.cli import main\n"
        "heavy = lambda: [m for m in ('numpy', 'torch', 'monai', 'deepspeed') if m in sys.modules]\n"
        "print('OVERVIEW', main(['--help']), heavy())\n"
        "codes = [main([c, '--help']) for c in ('sweep', 'train', 'finetune', 'compare', 'labels')]\n"
        "print('COMMANDS', codes, [m for m in heavy() if m != 'numpy'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    lines = [x for x in r.stdout.splitlines() if x.startswith(("OVERVIEW", "COMMANDS"))]
    assert lines == ["OVERVIEW 0 []", "COMMANDS [0, 0, 0, 0, 0] []"], (lines, r.stderr)


def test_phantoms_through_voxmix_logs_progress_lines(tmp_path, capsys):
    """The command runs as `python -m trainer.phantoms` would; progress on a non-terminal stderr comes
    as whole lines (no carriage returns that run together in a SLURM log)."""
    out = tmp_path / "raw"
    argv = ["phantoms", "--out", str(out), "--domains", "ct_chest", "--per-domain", "2", "--size", "16"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "ingest with: voxmix ingest --spec" in cap.out, cap.out
    assert "\r" not in cap.err and cap.err.splitlines()[-1].startswith("phantoms: 100%"), repr(cap.err)
    assert len((out / "phantoms.jsonl").read_text().splitlines()) == 2


def test_progress_keeps_tqdm_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, tty = io.StringIO(), Terminal()
    assert list(progress(range(3), "x", file=log)) == [0, 1, 2]
    assert list(progress(range(3), "x", file=tty)) == [0, 1, 2]
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[0].startswith("x:   0%") and "3/3" in lines[-1], lines
    assert tty.getvalue().count("\r") >= 2  # tqdm redraws in place


def test_finetune_refuses_a_one_sided_class_before_training(tmp_path, capsys):
    """`finetune --task all` with a cls target that has one positive: refused up front (exit 2, the
    counts named), not after the seg task has trained (#16)."""
    from tests.faults.test_encoder_faults import CONFIG, make_dataset
    from tests.trainer.downstream.downstream_helpers import make_encoder

    data = tmp_path / "data"
    make_dataset(data)
    rows = [json.loads(x) for x in (data / "labels.jsonl").read_text().splitlines()[1:]]
    for i, row in enumerate(rows):
        row["classes"] = {"lesion": int(i == 0)}
    write_labels_file(data, ["background", "liver"], rows, index="raw/phantoms.jsonl")
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    enc = make_encoder(tmp_path / "encoder.pt")
    args = ["--task", "all", "--encoder", enc, "--data", str(data), "--config", str(tmp_path / "cfg.yaml")]
    assert main(["finetune", *args]) == 2
    err = capsys.readouterr().err
    assert "target 'lesion' needs >= 2 volumes of each class, has 7 of 0 and 1 of 1" in err, err


def test_ingest_and_lawfit_progress_are_whole_lines_in_a_log(capsys):
    """ingest's and lawfit's bars went through raw tqdm: in a SLURM log their `\\r` redraws ran together
    into one growing line. Now, as phantoms and labels: whole lines (stderr captured = not a terminal)."""
    from types import SimpleNamespace

    from voxmix.lawfit.parallel import _progress
    from voxmix.trainer.data.ingest.pipeline import _progress_bar

    for bar in (_progress_bar(3), _progress(3, "fit", SimpleNamespace(progress=True, workers=1))):
        with bar:
            for _ in range(3):
                bar.update()
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    lines = err.splitlines()
    assert any(ln.startswith("ingest") and "3/3" in ln for ln in lines), err
    assert any(ln.startswith("fit") and "3/3" in ln for ln in lines), err
