"""Encoders compared on one downstream protocol over seeds: paired results, intervals, tests (docs/downstream.md).

The command is `python -m trainer.compare_encoders` (trainer/compare_encoders.py).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from voxmix.trainer.downstream.config import QUICK, DownstreamConfig
from voxmix.trainer.downstream.stats import holm, paired_test, t_interval

FORMAT = "voxmix.comparison/1"
__all__ = ["FORMAT", "QUICK", "compare", "flatten", "format_table", "make_phantom_set", "run_comparison"]


def flatten(results: dict) -> dict[str, float]:
    """{"seg/ct_abdomen": {"dice_mean": ..}, "cls/..": {"probe": {"auroc": ..}}} -> {"seg/ct_abdomen/dice": ..}"""
    out = {}
    for task, r in results.items():
        if task.startswith("seg/"):
            out[f"{task}/dice"] = r["dice_mean"]
        else:
            for mode in ("probe", "finetune"):
                for k in ("auroc", "accuracy"):
                    if mode in r:
                        out[f"{task}/{mode}_{k}"] = r[mode][k]
    return out


def compare(values: dict[str, dict[str, list[float]]], *, level: float, alpha: float, wilcoxon: bool,
            correction: str = "holm") -> dict:  # fmt: skip
    """values[encoder][metric] = per-seed list (same seed order for every encoder) -> the table as JSON.

    `correction="holm"`: `significant` compares the Holm-adjusted p-value (over every metric x encoder
    test of the table, `p_adj`) with `alpha`; "none": the test's own p-value.
    """
    if correction not in ("holm", "none"):
        raise ValueError(f"correction={correction!r}: choose holm or none")
    names = list(values)
    base = names[0]
    table = {}
    for metric in values[base]:
        row = {"encoders": {}, "vs_" + base: {}}
        for n in names:
            s = t_interval(values[n][metric], level)
            row["encoders"][n] = {"mean": s.mean, "lo": s.lo, "hi": s.hi, "values": values[n][metric]}
        for n in names[1:]:
            a, b = values[base][metric], values[n][metric]
            pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
            if not pairs:  # e.g. a label absent from every validation volume: Dice is nan everywhere
                row["vs_" + base][n] = {"n": 0, "mean_diff": math.nan, "lo": math.nan, "hi": math.nan,
                                        "t": math.nan, "p_t": math.nan, "p_wilcoxon": None}  # fmt: skip
                continue
            pt = paired_test([x for x, _ in pairs], [y for _, y in pairs], level, wilcoxon)
            row["vs_" + base][n] = dict(pt.__dict__)
        table[metric] = row
    tests = [d for row in table.values() for d in row["vs_" + base].values()]
    raw = [(d["p_wilcoxon"] if wilcoxon else d["p_t"]) for d in tests]
    raw = [math.nan if p is None else p for p in raw]
    adj = holm(raw) if correction == "holm" else raw
    for d, p in zip(tests, adj):
        d["p_adj"] = p
        d["significant"] = bool(math.isfinite(p) and p < alpha)
    return table


def format_table(
    table: dict, names: list[str], level: float, wilcoxon: bool, correction: str = "holm"
) -> str:
    base = names[0]
    w = max([len(m) for m in table] + [10])
    lines = [f"{'metric':<{w}}  " + "  ".join(f"{n:>26}" for n in names)]
    for metric, row in table.items():
        cells = []
        for n in names:
            e = row["encoders"][n]
            cells.append(f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]".rjust(26))
        lines.append(f"{metric:<{w}}  " + "  ".join(cells))
    lines.append("")
    how = (
        f"Holm-adjusted over {sum(len(r['vs_' + base]) for r in table.values())} tests"
        if correction == "holm"
        else "uncorrected"
    )
    lines.append(
        f"paired across seeds, {int(level * 100)}% CI of the difference to {base} (significance {how}):"
    )
    for metric, row in table.items():
        for n, d in row["vs_" + base].items():
            pw = f"  p_wilcoxon={d['p_wilcoxon']:.3g}" if wilcoxon and d["p_wilcoxon"] is not None else ""
            if correction == "holm":
                pw += f"  p_holm={d['p_adj']:.3g}"
            star = "  significant" if d["significant"] else ""
            lines.append(
                f"  {metric:<{w}} {n} - {base}: {d['mean_diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                f"  t={d['t']:.2f} p_t={d['p_t']:.3g}{pw}{star}"
            )
    return "\n".join(lines)


def make_phantom_set(work: Path, per_domain: int, size: int, domains: list[str], seed: int = 0) -> Path:
    """work/raw (phantoms with labels) -> work/data (ingested + labels.jsonl); reused when present.
    `seed` is the generator's: sets of different seeds share no volume (phantoms.generate)."""
    from voxmix.formats.labels import FILENAME
    from voxmix.trainer.data import phantoms
    from voxmix.trainer.data.ingest.pipeline import ingest
    from voxmix.trainer.data.ingest.spec import load_spec
    from voxmix.trainer.downstream.labels import write_labels

    data = work / "data"
    if (data / FILENAME).exists():
        return data
    raw = work / "raw"
    phantoms.write_dataset(raw, domains, per_domain, size, seed, True)
    res = ingest(load_spec(raw / "dataset.yaml"), data, workers=1, progress=False)
    if res.failures:
        raise ValueError(f"{raw}: ingest failed for {len(res.failures)} phantoms: {res.failures[:2]}")
    write_labels(data, raw / "phantoms.jsonl", raw / "dataset.yaml", list(phantoms.LABEL_NAMES))
    return data


def run_comparison(
    blobs: dict[str, dict],
    cfg: DownstreamConfig,
    data,
    seeds: int,
    *,
    scratch: bool,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """Every encoder (and, with `scratch`, a random one of the first's architecture) once per seed, seeds
    outermost so that an interrupted comparison has whole seeds. Returns (encoder order, values)."""
    # Imported here: the tasks pull in MONAI (seconds), which the command's up-front checks do without.
    from voxmix.trainer.downstream.tasks import run_protocol

    runs = [(n, blob, True) for n, blob in blobs.items()]
    if scratch:
        runs.append(("scratch", next(iter(blobs.values())), False))
    values: dict[str, dict[str, list[float]]] = {n: {} for n, _, _ in runs}
    t0, total, done = time.perf_counter(), len(runs) * seeds, 0
    say = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    for seed in range(seeds):
        for n, blob, pretrained in runs:
            done += 1
            say(f"[{done}/{total}] {n} seed {seed} ({time.perf_counter() - t0:.0f} s)")
            res = flatten(run_protocol(blob, cfg, data, seed=seed, pretrained=pretrained, log=lambda m: None))
            for k, v in res.items():
                values[n].setdefault(k, []).append(v)
    return [n for n, _, _ in runs], values
