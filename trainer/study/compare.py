"""The demo's result: predicted vs measured held-out loss of the two final runs.

`compare(out)` reads <out>/laws.json, allocation.json and the final runs' logs (each through its owner:
`Laws.load`, `read_allocation`, `read_runlog`); `table(res)` renders the markdown table, the verdict and
the correlation that `make demo` prints and writes to report.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from voxmix.formats.allocation import read_allocation
from voxmix.formats.runlog import RunLog, read_runlog
from voxmix.lawfit.lawsfile import Laws

from .options import StudyError

FINALS = ("proportional", "transfer_aware")


def _final_points(laws: Laws, name: str, log: RunLog) -> tuple[list[list], dict]:
    """Every evaluation of one final run as [name, domain, samples, predicted, measured], and its last."""
    doms = laws.domains
    points = []
    for ev in log.evals:
        D = np.array([[ev.samples_seen.get(d, 0) for d in doms]], dtype=float)
        pred = laws.predict(D)[0]
        for j, d in enumerate(doms):
            points.append([name, d, int(D.sum()), float(pred[j]), float(ev.loss[d])])
    last = log.evals[-1]
    D = np.array([[last.samples_seen.get(d, 0) for d in doms]], dtype=float)
    final = {
        "samples_seen": {d: int(last.samples_seen.get(d, 0)) for d in doms},
        "predicted": dict(zip(doms, map(float, laws.predict(D)[0]))),
        "measured": {d: float(last.loss[d]) for d in doms},
    }
    return points, final


def _gains(laws: Laws, runs: dict) -> tuple[dict, dict, dict]:
    """Measured gain of transfer-aware over proportional, per domain and summed; raw and reducible."""
    doms = laws.domains
    E = {d: laws.targets[d].E for d in doms}
    P, T = runs["proportional"]["measured"], runs["transfer_aware"]["measured"]
    per_domain = {
        d: {"raw": (P[d] - T[d]) / P[d], "reducible": (P[d] - T[d]) / max(P[d] - E[d], 1e-12)} for d in doms
    }
    sp, st, se = sum(P.values()), sum(T.values()), sum(E.values())
    return per_domain, {"raw": (sp - st) / sp, "reducible": (sp - st) / max(sp - se, 1e-12)}, E


def compare(out: Path) -> dict:
    """Predicted vs measured held-out loss of the final runs; gains; r on the unseen budget; hub classes."""
    laws = Laws.load(out / "laws.json")
    alloc = read_allocation(out / "allocation.json")
    doms = laws.domains
    res: dict = {"domains": doms, "runs": {}, "points": []}
    for name in FINALS:
        log = read_runlog(out / "final" / f"final-{name}")
        if log.status != "completed" or not log.evals:
            raise StudyError(f"{log.path}: the final run did not complete")
        points, res["runs"][name] = _final_points(laws, name, log)
        res["points"] += points
    pts = np.array([[p[3], p[4]] for p in res["points"]])
    res["r"] = float(np.corrcoef(pts[:, 0], pts[:, 1])[0, 1]) if len(pts) > 2 else math.nan
    res["r_final_only"] = float(
        np.corrcoef(
            [res["runs"][n]["predicted"][d] for n in res["runs"] for d in doms],
            [res["runs"][n]["measured"][d] for n in res["runs"] for d in doms],
        )[0, 1]
    )
    res["per_domain_gain"], res["gain"], E = _gains(laws, res["runs"])
    res["predicted_gain"] = alloc.extra["baselines"]["proportional"]["improvement"]
    res["hub_class"] = alloc.extra["hubs"]["class"]
    res["E"] = E
    res["form"] = laws.form
    return res


def table(res: dict) -> str:
    doms, P, T = res["domains"], res["runs"]["proportional"], res["runs"]["transfer_aware"]
    lines = [
        "| domain | class | samples prop / TA | predicted prop | measured prop | predicted TA | measured TA "
        "| measured gain raw | measured gain reducible |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in doms:
        g = res["per_domain_gain"][d]
        lines.append(
            f"| {d} | {res['hub_class'][d]} | {P['samples_seen'][d]} / {T['samples_seen'][d]} "
            f"| {P['predicted'][d]:.4f} | {P['measured'][d]:.4f} | {T['predicted'][d]:.4f} "
            f"| {T['measured'][d]:.4f} | {100 * g['raw']:+.2f}% | {100 * g['reducible']:+.2f}% |"
        )
    g, pg = res["gain"], res["predicted_gain"]
    lines.append(
        f"| **all (sum)** | | | {sum(P['predicted'].values()):.4f} | {sum(P['measured'].values()):.4f} "
        f"| {sum(T['predicted'].values()):.4f} | {sum(T['measured'].values()):.4f} "
        f"| {100 * g['raw']:+.2f}% | {100 * g['reducible']:+.2f}% |"
    )
    won = g["raw"] > 0
    verdict = (
        f"Transfer-aware {'beat' if won else 'did NOT beat'} proportional at this budget: measured "
        f"{100 * g['raw']:+.2f}% raw, {100 * g['reducible']:+.2f}% of the reducible loss (predicted "
        f"{100 * pg['raw']:+.2f}% raw, {100 * pg['reducible']:+.2f}% reducible)."
    )
    corr = (
        f"Correlation of predicted and measured held-out loss on the unseen budget (both final runs, every "
        f"evaluation point beyond the pilots, {len(res['points'])} points): r = {res['r']:.3f}; final points "
        f"only: r = {res['r_final_only']:.3f}. Law form chosen: {res['form']}."
    )
    verdict += (
        " One seed per allocation: the seed-to-seed spread of these losses was not measured here, so a "
        "difference of a few percent is not evidence either way."
    )
    return "\n".join(lines) + "\n\n" + verdict + "\n\n" + corr + "\n"
