"""Ground-truth loss functions deliberately OUTSIDE lawfit's law forms, to measure how well the fitted laws
predict and allocate when the world is not of their family (scripts/law_sim_study.py,
docs/notes/law_sim_study_2026-11-30.md).

Every truth maps samples seen D (n, m) to the held-out loss of every domain (n, m), in pure NumPy. Each
family's parameters are drawn at random from a seeded generator within ranges FIXED BEFORE ANY RESULT WAS
SEEN (the docstrings and `*_RANGES` below); they must never be changed to make a study pass. Draws are
relative to a `scale` (the study's target budget, in samples): unique data and amplitudes refer to it, so
the same truth family means the same thing at any budget.

Shared draws (every family), for target i and source j != i:
    E_i     ~ U(0.3, 0.6)            irreducible loss
    alpha_i ~ U(0.2, 0.6)            own-data exponent
    G_i     ~ U(0.1, 0.4)            reducible loss of own data alone at D_ref = scale / m own samples;
                                     A_i = G_i (d0_i + D_ref)^alpha_i
    d0_i    ~ logU(100, 1000)        samples of prior (pretraining-like) data; keeps L(0) finite
    U_j     ~ logU(scale/20, scale/2) unique samples of domain j
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARED_RANGES = {
    "E": (0.3, 0.6),
    "alpha": (0.2, 0.6),
    "G": (0.1, 0.4),
    "d0": (100.0, 1000.0),  # log-uniform
    "unique_over_scale": (1 / 20, 1 / 2),  # log-uniform
}
SATURATING_RANGES = {
    "k_zero_prob": 1 / 3,
    "k": (0.05, 1.0),  # log-uniform where nonzero
    "c_over_scale": (0.01, 0.3),  # log-uniform
    "b_zero_prob": 1 / 2,
    "b": (0.02, 0.08),  # uniform where nonzero
}
ATLAS_RANGES = {
    "tau_zero_prob": 1 / 3,
    "tau": (0.05, 0.8),  # log-uniform where nonzero
    "lam": (2.0, 10.0),  # log-uniform, epochs
    "b_zero_prob": 1 / 2,
    "b": (0.005, 0.02),  # uniform where nonzero, loss per log-unit
}


def _loguniform(rng: np.random.Generator, lo: float, hi: float, size) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _sparse_matrix(rng, m: int, zero_prob: float, draw) -> np.ndarray:
    """(m, m) off-diagonal draws, each pair independently 0 with probability zero_prob (asymmetric)."""
    vals = draw((m, m))
    keep = rng.uniform(size=(m, m)) >= zero_prob
    out = np.where(keep, vals, 0.0)
    np.fill_diagonal(out, 0.0)
    return out


def _as_rows(D: np.ndarray, m: int) -> np.ndarray:
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    if D.ndim != 2 or D.shape[1] != m:
        raise ValueError(f"truth loss: D must have shape (n, {m}), got {D.shape}")
    if np.any(D < 0) or not np.all(np.isfinite(D)):
        raise ValueError("truth loss: D must be finite and >= 0 (samples seen)")
    return D


@dataclass(frozen=True, eq=False)
class _Shared:
    domains: tuple[str, ...]
    E: np.ndarray  # (m,)
    A: np.ndarray  # (m,)
    alpha: np.ndarray  # (m,)
    d0: np.ndarray  # (m,)
    unique: np.ndarray  # (m,) unique samples per domain

    @property
    def m(self) -> int:
        return len(self.domains)

    def unique_samples(self) -> dict[str, int]:
        return {d: int(u) for d, u in zip(self.domains, self.unique)}


def _draw_shared(rng: np.random.Generator, m: int, scale: float, fixed_d0: float | None = None) -> dict:
    r = SHARED_RANGES
    E = rng.uniform(*r["E"], m)
    alpha = rng.uniform(*r["alpha"], m)
    G = rng.uniform(*r["G"], m)
    d0 = _loguniform(rng, *r["d0"], m)
    if fixed_d0 is not None:
        d0 = np.full(m, float(fixed_d0))
    lo, hi = r["unique_over_scale"]
    unique = np.round(_loguniform(rng, lo * scale, hi * scale, m))
    d_ref = scale / m
    return {
        "domains": tuple(f"t{i}" for i in range(m)),
        "E": E,
        "A": G * (d0 + d_ref) ** alpha,
        "alpha": alpha,
        "d0": d0,
        "unique": unique,
    }


@dataclass(frozen=True, eq=False)
class SaturatingTruth(_Shared):
    """(a) Saturating transfer + capacity competition.

        L_i(D) = E_i + A_i (d0_i + D_i + sum_{j != i} k_ij D_j / (1 + D_j / c_ij))^-alpha_i
                     + sum_{j != i} b_ij r_j^1.5,        r_j = D_j / sum_l D_l  (0 when nothing seen)

    Why realistic: what one domain teaches another (low-level image statistics, anatomy shared between CT
    and MRI) is learned early and then exhausted, so j's data counts as at most k_ij c_ij samples of i
    (lawfit's k f^gamma never saturates). A fixed-size model shares its capacity between the domains of
    a mixture: the larger j's share, the more of the model serves j, a penalty that depends on the
    composition and not on the budget (as in the "data mixing laws" of Ye et al. 2024, which are
    functions of the shares).

    Draws (besides the shared ones of the module docstring), each pair independently:
        k_ij = 0 with probability 1/3, else logU(0.05, 1.0)
        c_ij ~ logU(0.01, 0.3) * scale     (samples of j at which its transfer is half saturated)
        b_ij = 0 with probability 1/2, else U(0.02, 0.08)
    """

    k: np.ndarray  # (m, m), zero diagonal; k[i, j] = transfer from j to i
    c: np.ndarray  # (m, m)
    b: np.ndarray  # (m, m), zero diagonal

    family = "saturating"

    def loss(self, D: np.ndarray) -> np.ndarray:
        D = _as_rows(D, self.m)
        # X[n, i, j] = D_j / (1 + D_j / c_ij): j's saturated contribution to target i
        X = D[:, None, :] / (1.0 + D[:, None, :] / self.c[None])
        S = self.d0[None] + D + np.einsum("ij,nij->ni", self.k, X)
        tot = D.sum(axis=1, keepdims=True)
        r = np.divide(D, tot, out=np.zeros_like(D), where=tot > 0)
        pen = r**1.5 @ self.b.T
        return self.E[None] + self.A[None] * S ** (-self.alpha[None]) + pen


def repetition_discount(D: np.ndarray, U: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Effective samples of D samples drawn from U unique ones: D up to one epoch, beyond it

        S(D) = U + lam U log(1 + (D - U) / (lam U)),

    so the e-th repeat of a sample is worth about 1 / (1 + (e - 1) / lam) of a fresh one: a slower,
    never-saturating decay, unlike the exponential cap lawfit's repetition form assumes."""
    D = np.asarray(D, dtype=np.float64)
    over = np.maximum(D - U, 0.0)
    return np.minimum(D, U) + lam * U * np.log1p(over / (lam * U))


@dataclass(frozen=True, eq=False)
class AtlasTruth(_Shared):
    """(b) ATLAS-like effective data with a repetition discount and log interference.

        L_i(D) = E_i + A_i (d0_i + S_i(D_i) + sum_{j != i} tau_ij S_j(D_j))^-alpha_i
                     + sum_{j != i} b_ij log(1 + D_j / (d0_i + D_i))

    with S_j the repetition discount of `repetition_discount` (U_j unique samples, lam_j epochs).

    Why realistic: ATLAS (Longpre et al. 2025, arXiv 2510.22037) models a target's loss through effective
    data (its own plus transfer-weighted sources), each with a saturation for repeated data. The penalty
    grows with the log of the other domains' data relative to the target's own: a model that sees only
    other domains first improves on i through transfer, then drifts away from it (the rebound of
    off-domain curves measured on the demo's real runs, docs/notes/law_study_2026-11-28.md), while at a
    fixed mixture the penalty tends to a constant, b log(1 + r_j / r_i).

    Draws (besides the shared ones of the module docstring):
        tau_ij = 0 with probability 1/3, else logU(0.05, 0.8)
        lam_j ~ logU(2, 10)
        b_ij = 0 with probability 1/2, else U(0.005, 0.02)
    """

    tau: np.ndarray  # (m, m), zero diagonal
    lam: np.ndarray  # (m,)
    b: np.ndarray  # (m, m), zero diagonal

    family = "atlas"

    def loss(self, D: np.ndarray) -> np.ndarray:
        D = _as_rows(D, self.m)
        S = repetition_discount(D, self.unique[None], self.lam[None])
        T = self.d0[None] + S + S @ self.tau.T
        # ratio[n, i, j] = D_j / (d0_i + D_i)
        ratio = D[:, None, :] / (self.d0[None, :, None] + D[:, :, None])
        pen = np.einsum("ij,nij->ni", self.b, np.log1p(ratio))
        return self.E[None] + self.A[None] * T ** (-self.alpha[None]) + pen


@dataclass(frozen=True, eq=False)
class TransferTruth(_Shared):
    """Control, INSIDE lawfit's family: its `transfer` form with gamma = 1 and d0 = 1 sample,

        L_i(D) = E_i + A_i (1 + D_i + sum_{j != i} k_ij D_j)^-alpha_i,

    to check the study's harness: what lawfit misses here is extrapolation and noise, not the form.
    Draws: the shared ones with d0_i = 1 (A_i from G_i as there); k_ij as in the saturating family."""

    k: np.ndarray  # (m, m), zero diagonal

    family = "control"

    def loss(self, D: np.ndarray) -> np.ndarray:
        D = _as_rows(D, self.m)
        S = self.d0[None] + D + D @ self.k.T
        return self.E[None] + self.A[None] * S ** (-self.alpha[None])


def draw_saturating(m: int, seed: int, scale: float) -> SaturatingTruth:
    rng = np.random.default_rng([seed, 101])
    shared = _draw_shared(rng, m, scale)
    r = SATURATING_RANGES
    k = _sparse_matrix(rng, m, r["k_zero_prob"], lambda s: _loguniform(rng, *r["k"], s))
    lo, hi = r["c_over_scale"]
    c = _loguniform(rng, lo * scale, hi * scale, (m, m))
    b = _sparse_matrix(rng, m, r["b_zero_prob"], lambda s: rng.uniform(*r["b"], s))
    return SaturatingTruth(**shared, k=k, c=c, b=b)


def draw_atlas(m: int, seed: int, scale: float) -> AtlasTruth:
    rng = np.random.default_rng([seed, 202])
    shared = _draw_shared(rng, m, scale)
    r = ATLAS_RANGES
    tau = _sparse_matrix(rng, m, r["tau_zero_prob"], lambda s: _loguniform(rng, *r["tau"], s))
    lam = _loguniform(rng, *r["lam"], m)
    b = _sparse_matrix(rng, m, r["b_zero_prob"], lambda s: rng.uniform(*r["b"], s))
    return AtlasTruth(**shared, tau=tau, lam=lam, b=b)


def draw_control(m: int, seed: int, scale: float) -> TransferTruth:
    rng = np.random.default_rng([seed, 505])
    shared = _draw_shared(rng, m, scale, fixed_d0=1.0)
    r = SATURATING_RANGES
    k = _sparse_matrix(rng, m, r["k_zero_prob"], lambda s: _loguniform(rng, *r["k"], s))
    return TransferTruth(**shared, k=k)


# Family name -> (draw function, default number of domains). Fixed with the ranges above. `control` is in
# lawfit's family (a check of the harness), not one of the study's truths.
FAMILIES = {
    "saturating": (draw_saturating, 4),
    "atlas": (draw_atlas, 5),
    "control": (draw_control, 4),
}
Truth = SaturatingTruth | AtlasTruth | TransferTruth


def draw(family: str, seed: int, scale: float, m: int | None = None) -> Truth:
    if family not in FAMILIES:
        raise ValueError(f"unknown truth family {family!r}; known: {sorted(FAMILIES)}")
    fn, m_default = FAMILIES[family]
    m = m_default if m is None else m
    if m < 2:
        raise ValueError(f"truth family {family!r}: m must be >= 2, got {m}")
    if not scale > 0:
        raise ValueError(f"truth family {family!r}: scale must be > 0, got {scale}")
    return fn(m, seed, scale)
