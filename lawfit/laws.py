"""The fitted law of one target domain, with named parameters, and its value and gradient in the data.

For target domain i and D_j samples of domain j seen (D_tot = sum over all domains):

    L_i(D) = B_i(D) * exp(Q_i(D))
    B_i(D) = E_i + A_i * (d0_i + f_i(D_i) + sum_{j != i} k_ij * f_j(D_j) ** gamma_ij) ** (-alpha_i)
    Q_i(D) = sum_{j != i} rho_ij * D_j / (dbar_i + D_tot)

* B is the transfer law: k_ij >= 0 is how much one sample of j counts as a sample of i (asymmetric),
  gamma_ij > 0 its returns to scale. d0_i (fitted per target) is the data the model starts with: the
  loss of a run that saw nothing helping i is E_i + A_i d0_i^-alpha_i, not a point eight log-units left
  of the own curve (d0 = 1 sample was the largest single misfit: docs/notes/law_study_2026-11-28.md).
* Q is interference: other domains' data can *raise* i's loss (rho_ij > 0, competition for capacity,
  measured in every single-domain pilot of the demo) or lower it beyond B (rho_ij < 0). It is a share
  term: small while D_tot << dbar_i (early on, B's transfer dominates), tending to sum_j rho_ij r_j
  (r_j: share of j) at large budgets -- the exp(sum_j t_ij r_j) of Data Mixing Laws (Ye et al. 2024)
  reached through a capacity scale dbar. So j can help at first (k) and compete as its share grows (rho).
  It is multiplicative (additive in log loss) so that L stays positive whatever the sign of rho.
* f_j(D) = D, or with data-constrained repetition (Muennighoff et al. 2023) when D exceeds the unique
  data U_j: f_j(D) = U + U * R* * (1 - exp(-(D/U - 1) / R*)), a repeated sample being worth less and less.

Which parts a fit uses is its form (lawfit/forms.py); this module needs only the named parameters, so
allocation, hubs, simulation and validation work with every form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import LawfitError

D0_DEFAULT = 1.0  # files written before d0 was fitted per target (voxmix.laws/1 without targets.*.d0)


@dataclass(frozen=True)
class TransferTerm:
    k: float
    gamma: float


def _num(o: dict, key: str, lo: float | None, what: str, where: str) -> float:
    v = o.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise LawfitError(f"{where}: field '{what}.{key}': expected a finite number, got {v!r}")
    if lo is not None and v < lo:
        raise LawfitError(f"{where}: field '{what}.{key}': must be >= {lo}, got {v}")
    return float(v)


@dataclass(frozen=True)
class TargetLaw:
    """The fitted law of one target domain, with named parameters."""

    target: str
    E: float
    A: float
    alpha: float
    transfer: dict[str, TransferTerm] = field(default_factory=dict)
    r_star: float | None = None  # repetition half-life in epochs; None: repeated data counts fully
    d0: float | None = None  # None: the file's global d0 (laws written before d0 was fitted)
    interference: dict[str, float] = field(default_factory=dict)  # rho_ij, signed
    dbar: float | None = None  # capacity scale of the interference term (samples)

    def to_json(self) -> dict:
        out = {
            "E": self.E,
            "A": self.A,
            "alpha": self.alpha,
            "transfer": {j: {"k": t.k, "gamma": t.gamma} for j, t in self.transfer.items()},
        }
        if self.r_star is not None:
            out["r_star"] = self.r_star
        if self.d0 is not None:
            out["d0"] = self.d0
        if self.interference:
            out["interference"] = dict(self.interference)
            out["dbar"] = self.dbar
        return out

    @classmethod
    def from_json(cls, target: str, obj: dict, where: str) -> TargetLaw:
        base = f"targets.{target}"
        transfer = {}
        for j, t in (obj.get("transfer") or {}).items():
            if not isinstance(t, dict):
                raise LawfitError(f"{where}: field '{base}.transfer.{j}': expected an object")
            w = f"{base}.transfer.{j}"
            transfer[j] = TransferTerm(_num(t, "k", 0.0, w, where), _num(t, "gamma", 1e-9, w, where))
        inter = obj.get("interference") or {}
        if not isinstance(inter, dict):
            raise LawfitError(f"{where}: field '{base}.interference': expected an object")
        rho = {j: _num(inter, j, None, f"{base}.interference", where) for j in inter}
        opt = {k: (None if obj.get(k) is None else _num(obj, k, 1e-9, base, where)) for k in ("r_star", "d0")}
        dbar = _num(obj, "dbar", 1e-9, base, where) if rho else None
        return cls(
            target=target,
            E=_num(obj, "E", 0.0, base, where),
            A=_num(obj, "A", 0.0, base, where),
            alpha=_num(obj, "alpha", 1e-9, base, where),
            transfer=transfer,
            r_star=opt["r_star"],
            d0=opt["d0"],
            interference=rho,
            dbar=dbar,
        )


def repeated(D: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Where D counts repeated samples (more than the unique data U): the only entries R* acts on."""
    return np.isfinite(U) & (U > 0) & (D > U)


def effective_data(D: np.ndarray, U: np.ndarray, r_star: float | None) -> tuple[np.ndarray, np.ndarray]:
    """f(D) and df/dR*: repeated samples (beyond the unique data U) count with diminishing value."""
    D = np.asarray(D, dtype=np.float64)
    if r_star is None:
        return D, np.zeros_like(D)
    U = np.broadcast_to(np.asarray(U, dtype=np.float64), D.shape)
    rep = repeated(D, U)
    Us = np.where(rep, U, 1.0)
    x = np.where(rep, D / Us - 1.0, 0.0)
    e = np.exp(-x / r_star)
    f = np.where(rep, Us + Us * r_star * (1.0 - e), D)
    dfdr = np.where(rep, Us * (1.0 - e - (x / r_star) * e), 0.0)
    return f, dfdr


def _fprime(D: np.ndarray, U: np.ndarray, r_star: float | None) -> np.ndarray:
    """df/dD of the repetition discount (1 without repetition or below the unique data)."""
    if r_star is None:
        return np.ones_like(D)
    Us = np.where(np.isfinite(U) & (U > 0), U, np.inf)
    over = D > Us
    return np.where(over, np.exp(-(D / np.where(over, Us, 1.0) - 1.0) / r_star), 1.0)


def law_value_grad(
    law: TargetLaw, domains: list[str], D: np.ndarray, U: np.ndarray | None = None, d0: float = D0_DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """Loss of `law.target` at rows of samples-seen D (n, m) and its gradient dL/dD (n, m).

    `d0` is used only by laws that carry none of their own (files written before d0 was fitted).
    """
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    Uv = np.full(D.shape[1], np.inf) if U is None else np.asarray(U, dtype=np.float64)
    f, _ = effective_data(D, Uv, law.r_star)
    fprime = _fprime(D, Uv, law.r_star)
    i = domains.index(law.target)
    S = (law.d0 if law.d0 is not None else d0) + f[:, i]
    dS = np.zeros_like(D)
    dS[:, i] = fprime[:, i]
    for j, t in law.transfer.items():
        if j not in domains:
            continue
        c = domains.index(j)
        fj = f[:, c]
        S = S + t.k * np.where(fj > 0, fj, 0.0) ** t.gamma
        # d/dD of k f^gamma; at f = 0 with gamma < 1 the slope is infinite: cap it at f = 1 sample.
        dS[:, c] = t.k * t.gamma * np.maximum(fj, 1.0) ** (t.gamma - 1.0) * fprime[:, c]
    P = law.A * S ** (-law.alpha)
    B = law.E + P
    dB = (-law.alpha * P / S)[:, None] * dS
    if not law.interference:
        return B, dB
    den = law.dbar + D.sum(axis=1)
    rho = np.array([law.interference.get(d, 0.0) if d != law.target else 0.0 for d in domains])
    Q = (D @ rho) / den
    L = B * np.exp(Q)
    dQ = (rho[None, :] - Q[:, None]) / den[:, None]  # d/dD_c of N/den, N = sum_j rho_j D_j
    return L, np.exp(Q)[:, None] * dB + L[:, None] * dQ


def predict_loss(
    law: TargetLaw, domains: list[str], D: np.ndarray, U: np.ndarray | None = None, d0: float = D0_DEFAULT
) -> np.ndarray:
    return law_value_grad(law, domains, D, U, d0)[0]
