"""Shared benchmark harness: timing, units, environment and JSON rows.

Timing: on CUDA `triton.testing.do_bench` (its own warm-up, L2 flush between reps, quantiles); on CPU
repeated wall-clock runs after a warm-up in 5 rounds, reported as the lowest round median and quantiles. Peak memory is the CUDA
allocator's peak above the memory held before the call (None on CPU, where torch has no such counter).
Rows are appended to a JSON Lines file, one object per measurement, with device, versions, git SHA,
UTC time and the config, so results from different machines and commits can be compared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(kw_only=True)
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles; peak extra memory in bytes."""

    ms: float
    ms_p20: float
    ms_p80: float
    peak_bytes: int | None = None
    reps: int = 0


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object], *, device: str, warmup: int = 3, min_reps: int = 5, min_time_s: float = 0.5
) -> Timing:
    """Time `fn` (which must do the whole measured work, e.g. forward + backward)."""
    if device == "cuda":
        import triton.testing

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        # 10 ms warm-up + 50 ms of reps: enough for stable medians, and keeps gpu_check.sh under 8 minutes.
        med, p20, p80 = triton.testing.do_bench(fn, warmup=10, rep=50, quantiles=list(QUANTILES))
        return Timing(ms=med, ms_p20=p20, ms_p80=p80, peak_bytes=int(peak))
    for _ in range(warmup):
        fn()
    # Rounds of wall-clock runs; report the lowest round median. Dev machines are shared VMs where a
    # neighbour's burst can stall a whole round (seen: 30x); the lowest round median is the
    # uncontended speed, and p20/p80 over all runs still show the spread.
    rounds, times, medians = 5, [], []
    for _ in range(rounds):
        round_times = []
        start = time.perf_counter()
        while len(round_times) < max(1, min_reps // 2) or time.perf_counter() - start < min_time_s / rounds:
            t0 = time.perf_counter()
            fn()
            round_times.append((time.perf_counter() - t0) * 1e3)
            if len(round_times) >= 200:
                break
        medians.append(statistics.median(round_times))
        times += round_times
    qs = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return Timing(ms=min(medians), ms_p20=qs[1], ms_p80=qs[7], reps=len(times))


def fwd_bwd_fns(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor]):
    """Callables for the three modes: 'fwd', 'bwd' (backward only, graph kept) and 'fwd+bwd'."""

    def fwd():
        with torch.no_grad():
            return forward()

    out = forward()
    grad = torch.randn_like(out)

    def bwd():
        return torch.autograd.grad(out, inputs, grad, retain_graph=True)

    def fwd_bwd():
        return torch.autograd.grad(forward(), inputs, grad)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def _git_sha() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "kernels", "csrc"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout
        return sha.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """Device name, versions, git SHA and time: the context every row carries."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "device": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "device_type": device,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_sha": _git_sha(),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return env


@dataclass(kw_only=True)
class Recorder:
    """Collects rows for one benchmark run, appending each to `path` (JSON Lines) as it is added."""

    bench: str
    device: str
    path: str | None
    rows: list = field(default_factory=list)

    def __post_init__(self):
        self.env = environment(self.device)

    def add(self, *, config: dict, backend: str, mode: str, timing: Timing | None, **metrics) -> dict:
        row = {"bench": self.bench, **self.env, "config": config, "backend": backend, "mode": mode}
        if timing is not None:
            row.update(asdict(timing))
        row.update(metrics)
        self.rows.append(row)
        self._append(row)
        return row

    def _append(self, row: dict) -> None:
        # One whole line per row, flushed and fsynced as it is measured: a run cut short by a time
        # limit keeps every finished measurement, and a crash leaves at worst a truncated last line.
        if not self.path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write(self) -> None:
        if self.path:
            print(f"wrote {len(self.rows)} rows to {self.path}")


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def parse_args(description: str, default_out: str, extra=None) -> argparse.Namespace:
    """The common flags; `extra(parser)` adds a benchmark's own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default=default_out, help="JSON Lines file to append rows to ('' to skip)")
    p.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (0: torch's default); 1 is stable on a shared machine",
    )
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def default_out(bench: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    tag = "cuda" if torch.cuda.is_available() else "cpu"
    return os.path.join(here, "results", f"{bench}-{tag}.jsonl")


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[h for h in headers]] + [
        [f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
