"""Checks benchmark JSON Lines against the kernel and trainer targets; prints a markdown table.

    .venv/bin/python benchmarks/gpu_report.py RESULTS...   (files or folders of *.jsonl)

Made for the rows `benchmarks/gpu_check.sh` brings back from an H200 (so that they go into the README
right after a device run), and reads CPU rows too. Each line: the target, the shape, the measured
value and pass/FAIL. Exit status 1 when a target is missed, 2 when no row matches any target.

Targets (issues 4 and 5):
- attention, CUDA, fwd+bwd: >= 1.0x the best SDPA backend on every shape; >= 0.9x flash-attn-4 for N >= 512
- patch embedding, CUDA, fwd+bwd: >= 2x Conv3d
- masked MAE loss, CUDA: >= 70% of HBM bandwidth
- C++ patchify/unpatchify and masked loss, CPU: >= 2x the PyTorch reference
- training step (base, bf16): MFU >= 40%, >= 1.3x the reference path, faster than MONAI, data wait < 5%
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    target: str
    shape: str
    value: float
    ok: bool
    unit: str = "x"

    def row(self) -> str:
        v = f"{self.value:.0%}" if self.unit == "%" else f"{self.value:.2f}x"
        return f"| {self.target} | {self.shape} | {v} | {'pass' if self.ok else 'FAIL'} |"


def _shape(cfg: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def checks_for(row: dict) -> list[Check]:
    """The target checks one benchmark row carries (none for plain timing rows)."""
    bench, mode, cuda = row.get("bench"), row.get("mode", ""), row.get("device_type") == "cuda"
    cfg, out = row.get("config", {}), []
    shape = _shape(cfg)
    if bench == "attention" and cuda and mode == "fwd+bwd:ratio":
        best = row["vs_best_baseline"]
        out.append(
            Check(f"attention fwd+bwd >= 1.0x best SDPA ({row['best_baseline']})", shape, best, best >= 1.0)
        )
        if "vs_flash_attn_4" in row and cfg.get("N", 0) >= 512:
            fa4 = row["vs_flash_attn_4"]
            out.append(Check("attention fwd+bwd >= 0.9x flash-attn-4", shape, fa4, fa4 >= 0.9))
    elif bench == "patch_embed" and cuda and mode == "fwd+bwd:ratio":
        out.append(
            Check("patch embed fwd+bwd >= 2x Conv3d", shape, row["vs_conv3d"], row["vs_conv3d"] >= 2.0)
        )
    elif bench == "patch_embed" and not cuda and mode in ("patchify:ratio", "unpatchify:ratio"):
        op = mode.split(":")[0]
        out.append(Check(f"C++ {op} >= 2x PyTorch", shape, row["vs_pytorch"], row["vs_pytorch"] >= 2.0))
    elif (
        bench == "mae_loss"
        and cuda
        and row.get("backend") == "voxmix"
        and row.get("hbm_fraction") is not None
    ):
        f = row["hbm_fraction"]
        out.append(Check("masked loss >= 70% HBM bandwidth", shape, f, f >= 0.70, unit="%"))
    elif bench == "mae_loss" and not cuda and mode == "fwd+grad:ratio":
        out.append(Check("C++ masked loss >= 2x PyTorch", shape, row["vs_pytorch"], row["vs_pytorch"] >= 2.0))
    elif bench == "train" and cuda and cfg.get("case", "").startswith("base"):
        if mode == "train_step" and row.get("backend") == "voxmix" and row.get("mfu") is not None:
            out.append(Check("train step MFU >= 40%", shape, row["mfu"], row["mfu"] >= 0.40, unit="%"))
        elif mode == "ratios":
            ref, monai = row["speedup_vs_reference"], row["speedup_vs_monai"]
            out.append(Check("train step >= 1.3x reference path", shape, ref, ref >= 1.3))
            out.append(Check("train step faster than MONAI MAE", shape, monai, monai > 1.0))
        elif mode == "data_wait":
            w = row["data_wait_frac"]
            out.append(Check("data wait < 5% of step", shape, w, w < 0.05, unit="%"))
    return out


def read_rows(paths: list[str]) -> list[dict]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    rows = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{f}:{i}: not JSON ({e.msg})") from None
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    rows = read_rows(args)
    checks = [c for r in rows for c in checks_for(r)]
    if not checks:
        print(f"no row in {', '.join(args)} matches a target")
        return 2
    envs = sorted(
        {(r.get("device"), r.get("torch"), r.get("triton"), r.get("time_utc", "")[:10]) for r in rows}
    )
    for dev, torch_v, triton_v, day in envs:
        print(f"device {dev}, torch {torch_v}, triton {triton_v}, {day}")
    print("\n| target | shape | measured | |\n| --- | --- | --- | --- |")
    print("\n".join(c.row() for c in checks))
    missed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(missed)}/{len(checks)} targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
