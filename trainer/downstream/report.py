"""The evaluation report: positive control first, then every task, the curves, the mixtures per domain.

`build(values, groups, shares, level, alpha)` turns evaluate()'s per-seed values into the JSON sections;
`markdown(report)` renders them. Statistics (stats.py): t intervals over seeds; paired t-tests; Holm over
each family of tests:
1. the positive control (control - random, every metric both have): the protocol counts only if at
   least one metric separates them in the control's favour (p_holm < alpha) — said first;
2. pretrained vs random on every task, with the intensity baseline beside it (intervals, no test), and
   each MAE arm against random: per evaluation seed the mean over the arm's pretraining seeds, paired t
   over the evaluation seeds, Holm over the arm's metrics (reported; round 3, docs/downstream.md);
3. label-efficiency curves (intervals over seeds);
4. the mixtures (one encoder per pretraining seed and arm): per pretraining seed, a metric is the mean
   over the evaluation seeds; arms pair by pretraining seed; Holm over the table;
5. per domain: the allocation shift against the downstream change (the paper's question).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

from .evaluate import INTENSITY
from .stats import holm, paired_test, t_interval

FORMAT = "voxmix.evaluation/1"
CONTROL, RANDOM = "control", "random"


def _iv(xs, level) -> dict:
    s = t_interval(xs, level)
    return {"mean": s.mean, "lo": s.lo, "hi": s.hi, "n": s.n}


def _tests(pairs: dict[str, tuple[list[float], list[float]]], level: float, alpha: float) -> dict:
    """metric -> paired test of b - a with Holm over all the metrics given."""
    rows = {}
    for m, (a, b) in pairs.items():
        keep = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        if len(keep) < 2:
            continue
        t = paired_test([x for x, _ in keep], [y for _, y in keep], level)
        rows[m] = {"n": t.n, "mean_diff": t.mean_diff, "lo": t.lo, "hi": t.hi, "t": t.t, "p": t.p_t}
    adj = holm([r["p"] for r in rows.values()])
    for r, p in zip(rows.values(), adj):
        r["p_holm"] = p
        r["significant"] = bool(math.isfinite(p) and p < alpha)
    return rows


def positive_control(values: dict, level: float, alpha: float) -> dict:
    ctl, rnd = values[CONTROL], values[RANDOM]
    rows = _tests({m: (rnd[m], ctl[m]) for m in ctl if m in rnd}, level, alpha)
    won = [m for m, r in rows.items() if r["significant"] and r["mean_diff"] > 0]
    lost = [m for m, r in rows.items() if r["significant"] and r["mean_diff"] < 0]
    probe = [m for m in won if m.startswith(("anatomy/", "side/"))]
    return {"tests": rows, "separated_on": won, "separated_on_probe": probe, "counts": bool(won),
            "random_better_on": lost, "alpha": alpha, "family": len(rows)}  # fmt: skip


def every_task(values: dict, level: float) -> dict:
    """metric -> intervals of the intensity baseline and of every single encoder (no test)."""
    out = {}
    for m in values[CONTROL]:
        out[m] = {n: _iv(v[m], level) for n, v in values.items() if m in v}
    return out


def arms_vs_random(values: dict, groups: dict[str, list[str]], level: float, alpha: float) -> dict:
    """arm -> paired tests of (arm - random) over the evaluation seeds: the arm's value at a seed is the
    mean over its pretraining seeds' encoders (every encoder saw the same seeds: they pair)."""
    rnd, out = values[RANDOM], {}
    for arm, names in groups.items():
        common = set(rnd).intersection(*(set(values[n]) for n in names))
        pairs = {m: (rnd[m], list(np.mean([values[n][m] for n in names], axis=0))) for m in sorted(common)}
        out[arm] = _tests(pairs, level, alpha)
    return out


def _group_means(values: dict, names: list[str]) -> dict[str, list[float]]:
    """metric -> one value per encoder of the group (its mean over evaluation seeds)."""
    common = set.intersection(*(set(values[n]) for n in names))
    return {m: [float(np.nanmean(values[n][m])) for n in names] for m in sorted(common)}


def mixtures(values: dict, groups: dict[str, list[str]], level: float, alpha: float) -> dict:
    (base, a_names), (other, b_names) = list(groups.items())[:2]
    if len(a_names) != len(b_names) or len(a_names) < 2:
        raise ValueError(f"mixtures: arms {base} and {other} need the same number (>= 2) of pretraining seeds, "
                         f"got {len(a_names)} and {len(b_names)}")  # fmt: skip
    a, b = _group_means(values, a_names), _group_means(values, b_names)
    pairs = {m: (a[m], b[m]) for m in a if m in b}
    return {"base": base, "other": other, "seeds": len(a_names), "tests": _tests(pairs, level, alpha),
            "means": {base: {m: _iv(v, level) for m, v in a.items()}, other: {m: _iv(v, level) for m, v in b.items()}}}  # fmt: skip


def per_domain(mix: dict, shares: dict[str, dict[str, float]], metric: str = "probe") -> dict:
    """Allocation shift (other - base share) against the downstream change of anatomy/<d>/<metric>."""
    base, other = mix["base"], mix["other"]
    rows = []
    for d in shares[base]:
        t = mix["tests"].get(f"anatomy/{d}/{metric}")
        if t is None:
            continue
        knn = mix["tests"].get(f"anatomy/{d}/knn", {})
        every = mix["tests"].get(f"anatomy/{d}/{metric}_all", {})
        rows.append({"domain": d, "share_" + base: shares[base][d], "share_" + other: shares[other].get(d, 0.0),
                     "shift": shares[other].get(d, 0.0) - shares[base][d], "delta": t, "delta_knn": knn,
                     "delta_all": every})  # fmt: skip
    shift = np.array([r["shift"] for r in rows])
    delta = np.array([r["delta"]["mean_diff"] for r in rows])
    summary = {"domains": len(rows)}
    if len(rows) >= 3:
        rho, p = st.spearmanr(shift, delta)
        summary.update(spearman=float(rho), p=float(p),
                       same_sign=int(np.sum(np.sign(shift) == np.sign(delta))))  # fmt: skip
    return {"rows": rows, "summary": summary, "metric": metric}


def curves(values: dict, level: float) -> dict:
    """ "anatomy/<d>/probe" and "finetune/<d>/dice" -> {n: {encoder: interval}} for the label sizes measured."""
    out: dict[str, dict] = {}
    for n, v in values.items():
        for m, xs in v.items():
            head, _, tail = m.rpartition("_n")
            if tail.isdigit() and (m.startswith("anatomy/") or m.startswith("finetune/")):
                out.setdefault(head, {}).setdefault(int(tail), {})[n] = _iv(xs, level)
    return out


def build(values: dict, groups: dict[str, list[str]], shares: dict[str, dict[str, float]] | None,
          level: float = 0.95, alpha: float = 0.05) -> dict:  # fmt: skip
    rep = {"format": FORMAT, "level": level, "alpha": alpha, "positive_control": positive_control(values, level, alpha),
           "tasks": every_task(values, level), "curves": curves(values, level)}  # fmt: skip
    if groups:
        rep["arms_vs_random"] = arms_vs_random(values, groups, level, alpha)
    if len(groups) >= 2:
        rep["mixtures"] = mixtures(values, groups, level, alpha)
        if shares:
            rep["per_domain"] = per_domain(rep["mixtures"], shares)
    return rep


def _ci(r: dict, fmt: str = "{:.3f}") -> str:
    if not math.isfinite(r.get("lo", math.nan)):
        return fmt.format(r["mean"])
    return f"{fmt.format(r['mean'])} [{fmt.format(r['lo'])}, {fmt.format(r['hi'])}]"


def _diff(r: dict) -> str:
    return f"{r['mean_diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"


def markdown(rep: dict, names: list[str]) -> str:
    pc = rep["positive_control"]
    out = ["## 1. Positive control: control (better by construction) vs a random encoder", ""]
    if pc["counts"]:
        out.append(f"**Separated** on {len(pc['separated_on'])} of {pc['family']} metrics (paired t over seeds, "
                   f"Holm over the {pc['family']}, p_holm < {pc['alpha']}), {len(pc['separated_on_probe'])} of them "
                   "representation probes: the protocol can tell a better encoder from a random one here.")  # fmt: skip
    else:
        out.append(f"**Not separated** on any of {pc['family']} metrics (Holm, p_holm < {pc['alpha']}): this protocol "
                   "cannot tell a better encoder from a random one here, so the mixture comparison below does not count.")  # fmt: skip
    if pc["random_better_on"]:
        out += ["", f"The random encoder is better with p_holm < {pc['alpha']} on {len(pc['random_better_on'])} metrics: "
                + ", ".join(pc["random_better_on"]) + "."]  # fmt: skip
    out += ["", "| metric | control - random | p | p_holm | |", "| --- | --- | --- | --- | --- |"]
    for m, r in pc["tests"].items():
        verdict = (
            "separated" if m in pc["separated_on"] else "random better" if m in pc["random_better_on"] else ""
        )
        out.append(f"| {m} | {_diff(r)} | {r['p']:.2g} | {r['p_holm']:.2g} | {verdict} |")
    cols = [INTENSITY, *names]  # the single encoders (control, random, any reported one), not the arms
    out += ["", "## 2. Every task: pretrained vs random, with the intensity baseline", "",
            "| metric | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]  # fmt: skip
    for m, row in rep["tasks"].items():
        out.append(f"| {m} | " + " | ".join(_ci(row[c]) if c in row else "-" for c in cols) + " |")
    for arm, rows in rep.get("arms_vs_random", {}).items():
        better = sum(r["significant"] and r["mean_diff"] > 0 for r in rows.values())
        worse = sum(r["significant"] and r["mean_diff"] < 0 for r in rows.values())
        out += ["", f"### MAE-pretrained `{arm}` (mean of its pretraining seeds) - random", "",
                f"Better than random on {better}, worse on {worse} of {len(rows)} metrics (paired t over the "
                f"evaluation seeds, Holm over the {len(rows)}, p_holm < {rep['alpha']}).", "",
                "| metric | difference | p | p_holm |", "| --- | --- | --- | --- |"]  # fmt: skip
        for m, r in rows.items():
            out.append(
                f"| {m} | {_diff(r)} | {r['p']:.2g} | {r['p_holm']:.2g}{' significant' if r['significant'] else ''} |"
            )
    if rep["curves"]:
        out += ["", "## 3. Label efficiency (mean [interval] over seeds)", ""]
        for head, by_n in rep["curves"].items():
            encs = sorted({e for v in by_n.values() for e in v}, key=lambda e: (e != INTENSITY, e))
            out += [
                f"`{head}`",
                "",
                "| volumes | " + " | ".join(encs) + " |",
                "| --- |" + " --- |" * len(encs),
            ]
            for n in sorted(by_n):
                out.append(
                    f"| {n} | " + " | ".join(_ci(by_n[n][e]) if e in by_n[n] else "-" for e in encs) + " |"
                )
            out.append("")
    if "mixtures" in rep:
        mx = rep["mixtures"]
        out += ["", f"## 4. Mixtures: {mx['other']} - {mx['base']} ({mx['seeds']} pretraining seeds, paired)", "",
                "| metric | difference | p | p_holm |", "| --- | --- | --- | --- |"]  # fmt: skip
        for m, r in mx["tests"].items():
            out.append(
                f"| {m} | {_diff(r)} | {r['p']:.2g} | {r['p_holm']:.2g}{' significant' if r['significant'] else ''} |"
            )
    if "per_domain" in rep:
        pd_, mx = rep["per_domain"], rep["mixtures"]
        b, o = mx["base"], mx["other"]
        out += ["", "## 5. Per domain: does a domain the optimized mix favours gain downstream?", "",
                f"| domain | share {b} | share {o} | shift | Δ token probe | Δ kNN | Δ probe, every layer |",
                "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in pd_["rows"]:
            knn = _diff(r["delta_knn"]) if r["delta_knn"] else "-"
            every = _diff(r["delta_all"]) if r.get("delta_all") else "-"
            out.append(f"| {r['domain']} | {r['share_' + b]:.3f} | {r['share_' + o]:.3f} | {r['shift']:+.3f} | "
                       f"{_diff(r['delta'])} | {knn} | {every} |")  # fmt: skip
        s = pd_["summary"]
        if "spearman" in s:
            out += ["", f"Across the {s['domains']} domains: Spearman rho(shift, Δ probe) = {s['spearman']:+.2f} "
                    f"(p {s['p']:.2g}); shift and change have the same sign in {s['same_sign']} of {s['domains']}."]  # fmt: skip
    return "\n".join(out) + "\n"
