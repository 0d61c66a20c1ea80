"""The figures of `lawfit report`. Each `fig_*` returns a matplotlib Figure (so tests can read its legend and
texts before anything is written); `save_figure` writes it as PNG atomically and closes it.

The figures use only `Laws.predict` / `predict_interval` and numbers computed by the caller from
`Laws.value_grad` / `hub_analysis`, so they work for every law form, whatever parameters it has.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmix.formats.io import atomic_write_bytes

from .lawsfile import Laws

FLOOR_COLOR = "0.45"  # curves of runs whose data does not move the target's law (report.band_mask)


@dataclass
class RunPoints:
    """Observed losses of every run drawn: fitted (from laws.json) and held out (extra run logs)."""

    run_ids: list[str]
    fitted: list[bool]  # per run: was it among the runs the laws were fitted on
    run: np.ndarray  # (n,) index into run_ids
    D: np.ndarray  # (n, m) samples of each of the laws' domains seen at each point
    y: np.ndarray  # (n, m) held-out loss of each domain (nan where not evaluated)

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)

    def seen(self) -> np.ndarray:
        """(n_runs, m): did run r see any sample of domain j."""
        out = np.zeros((self.n_runs, self.D.shape[1]), dtype=bool)
        for r in range(self.n_runs):
            out[r] = (self.D[self.run == r] > 0).any(axis=0)
        return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _run_colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(r % cmap.N) for r in range(n)]


def _run_curve(laws: Laws, pts: RunPoints, r: int, boots: list):
    """The law along run r's own samples seen: each domain's samples interpolated between the run's
    evaluation points (exact for a fixed mixture, and honest for one that changes), and its band."""
    rows = pts.run == r
    D = pts.D[rows]
    tot = D.sum(axis=1)
    keep = tot > 0  # a log axis cannot show 0 samples
    if keep.sum() < 2:
        return None
    order = np.argsort(tot[keep])
    tot, D = tot[keep][order], D[keep][order]
    grid = np.geomspace(tot[0], tot[-1], 48)
    Dg = np.column_stack([np.interp(grid, tot, D[:, k]) for k in range(D.shape[1])])
    iv = laws.predict_interval(Dg, boots=boots) if boots else None
    return grid, laws.predict(Dg), iv


def _style_axis(ax, title: str) -> None:
    from matplotlib.ticker import EngFormatter, FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    # Over a decade or two, ticks at 1, 2, 5 x 10^k; matplotlib's default then labels minor ticks with
    # overlapping "4x10^2 6x10^2" text. Wider ranges keep one tick per decade.
    subs = (1.0, 2.0, 5.0) if np.log10(max(hi / max(lo, 1e-300), 1.0)) <= 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(EngFormatter(places=0, sep=""))  # 500, 1k, 2k, 5k, 1M
    ax.xaxis.set_minor_formatter(NullFormatter())
    ylo, yhi = ax.get_ylim()
    if ylo > 0 and yhi / ylo > 10:
        # A no-data floor far above the curves: log y keeps both readable, labelled 0.5, 1, 2 (not 5x10^-1).
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"target: {title}", fontsize=10)


def _legend_handles(pts: RunPoints, colors: list, band_drawn: bool, floor_drawn: bool, band_label: str):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def mk(r):
        return dict(marker="o", mfc=colors[r]) if pts.fitted[r] else dict(marker="s", mfc="none")

    hs = [
        Line2D(
            [],
            [],
            color=colors[r],
            ms=5,
            **mk(r),
            label=f"{'fitted' if pts.fitted[r] else 'held out'}: {rid}",
        )
        for r, rid in enumerate(pts.run_ids)
    ]
    hs.append(Line2D([], [], ls="none", marker="o", color="k", label="filled circle: fitted run (observed)"))
    if not all(pts.fitted):
        hs.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="s",
                mfc="none",
                color="k",
                label="hollow square: held-out run (observed)",
            )
        )
    hs.append(Line2D([], [], color="k", label="law along the run's samples seen"))
    if band_drawn:
        hs.append(Patch(color="k", alpha=0.15, label=band_label))
    if floor_drawn:
        hs.append(
            Line2D(
                [],
                [],
                color=FLOOR_COLOR,
                ls="--",
                label="law at its no-data floor (the run's data\ndoes not move it): no band",
            )
        )
    return hs


def fig_fit_curves(laws: Laws, pts: RunPoints, band: np.ndarray, boots: list, level: float):
    """One panel per target: observed losses of each run and the law along the run's samples seen; the
    bootstrap band only where band[r, target] (see report.band_mask)."""
    plt = _plt()
    m = len(laws.domains)
    cols = min(3, m)
    rows = (m + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols + 3.2, 3.4 * rows), squeeze=False, layout="constrained"
    )
    colors = _run_colors(pts.n_runs)
    curves = [_run_curve(laws, pts, r, boots) for r in range(pts.n_runs)]
    tot = pts.D.sum(axis=1)
    drawn = {"band": False, "floor": False}
    for t, dom in enumerate(laws.domains):
        ax = axes[t // cols][t % cols]
        for r in range(pts.n_runs):
            rows_r = np.flatnonzero((pts.run == r) & np.isfinite(pts.y[:, t]) & (tot > 0))
            if not len(rows_r):
                continue
            c = colors[r]
            style = dict(marker="o", mfc=c) if pts.fitted[r] else dict(marker="s", mfc="none", mew=1.2)
            ax.plot(tot[rows_r], pts.y[rows_r, t], ls="none", ms=4, color=c, zorder=3, **style)
            if curves[r] is None:
                continue
            grid, pred, iv = curves[r]
            if band[r, t]:
                ax.plot(grid, pred[:, t], "-", lw=1.2, color=c)
                if iv is not None:
                    ax.fill_between(grid, iv[0][:, t], iv[1][:, t], color=c, alpha=0.15, lw=0)
                    drawn["band"] = True
            else:
                # Grey, not the run's colour: these curves sit at (or near) the same no-data floor for
                # every such run, and one colour drawn on top would be read as that run's.
                ax.plot(grid, pred[:, t], "--", lw=1.0, color=FLOOR_COLOR)
                drawn["floor"] = True
        _style_axis(ax, dom)
    for t in range(m, rows * cols):
        axes[t // cols][t % cols].axis("off")
    fig.supxlabel("total samples seen by the run, all domains (samples, log scale)", fontsize=10)
    fig.supylabel("held-out loss", fontsize=10)
    fig.suptitle(f"fitted laws ({laws.form}) against observed held-out loss, per target domain", fontsize=11)
    band_label = f"{round(100 * level)}% bootstrap band ({len(boots)} refits)"
    handles = _legend_handles(pts, colors, drawn["band"], drawn["floor"], band_label)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def transfer_note(laws: Laws, T: np.ndarray) -> str | None:
    """What to say when the matrix shows no transfer: the form has none (every T is exactly 0), or the
    fitted laws' rates all print as 0.00; None when some rate is visible."""
    off = np.abs(T[~np.eye(len(T), dtype=bool)])
    if not np.any(off > 0):
        return f"no transfer in the chosen form ({laws.form}): every T_ij is 0"
    if np.all(off < 0.005):
        return f"no measurable transfer in the fitted laws ({laws.form}): every |T_ij| < 0.005"
    return None


def fig_transfer(laws: Laws, T: np.ndarray, iv, at_total: float, level: float, n_boot: int):
    """Heat map of the exchange rates T[i, j] (signed, centred at 0), with the bootstrap interval (lo, hi)
    in each cell when `iv` is given; says so in the figure when the form has no transfer at all."""
    plt = _plt()
    doms = laws.domains
    m = len(doms)
    off = ~np.eye(m, dtype=bool)
    M = np.where(off, T, np.nan)
    ext = [np.abs(T[off])] + ([np.abs(iv[0][off]), np.abs(iv[1][off])] if iv is not None else [])
    vmax = float(max((np.nanmax(e) for e in ext if e.size), default=0.0))
    note = transfer_note(laws, T)
    no_transfer = not np.any(np.abs(T[off]) > 0)
    vmax = vmax if vmax > 0 else 1.0
    # Red: interference (T < 0), blue: transfer (T > 0); the diagonal (own data, T = 1) in grey.
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.88")
    fig, ax = plt.subplots(figsize=(2.2 + 1.25 * m, 1.4 + 0.95 * m), layout="constrained")
    im = ax.imshow(M, cmap=cmap, vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(m), doms, rotation=30, ha="right")
    ax.set_yticks(range(m), doms)
    ax.set_xlabel("source domain j (its samples)")
    ax.set_ylabel("target domain i (its held-out loss)")
    for i in range(m):
        for j in range(m):
            if i == j:
                ax.text(j, i, "own", ha="center", va="center", color="0.4", fontsize=8)
                continue
            if no_transfer:
                s = "0"  # every draw is 0 too: "0.00 [0.00, 0.00]" in each cell would only add noise
            else:
                s = f"{T[i, j]:.2f}" + (f"\n[{iv[0][i, j]:.2f}, {iv[1][i, j]:.2f}]" if iv is not None else "")
            dark = abs(T[i, j]) / vmax > 0.55
            ax.text(j, i, s, ha="center", va="center", color="w" if dark else "k", fontsize=7.5)
    fig.colorbar(im, ax=ax, label="T_ij: samples of i worth one sample of j\n(< 0: interference)")
    shown = iv is not None and not no_transfer
    sub = f"\ncells: T_ij [{round(100 * level)}% bootstrap interval, {n_boot} refits]" if shown else ""
    ax.set_title(f"exchange rates at the proportional point ({at_total:,.0f} samples){sub}", fontsize=10)
    if note:
        ax.text(
            0.5,
            0.5,
            note.replace(": ", ":\n"),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=10,
            bbox={"boxstyle": "round", "fc": "w", "ec": "0.5"},
        )
    return fig


def fig_hubs(laws: Laws, hubs: dict):
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
            if i != j and abs(T[i][j]) > 0.02:
                ax.annotate(
                    "",
                    xy=pos[a] * 0.85,
                    xytext=pos[b] * 0.85,
                    arrowprops={
                        "arrowstyle": "->",
                        "lw": 0.5 + 4 * min(abs(T[i][j]), 1.0),
                        "alpha": 0.6,
                        # Interference (T < 0) in red, so a negative rate is not read as transfer.
                        "color": "tab:red" if T[i][j] < 0 else "0.2",
                        "connectionstyle": "arc3,rad=0.12",
                    },
                )
    for a, d in enumerate(doms):
        c = hubs["class"][d]
        ax.scatter(*pos[a], s=900, color=colors[c], zorder=3)
        # The label on the outer side of its node, aligned away from it, so that it never covers it.
        x, y = pos[a]
        ax.text(
            *(pos[a] * 1.22),
            f"{d}\n{c}\nout {hubs['out_strength'][d]:.2f} in {hubs['in_strength'][d]:.2f}",
            ha="left" if x > 0.3 else "right" if x < -0.3 else "center",
            va="bottom" if y > 0.3 else "top" if y < -0.3 else "center",
            fontsize=8,
        )
    ax.set_xlim(-2.2, 2.2)
    ax.set_ylim(-2.0, 2.0)
    ax.axis("off")
    ax.set_title("data j -> loss i, width = |exchange rate| (red: interference)")
    return fig


def fig_allocation(alloc: dict):
    plt = _plt()
    doms = list(alloc["domains"])
    series = {"transfer-aware": alloc} | dict(alloc.get("baselines", {}))
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(doms), 3.8))
    width = 0.8 / len(series)
    for s, (name, e) in enumerate(series.items()):
        ax.bar(np.arange(len(doms)) + s * width, [e["domains"][d]["weight"] for d in doms], width, label=name)
    ax.set_xticks(np.arange(len(doms)) + 0.4 - width / 2, doms, rotation=30, ha="right")
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=8)
    ax.set_title(f"allocation of {alloc['budget']['samples']} samples")
    return fig
