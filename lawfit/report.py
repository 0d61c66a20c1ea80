"""`lawfit report`: figures (PNG) and a markdown summary of the laws and, if given, the allocation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from voxmix.formats.io import atomic_write_text

from .hubs import HUB_OUT, ISLAND, hub_analysis
from .lawsfile import Laws


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _data(laws: Laws):
    d = laws.fit.get("data")
    if not d:
        return None
    y = np.array([[np.nan if v is None else v for v in row] for row in d["loss"]], dtype=float)
    return d["run_ids"], np.asarray(d["run"]), np.asarray(d["samples_seen"], dtype=float), y


def fig_fit_curves(laws: Laws, path: Path) -> Path | None:
    data = _data(laws)
    if data is None:
        return None
    run_ids, run, D, y = data
    plt = _plt()
    m = len(laws.domains)
    cols = min(3, m)
    rows = (m + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, constrained_layout=True
    )
    cmap = plt.get_cmap("tab20")
    boots = laws.bootstrap_targets()  # unpacked once, used for every run's band
    for t, d in enumerate(laws.domains):
        ax = axes[t // cols][t % cols]
        for r in range(len(run_ids)):
            rows_r = np.flatnonzero((run == r) & np.isfinite(y[:, t]))
            if not len(rows_r):
                continue
            tot = D[rows_r].sum(axis=1)
            order = np.argsort(tot)
            color = cmap(r % 20)
            ax.plot(tot[order], y[rows_r[order], t], "o", ms=3, color=color)
            # The law along this run's trajectory (its own mixture), with the bootstrap band.
            grid = np.geomspace(max(tot.min(), 1), tot.max(), 40)
            frac = D[rows_r[order[-1]]] / max(tot.max(), 1)
            Dg = grid[:, None] * frac[None, :]
            ax.plot(grid, laws.predict(Dg)[:, t], "-", lw=1, color=color)
            iv = laws.predict_interval(Dg, boots=boots)
            if iv is not None:
                ax.fill_between(grid, iv[0][:, t], iv[1][:, t], color=color, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"target {d}", fontsize=10)
        ax.set_xlabel("samples seen (all domains)")
        ax.set_ylabel("held-out MAE loss")
    for t in range(m, rows * cols):
        axes[t // cols][t % cols].axis("off")
    fig.suptitle(f"fitted laws ({laws.form}) and observed losses; one colour per run", fontsize=11)
    _save(fig, path)
    plt.close(fig)
    return path


def fig_matrix(laws: Laws, hubs: dict, path: Path) -> Path:
    plt = _plt()
    doms = laws.domains
    T = np.array([[hubs["exchange_rate"][i][j] for j in doms] for i in doms])
    np.fill_diagonal(T, np.nan)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(doms), 0.8 + 0.8 * len(doms)))
    im = ax.imshow(T, cmap="viridis", vmin=0, vmax=max(1e-9, np.nanmax(T)))
    ax.set_xticks(range(len(doms)), doms, rotation=45, ha="right")
    ax.set_yticks(range(len(doms)), doms)
    ax.set_xlabel("source domain j (data)")
    ax.set_ylabel("target domain i (loss)")
    for i in range(len(doms)):
        for j in range(len(doms)):
            if i != j:
                ax.text(j, i, f"{T[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="exchange rate T_ij (own samples per sample of j)")
    ax.set_title("transfer at the budget")
    _save(fig, path)
    plt.close(fig)
    return path


def fig_hubs(laws: Laws, hubs: dict, path: Path) -> Path:
    plt = _plt()
    doms = laws.domains
    m = len(doms)
    ang = np.linspace(0, 2 * np.pi, m, endpoint=False)
    pos = np.c_[np.cos(ang), np.sin(ang)]
    colors = {"hub": "tab:red", "island": "tab:gray", "intermediate": "tab:blue"}
    fig, ax = plt.subplots(figsize=(6, 6))
    T = hubs["exchange_rate"]
    for a, i in enumerate(doms):
        for b, j in enumerate(doms):
            if i != j and T[i][j] > 0.02:
                ax.annotate(
                    "",
                    xy=pos[a] * 0.85,
                    xytext=pos[b] * 0.85,
                    arrowprops={
                        "arrowstyle": "->",
                        "lw": 0.5 + 4 * min(T[i][j], 1.0),
                        "alpha": 0.6,
                        "connectionstyle": "arc3,rad=0.12",
                    },
                )
    for a, d in enumerate(doms):
        c = hubs["class"][d]
        ax.scatter(*pos[a], s=900, color=colors[c], zorder=3)
        ax.text(
            *(pos[a] * 1.22),
            f"{d}\n{c}\nout {hubs['out_strength'][d]:.2f} in {hubs['in_strength'][d]:.2f}",
            ha="center",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.axis("off")
    ax.set_title("data j -> loss i, width = exchange rate")
    _save(fig, path)
    plt.close(fig)
    return path


def fig_allocation(alloc: dict, path: Path) -> Path:
    plt = _plt()
    doms = list(alloc["domains"])
    series = {"transfer-aware": alloc} | {k: v for k, v in alloc.get("baselines", {}).items()}
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(doms), 3.8))
    width = 0.8 / len(series)
    for s, (name, e) in enumerate(series.items()):
        ax.bar(np.arange(len(doms)) + s * width, [e["domains"][d]["weight"] for d in doms], width, label=name)
    ax.set_xticks(np.arange(len(doms)) + 0.4 - width / 2, doms, rotation=30, ha="right")
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=8)
    ax.set_title(f"allocation of {alloc['budget']['samples']} samples")
    _save(fig, path)
    plt.close(fig)
    return path


def _iv(laws: Laws, d: str, key: str) -> str:
    iv = laws.uncertainty.get("intervals", {}).get(d, {}).get(key)
    return f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def write_report(laws: Laws, alloc: dict | None, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doms = laws.domains
    if alloc is not None and "hubs" in alloc:
        hubs = alloc["hubs"]
    else:
        data = _data(laws)
        budget = float(data[2].sum(axis=1).max()) if data else 1e4
        U = np.array([laws.unique_samples.get(d, 1.0) for d in doms])
        hubs = hub_analysis(laws, budget * U / U.sum(), budget_samples=budget)
    files = [
        p
        for p in (
            fig_fit_curves(laws, out / "fit_curves.png"),
            fig_matrix(laws, hubs, out / "transfer_matrix.png"),
            fig_hubs(laws, hubs, out / "hubs.png"),
        )
        if p
    ]
    if alloc is not None:
        files.append(fig_allocation(alloc, out / "allocation.png"))
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
    for d in doms:
        t = laws.targets[d]
        rm = laws.fit.get("per_target", {}).get(d, {}).get("rmse_log")
        md.append(
            f"| {d} | {t.E:.4g}{_iv(laws, d, 'E')} | {t.A:.4g}{_iv(laws, d, 'A')} | "
            f"{t.alpha:.3f}{_iv(laws, d, 'alpha')} | {'-' if rm is None else f'{rm:.4f}'} |"
        )
    md += [
        "",
        "## Transfer and hubs",
        "",
        hubs["rule"],
        "",
        "| domain | class | out-strength | in-strength |",
        "| --- | --- | --- | --- |",
    ]
    md += [
        f"| {d} | {hubs['class'][d]} | {hubs['out_strength'][d]:.3f} | {hubs['in_strength'][d]:.3f} |"
        for d in doms
    ]
    md += [
        "",
        f"(thresholds: hub >= {HUB_OUT}, island < {ISLAND})",
        "",
        "![fit curves](fit_curves.png)",
        "",
        "![transfer](transfer_matrix.png)",
        "",
        "![hubs](hubs.png)",
        "",
    ]
    if alloc is not None:
        md += [
            "## Allocation",
            "",
            f"Budget: {alloc['budget']}.",
            "",
            "| domain | share | samples | predicted loss |",
            "| --- | --- | --- | --- |",
        ]
        for d in doms:
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
        md += [
            "",
            f"Transfer-aware objective: {alloc['objective']['value']:.4f}; KKT satisfied: "
            f"{alloc['objective']['kkt']['satisfied']}.",
            "",
            "![allocation](allocation.png)",
            "",
        ]
    files.append(atomic_write_text(out / "report.md", "\n".join(md) + "\n"))
    return files
