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
import math
import sys
import time
from pathlib import Path

from voxmix.formats.encoder import read_encoder
from voxmix.formats.io import atomic_write_json
from voxmix.trainer.downstream.config import load_config
from voxmix.trainer.downstream.stats import holm, paired_test, t_interval
from voxmix.trainer.downstream.tasks import run_protocol

FORMAT = "voxmix.comparison/1"
QUICK = {"config": "quick", "seeds": 3, "per_domain": 32, "size": 48}


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


def make_phantom_set(work: Path, per_domain: int, size: int, domains: list[str]) -> Path:
    """work/raw (phantoms with labels) -> work/data (ingested + labels.jsonl); reused when present."""
    from voxmix.formats.labels import FILENAME
    from voxmix.trainer.data import phantoms
    from voxmix.trainer.data.ingest.pipeline import ingest
    from voxmix.trainer.data.ingest.spec import load_spec
    from voxmix.trainer.downstream.labels import write_labels

    data = work / "data"
    if (data / FILENAME).exists():
        return data
    raw = work / "raw"
    phantoms.write_dataset(raw, domains, per_domain, size, 0, True)
    res = ingest(load_spec(raw / "dataset.yaml"), data, workers=1, progress=False)
    if res.failures:
        raise ValueError(f"{raw}: ingest failed for {len(res.failures)} phantoms: {res.failures[:2]}")
    write_labels(data, raw / "phantoms.jsonl", raw / "dataset.yaml", list(phantoms.LABEL_NAMES))
    return data


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
        runs = [(n, blobs[n], True) for n in names]
        if a.scratch:
            runs.append(("scratch", blobs[names[0]], False))
        values: dict[str, dict[str, list[float]]] = {n: {} for n, _, _ in runs}
        total, done = len(runs) * seeds, 0
        for seed in range(seeds):
            for n, blob, pretrained in runs:
                done += 1
                print(
                    f"[{done}/{total}] {n} seed {seed} ({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                res = flatten(
                    run_protocol(blob, cfg, data, seed=seed, pretrained=pretrained, log=lambda m: None)
                )
                for k, v in res.items():
                    values[n].setdefault(k, []).append(v)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    order = [n for n, _, _ in runs]
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
