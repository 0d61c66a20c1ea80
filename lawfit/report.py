"""`lawfit report`: figures (PNG, report_figures.py) and report.md from laws.json, optionally the allocation
and held-out run logs drawn over the fitted points.

Everything about the laws goes through `Laws.predict` / `predict_interval` / `value_grad` and
`hub_analysis`, so the report works for every law form.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from voxmix.formats.allocation import Allocation, parse_allocation, validate_extras
from voxmix.formats.io import atomic_write_text

from .dataset import Dataset
from .errors import LawfitError
from .hubs import HUB_OUT, ISLAND, hub_analysis
from .lawsfile import Laws
from .report_figures import (
    RunPoints,
    fig_allocation,
    fig_fit_curves,
    fig_hubs,
    fig_transfer,
    save_figure,
    transfer_note,
)

HOLDOUT_PREFIX = "holdout-"  # lawfit plan's held-out validation runs
# The band rule's tolerance: a run's data counts as reaching target i when the law's prediction for i
# moves by more than 0.5% away from its no-data value. Below that the curve is the floor (and looks flat).
FLOOR_RTOL = 0.005


# ---- the points drawn ---------------------------------------------------------------------------------
def _fitted_points(laws: Laws):
    m = len(laws.domains)
    d = laws.fit.get("data")
    if not d:
        return [], np.zeros(0, dtype=int), np.zeros((0, m)), np.zeros((0, m))
    y = np.array([[np.nan if v is None else v for v in row] for row in d["loss"]], dtype=float)
    return list(d["run_ids"]), np.asarray(d["run"], dtype=int), np.asarray(d["samples_seen"], dtype=float), y


def _laws_columns(laws: Laws, ds: Dataset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The held-out dataset's samples and losses in the laws' domain order (0 samples / nan loss for a
    domain the runs do not have)."""
    m = len(laws.domains)
    if not set(ds.domains) & set(laws.domains):
        raise LawfitError(f"--runs: the runs' domains {ds.domains} share none with the laws' {laws.domains}")
    D, y, notes = np.zeros((len(ds.y), m)), np.full((len(ds.y), m), np.nan), []
    for c, d in enumerate(ds.domains):
        if d in laws.domains:
            k = laws.domains.index(d)
            D[:, k], y[:, k] = ds.D[:, c], ds.y[:, c]
        elif (ds.D[:, c] > 0).any():
            notes.append(
                f"--runs: domain '{d}' has no law in laws.json (domains {laws.domains}); the curves of runs "
                "that saw it ignore those samples."
            )
    return D, y, notes


def run_points(laws: Laws, holdout: Dataset | None = None) -> tuple[RunPoints, list[str]]:
    """The fitted points from laws.json plus the runs of `holdout`, each run marked fitted or held out.

    A run is fitted when it is in `fit.runs` (files without it: every run of `fit.data`); any other run is
    held out. A run of `holdout` that laws.json already holds is drawn once, from laws.json."""
    ids, run, D, y = _fitted_points(laws)
    fitted_ids = set(laws.fit.get("runs") or ids)
    fitted = [r in fitted_ids for r in ids]
    parts, notes = [(run, D, y)], []
    if holdout is not None:
        Dh, yh, notes = _laws_columns(laws, holdout)
        dup = []
        for r, rid in enumerate(holdout.run_ids):
            rows = holdout.run == r
            if rid in fitted_ids or rid in ids:
                dup.append(rid)
            elif rows.any():
                parts.append((np.full(int(rows.sum()), len(ids)), Dh[rows], yh[rows]))
                ids.append(rid)
                fitted.append(False)
        if dup:
            notes.append(f"--runs: {len(dup)} run(s) already in laws.json, drawn once from there: {dup}.")
    named = [r for r, f in zip(ids, fitted) if f and r.startswith(HOLDOUT_PREFIX)]
    if named:
        notes.append(
            f"run(s) {named} are named as held out ('{HOLDOUT_PREFIX}') but the laws were fitted on them "
            "(fit.runs): they are drawn as fitted, so they are no out-of-sample check. Fit without them "
            "and pass them with --runs to check the laws."
        )
    run, D, y = (np.concatenate(a) for a in zip(*parts))
    return RunPoints(ids, fitted, run.astype(int), D, y), notes


def band_mask(laws: Laws, pts: RunPoints, rtol: float = FLOOR_RTOL) -> np.ndarray:
    """(n_runs, m): draw run r's bootstrap band for target i only when the run saw i's own data, or data
    that moves the law's prediction for i away from its no-data floor L_i(0) (by more than `rtol` of it at
    some evaluation point: transfer, interference, whatever the form has). Elsewhere the law predicts that
    floor whatever the run saw, and a band there would show the floor's uncertainty, not the run's."""
    m = len(laws.domains)
    band = pts.seen()  # own data: column i of run r
    if not len(pts.D):
        return band
    floor = laws.predict(np.zeros((1, m)))[0]
    moved = np.abs(laws.predict(pts.D) - floor) > rtol * np.abs(floor)  # (n, m) per evaluation point
    for r in range(pts.n_runs):
        band[r] |= moved[pts.run == r].any(axis=0)
    return band


# ---- transfer ----------------------------------------------------------------------------------------
def proportional_point(laws: Laws, alloc: dict | None, pts: RunPoints) -> tuple[np.ndarray, str]:
    """Samples per domain at which transfer is read: the allocation's own point when given (lawfit
    allocate's proportional baseline), else the largest fitted run's total split like the unique data."""
    if alloc is not None and "hubs" in alloc:
        at = alloc["hubs"]["at_samples"]
        return np.array([float(at[d]) for d in laws.domains]), "the allocation's proportional baseline"
    tot = pts.D.sum(axis=1)[np.asarray(pts.fitted, dtype=bool)[pts.run]] if pts.n_runs else np.zeros(0)
    budget = float(tot.max()) if tot.size and tot.max() > 0 else 1e4
    U = laws.U
    if np.all(np.isfinite(U) & (U > 0)):
        return budget * U / U.sum(), "the largest fitted run's samples, split in proportion to unique data"
    m = len(laws.domains)
    return np.full(m, budget / m), "the largest fitted run's samples, split uniformly (unique data unknown)"


def exchange_matrix(laws: Laws, hubs: dict) -> np.ndarray:
    T = hubs["exchange_rate"]
    return np.array([[T[i][j] for j in laws.domains] for i in laws.domains], dtype=float)


def exchange_rates(laws: Laws, at: np.ndarray, boots: list):
    """hub_analysis at `at`, its exchange-rate matrix T (m, m), and T's bootstrap interval (lo, hi): T
    recomputed under each bootstrap law set, read off with the file's level and rule (None without
    bootstrap laws)."""
    hubs = hub_analysis(laws, at, boots=boots)
    T = exchange_matrix(laws, hubs)
    if not boots:
        return hubs, T, None
    ivs = hubs["exchange_rate_interval"]
    lo, hi = (np.array([[ivs[i][j][k] for j in laws.domains] for i in laws.domains]) for k in (0, 1))
    return hubs, T, (lo, hi)


# ---- report.md ---------------------------------------------------------------------------------------
def _iv(laws: Laws, d: str, key: str) -> str:
    iv = laws.uncertainty.get("intervals", {}).get(d, {}).get(key)
    return f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def _md_laws(laws: Laws) -> list[str]:
    sel = laws.fit.get("selection", {})
    md = ["# lawfit report", "", f"Form: **{laws.form}** — {sel.get('method', '')}.", ""]
    if sel.get("cv_rmse_log"):
        md += ["| form | held-out RMSE (log loss) |", "| --- | --- |"]
        md += [
            f"| {f}{' (chosen)' if f == laws.form else ''} | {v:.4f} |" for f, v in sel["cv_rmse_log"].items()
        ]
        md.append("")
    lvl = laws.uncertainty.get("level")
    # laws.json files written before #12 have no "resample" field: they resampled runs.
    how = laws.uncertainty.get("resample", "runs")
    md += [
        f"## Laws{f' ({int(100 * lvl)}% bootstrap intervals, resampling {how})' if lvl else ''}",
        "",
        "| target | E | A | alpha | fit RMSE (log) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in laws.domains:
        t = laws.targets[d]
        rm = laws.fit.get("per_target", {}).get(d, {}).get("rmse_log")
        md.append(
            f"| {d} | {t.E:.4g}{_iv(laws, d, 'E')} | {t.A:.4g}{_iv(laws, d, 'A')} | "
            f"{t.alpha:.3f}{_iv(laws, d, 'alpha')} | {'-' if rm is None else f'{rm:.4f}'} |"
        )
    return md + [""]


def _holdout_table(laws: Laws, pts: RunPoints) -> list[str]:
    rows = []
    for r, rid in enumerate(pts.run_ids):
        if pts.fitted[r]:
            continue
        sel = pts.run == r
        err = np.log(laws.predict(pts.D[sel])) - np.log(pts.y[sel])
        err = err[np.isfinite(err)]
        if err.size:
            rows.append(f"| {rid} | {err.size} | {np.sqrt(np.mean(err**2)):.4f} | {np.mean(err):+.4f} |")
    if not rows:
        return []
    head = ["| held-out run | points | RMSE of log loss | mean log(predicted / observed) |"]
    return ["", *head, "| --- | --- | --- | --- |", *rows]


def _md_fit(laws: Laws, pts: RunPoints, boots: list, level: float) -> list[str]:
    md = ["## Fit curves", ""]
    if not pts.n_runs:
        return md + [
            "laws.json holds no fitted points (`fit.data`) and no `--runs` were given: no figure.",
            "",
        ]
    held = [r for r, f in zip(pts.run_ids, pts.fitted) if not f]
    reach = (
        "runs that saw the target's own data, or whose data moves the law's prediction for the target away "
        f"from its no-data floor L_i(0) (by more than {100 * FLOOR_RTOL:g}% at some evaluation point: "
        "transfer or interference, as the form has them)"
    )
    floor = "the law predicts its no-data floor there whatever the run saw"
    if boots:
        band = (
            f"Band rule: the shaded {round(100 * level)}% bootstrap band ({len(boots)} refits) is drawn only "
            f"for {reach}. Other runs' curves are grey, dashed and have no band: {floor}, and a band would "
            "only show that floor's uncertainty."
        )
    else:
        band = (
            "laws.json has no bootstrap laws (fit with `--bootstrap N`): no bands. Solid lines: "
            f"{reach}; grey dashed: other runs ({floor})."
        )
    ho = f"hollow squares: {len(held)} held-out run(s)"
    if held:
        ho += f" ({', '.join(held)}), not used by the fit: their distance to their curves checks the laws"
        ho += " out of sample"
    md += [
        "![fit curves](fit_curves.png)",
        "",
        "One panel per target domain: y is the run's held-out loss on that domain, x the total samples the "
        "run had seen, all domains together (log scale). Filled circles: the "
        f"{pts.n_runs - len(held)} run(s) the laws were fitted on; {ho}. Each line is the law evaluated "
        f"along that run's own samples seen. {band}",
    ]
    if not held:
        hint = (
            "No held-out runs drawn: pass `--runs DIR...` with the held-out run logs (e.g. `runs/holdout-*`)."
        )
        md += ["", hint]
    return md + _holdout_table(laws, pts) + [""]


def _md_transfer(laws: Laws, hubs: dict, T: np.ndarray, iv, at: np.ndarray, at_what: str, n_boot: int):
    note = transfer_note(laws, T)
    if iv is not None:
        lvl = round(100 * laws.uncertainty.get("level", 0.9))
        cells = (
            f" Each cell: T_ij and its {lvl}% bootstrap interval over the {n_boot} bootstrap law sets "
            "(T recomputed under each)."
        )
    else:
        cells = " No bootstrap laws: point values only."
    none = f" **{note[0].upper()}{note[1:]}.**" if note else ""
    point = ", ".join(f"{d} {x:,.0f}" for d, x in zip(laws.domains, at))
    md = [
        "## Transfer and hubs",
        "",
        "![transfer](transfer_matrix.png)",
        "",
        "Exchange rates T_ij = (dL_i/dD_j) / (dL_i/dD_i): how many of target i's own samples one more sample "
        "of source j is worth at the margin (rows: targets, columns: sources; asymmetric). Blue: j's data "
        f"helps i; red: it hurts (interference); 0: no transfer. Read at {at_what} ({point} samples)."
        + cells
        + none,
        "",
        "![hubs](hubs.png)",
        "",
        hubs["rule"],
        "",
        "| domain | class | out-strength | in-strength |",
        "| --- | --- | --- | --- |",
    ]
    md += [
        f"| {d} | {hubs['class'][d]} | {hubs['out_strength'][d]:.3f} | {hubs['in_strength'][d]:.3f} |"
        for d in laws.domains
    ]
    return md + ["", f"(thresholds: hub >= {HUB_OUT}, island < {ISLAND})", ""]


def report_allocation(laws: Laws, alloc: Allocation | dict) -> tuple[dict, list[str]]:
    """The allocation as the report reads it, and notes on what it lacked.

    Its domains must be the laws'. The fields `lawfit allocate` adds are checked where present
    (voxmix.formats.allocation.validate_extras); an allocation without them (hand-written, or from
    `make_allocation`) is reported with the losses these laws predict at its samples."""
    if isinstance(alloc, dict):
        alloc = parse_allocation(alloc, "allocation")
    if alloc.domains != sorted(laws.domains):
        raise LawfitError(
            f"{alloc.source}: field 'domains': {alloc.domains} are not the laws' domains "
            f"{sorted(laws.domains)}; report an allocation made from these laws"
        )
    obj = validate_extras(alloc.to_json(), alloc.source)
    notes = []
    if "predicted_loss" not in obj:
        D = np.array([[float(alloc.samples[d]) for d in laws.domains]])
        obj["predicted_loss"] = dict(zip(laws.domains, laws.predict(D)[0].tolist()))
        notes.append(
            f"{alloc.source} has no predicted losses (not written by lawfit allocate?): the table shows "
            "these laws' predictions at its samples."
        )
    return obj, notes


def _md_allocation(laws: Laws, alloc: dict, notes: list[str]) -> list[str]:
    md = [
        "## Allocation",
        "",
        *[line for n in notes for line in (f"Note: {n}", "")],
        f"Budget: {alloc['budget']}.",
        "",
        "| domain | share | samples | predicted loss |",
        "| --- | --- | --- | --- |",
    ]
    for d in laws.domains:
        e = alloc["domains"][d]
        md.append(f"| {d} | {e['weight']:.3f} | {e['samples']} | {alloc['predicted_loss'][d]:.4f} |")
    md += [
        "",
        "| baseline | predicted weighted loss | improvement (raw) | improvement (reducible) |",
        "| --- | --- | --- | --- |",
    ]
    for name, b in alloc.get("baselines", {}).items():
        im = b["improvement"]
        md.append(
            f"| {name} | {b['objective']:.4f} | {100 * im['raw']:.2f}% | {100 * im['reducible']:.2f}% |"
        )
    if "objective" in alloc:
        md += [
            "",
            f"Transfer-aware objective: {alloc['objective']['value']:.4f}; KKT satisfied: "
            f"{alloc['objective']['kkt']['satisfied']}.",
        ]
    return md + ["", "![allocation](allocation.png)", ""]


def write_report(
    laws: Laws,
    alloc: Allocation | dict | None,
    out_dir: str | os.PathLike,
    holdout: Dataset | None = None,
) -> list[Path]:
    """Write the figures and report.md to out_dir; `holdout`: extra (held-out) runs to draw."""
    alloc, alloc_notes = report_allocation(laws, alloc) if alloc is not None else (None, [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts, notes = run_points(laws, holdout)
    at, at_what = proportional_point(laws, alloc, pts)
    boots = laws.bootstrap_targets()  # unpacked once: every band and interval uses them
    level = float(laws.uncertainty.get("level", 0.9))
    hubs, T, iv = exchange_rates(laws, at, boots)
    files = []
    if pts.n_runs:
        fig = fig_fit_curves(laws, pts, band_mask(laws, pts), boots, level)
        files.append(save_figure(fig, out / "fit_curves.png"))
    fig = fig_transfer(laws, T, iv, float(at.sum()), level, len(boots))
    files.append(save_figure(fig, out / "transfer_matrix.png"))
    files.append(save_figure(fig_hubs(laws, hubs), out / "hubs.png"))
    if alloc is not None:
        files.append(save_figure(fig_allocation(alloc), out / "allocation.png"))
    md = (
        _md_laws(laws)
        + _md_fit(laws, pts, boots, level)
        + _md_transfer(laws, hubs, T, iv, at, at_what, len(boots))
    )
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if alloc is not None:
        md += _md_allocation(laws, alloc, alloc_notes)
    files.append(atomic_write_text(out / "report.md", "\n".join(md) + "\n"))
    return files
