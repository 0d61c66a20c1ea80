"""Hub and island structure of the fitted laws at a budget.

At a point D (samples per domain), G_ij = dL_i/dD_j. The exchange rate T_ij = G_ij / G_ii (i != j) is how
many of its own samples one more sample of j is worth to target i at the margin (0: no transfer, 1: as good
as its own data). Out-strength of j = mean over targets i != j of T_ij (how much j's data helps the others:
its hubness); in-strength of i = mean over sources j != i of T_ij (how much i gains from others).

Rule (stated in the report):
  hub          out-strength >= HUB_OUT (0.25)
  island       out-strength < ISLAND and in-strength < ISLAND (0.05): neither gives nor takes
  intermediate otherwise
The point D is the proportional allocation of the budget (every domain has data there, independent of the
optimizer's corner solutions).
"""

from __future__ import annotations

import numpy as np

from .lawsfile import Laws

HUB_OUT = 0.25
ISLAND = 0.05


def classify(out_s: float, in_s: float) -> str:
    if out_s >= HUB_OUT:
        return "hub"
    if out_s < ISLAND and in_s < ISLAND:
        return "island"
    return "intermediate"


def exchange_rates(laws: Laws, D: np.ndarray, targets=None) -> tuple[np.ndarray, np.ndarray]:
    """T (m, m), T_ij = (dL_i/dD_j) / (dL_i/dD_i) at D, and the gradient G = dL_i/dD_j."""
    _, G = laws.value_grad(np.asarray(D, dtype=np.float64), targets)
    own = np.diag(G).copy()
    own[own == 0] = -np.finfo(float).tiny
    T = G / own[:, None]
    np.fill_diagonal(T, 1.0)
    return T, G


def hub_analysis(laws: Laws, D: np.ndarray, *, budget_samples: float | None = None, boots=None) -> dict:
    """Exchange rates, strengths and classes at D; with bootstrap laws (`boots`, from
    `laws.bootstrap_targets()`), the interval of every exchange rate at the laws' level and rule."""
    D = np.asarray(D, dtype=np.float64)
    T, G = exchange_rates(laws, D)
    m = len(laws.domains)
    off = ~np.eye(m, dtype=bool)
    out_s = np.array([T[off[:, j], j].mean() if m > 1 else 0.0 for j in range(m)])
    in_s = np.array([T[i, off[i]].mean() if m > 1 else 0.0 for i in range(m)])
    N = float(budget_samples if budget_samples is not None else D.sum())
    # Loss reduction of target i when 1% of the budget's samples go to domain j (first-order).
    M = -G * (0.01 * N)
    out = {
        "at_samples": {d: float(x) for d, x in zip(laws.domains, D)},
        "rule": f"hub: out-strength >= {HUB_OUT}; island: out- and in-strength < {ISLAND}; else intermediate. "
        "T[i][j] = (dL_i/dD_j) / (dL_i/dD_i) at the proportional allocation of the budget.",
        "exchange_rate": {
            di: {dj: float(T[i, j]) for j, dj in enumerate(laws.domains)} for i, di in enumerate(laws.domains)
        },
        "marginal_benefit_per_percent": {
            di: {dj: float(M[i, j]) for j, dj in enumerate(laws.domains)} for i, di in enumerate(laws.domains)
        },
        "out_strength": {d: float(x) for d, x in zip(laws.domains, out_s)},
        "in_strength": {d: float(x) for d, x in zip(laws.domains, in_s)},
        "class": {d: classify(o, n) for d, o, n in zip(laws.domains, out_s, in_s)},
    }
    if boots:
        draws = np.stack([exchange_rates(laws, D, t)[0] for t in boots])
        lo, hi = laws.interval_of(draws, estimate=T, axis=0)
        out["exchange_rate_interval"] = {
            di: {dj: [float(lo[i, j]), float(hi[i, j])] for j, dj in enumerate(laws.domains)}
            for i, di in enumerate(laws.domains)
        }
    return out
