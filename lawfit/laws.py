"""Law forms: named parameters, their packing into fit vectors, and one generic value + Jacobian.

Default form, for target domain i and D_j samples of domain j seen:

    L_i(D) = E_i + A_i * (d0 + f_i(D_i) + sum_{j != i} k_ij * f_j(D_j) ** gamma_ij) ** (-alpha_i)

* k_ij >= 0: how much one sample of domain j counts as a sample of i (asymmetric); gamma_ij > 0.
* d0 (default 1 sample) keeps the loss finite where a run has seen no data that helps i (e.g. an island
  evaluated in another domain's pilot run): L_i(0) = E_i + A_i * d0 ** -alpha_i.
* f_j(D) = D, or with data-constrained repetition (Muennighoff et al. 2023) when D exceeds the unique
  data U_j:  f_j(D) = U + U * R* * (1 - exp(-(D/U - 1) / R*)), a repeated sample being worth less and less.

All forms share one implementation (`LawForm.evaluate`) and so one gradient: the no-transfer form fixes
every k to 0, the repetition form adds one parameter R* per target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import LawfitError

D0_DEFAULT = 1.0


@dataclass(frozen=True)
class TransferTerm:
    k: float
    gamma: float


@dataclass(frozen=True)
class TargetLaw:
    """The fitted law of one target domain, with named parameters."""

    target: str
    E: float
    A: float
    alpha: float
    transfer: dict[str, TransferTerm] = field(default_factory=dict)
    r_star: float | None = None  # repetition half-life in epochs; None: repeated data counts fully

    def to_json(self) -> dict:
        out = {
            "E": self.E,
            "A": self.A,
            "alpha": self.alpha,
            "transfer": {j: {"k": t.k, "gamma": t.gamma} for j, t in self.transfer.items()},
        }
        if self.r_star is not None:
            out["r_star"] = self.r_star
        return out

    @classmethod
    def from_json(cls, target: str, obj: dict, where: str) -> TargetLaw:
        def num(o: dict, key: str, lo: float, what: str) -> float:
            v = o.get(key)
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise LawfitError(f"{where}: field '{what}.{key}': expected a finite number, got {v!r}")
            if v < lo:
                raise LawfitError(f"{where}: field '{what}.{key}': must be >= {lo}, got {v}")
            return float(v)

        base = f"targets.{target}"
        transfer = {}
        for j, t in (obj.get("transfer") or {}).items():
            if not isinstance(t, dict):
                raise LawfitError(f"{where}: field '{base}.transfer.{j}': expected an object")
            transfer[j] = TransferTerm(
                num(t, "k", 0.0, f"{base}.transfer.{j}"), num(t, "gamma", 1e-9, f"{base}.transfer.{j}")
            )
        r_star = obj.get("r_star")
        return cls(
            target=target,
            E=num(obj, "E", 0.0, base),
            A=num(obj, "A", 0.0, base),
            alpha=num(obj, "alpha", 1e-9, base),
            transfer=transfer,
            r_star=None if r_star is None else num(obj, "r_star", 1e-9, base),
        )


def effective_data(D: np.ndarray, U: np.ndarray, r_star: float | None) -> tuple[np.ndarray, np.ndarray]:
    """f(D) and df/dR*: repeated samples (beyond the unique data U) count with diminishing value."""
    D = np.asarray(D, dtype=np.float64)
    if r_star is None:
        return D, np.zeros_like(D)
    U = np.broadcast_to(np.asarray(U, dtype=np.float64), D.shape)
    rep = np.isfinite(U) & (U > 0) & (D > U)
    Us = np.where(rep, U, 1.0)
    x = np.where(rep, D / Us - 1.0, 0.0)
    e = np.exp(-x / r_star)
    f = np.where(rep, Us + Us * r_star * (1.0 - e), D)
    dfdr = np.where(rep, Us * (1.0 - e - (x / r_star) * e), 0.0)
    return f, dfdr


@dataclass(frozen=True)
class LawForm:
    """A law form: which parts of the general law are active. Register new ones in FORMS."""

    name: str
    transfer: bool
    repetition: bool
    description: str

    # ---- parameter layout ---------------------------------------------------------------------------
    # The fit vector is reparametrized around a reference data scale R (geometric mean of the data) so
    # that its coordinates are nearly uncorrelated: G = A * R^-alpha is the reducible loss at R, and
    # kappa_j = k_j * R^(gamma_j - 1) is j's exchange rate at R (k f^gamma = kappa R (f/R)^gamma). With
    # A and alpha fitted directly, a tiny change of alpha needs a huge compensating change of log A and
    # a local solver crawls along that valley. R = 1 gives back the natural parameters (used for storage).
    def param_names(self, others: list[str]) -> list[str]:
        names = ["log_E", "log_G", "alpha"]
        if self.transfer:
            names += [f"kappa[{j}]" for j in others] + [f"gamma[{j}]" for j in others]
        if self.repetition:
            names.append("log_r_star")
        return names

    def gamma_slice(self, n_params: int) -> slice:
        """Where the gamma_j sit in a fit vector of n_params entries (empty without transfer)."""
        m = (n_params - 3 - self.repetition) // 2 if self.transfer else 0
        return slice(3 + m, 3 + 2 * m)

    def bounds(self, others: list[str], y_min: float) -> list[tuple[float, float]]:
        # E may sit slightly above the lowest observed loss only by noise.
        b = [(np.log(y_min * 1e-3), np.log(y_min * 1.05)), (-25.0, 25.0), (0.01, 2.0)]
        if self.transfer:
            b += [(0.0, 20.0)] * len(others) + [(0.1, 2.0)] * len(others)
        if self.repetition:
            b.append((np.log(0.1), np.log(1000.0)))
        return b

    def pack(self, law: TargetLaw, others: list[str], ref: float = 1.0) -> np.ndarray:
        th = [np.log(max(law.E, 1e-300)), np.log(max(law.A, 1e-300)) - law.alpha * np.log(ref), law.alpha]
        if self.transfer:
            tt = [law.transfer.get(j, TransferTerm(0.0, 1.0)) for j in others]
            th += [t.k * ref ** (t.gamma - 1.0) for t in tt] + [t.gamma for t in tt]
        if self.repetition:
            th.append(np.log(law.r_star if law.r_star else 5.0))
        return np.asarray(th, dtype=np.float64)

    def unpack(self, theta: np.ndarray, target: str, others: list[str], ref: float = 1.0) -> TargetLaw:
        m = len(others)
        transfer = {}
        if self.transfer:
            transfer = {
                j: TransferTerm(
                    float(theta[3 + a] * ref ** (1.0 - theta[3 + m + a])), float(theta[3 + m + a])
                )
                for a, j in enumerate(others)
            }
        return TargetLaw(
            target=target,
            E=float(np.exp(theta[0])),
            A=float(np.exp(theta[1] + theta[2] * np.log(ref))),
            alpha=float(theta[2]),
            transfer=transfer,
            r_star=float(np.exp(theta[-1])) if self.repetition else None,
        )

    # ---- value and Jacobian -------------------------------------------------------------------------
    def evaluate(
        self,
        theta: np.ndarray,
        D_own: np.ndarray,
        D_oth: np.ndarray,
        U_own: np.ndarray,
        U_oth: np.ndarray,
        d0: float = D0_DEFAULT,
        jac: bool = True,
        ref: float = 1.0,
    ):
        """log L at n points and d(log L)/d(theta) (n, p). D_own (n,), D_oth (n, m)."""
        E, G, alpha = np.exp(theta[0]), np.exp(theta[1]), theta[2]
        m = D_oth.shape[1]
        r_star = float(np.exp(theta[-1])) if self.repetition else None
        f_own, df_own = effective_data(D_own, U_own, r_star)
        S = d0 + f_own
        if self.transfer and m:
            kap, g = theta[3 : 3 + m], theta[3 + m : 3 + 2 * m]
            f_oth, df_oth = effective_data(D_oth, U_oth, r_star)
            pos = f_oth > 0
            logf = np.log(np.where(pos, f_oth, ref) / ref)  # log(f / R)
            pw = np.where(pos, ref * np.exp(g * logf), 0.0)  # R (f/R)^gamma with 0 at f = 0
            S = S + pw @ kap
        logS = np.log(S / ref)
        P = G * np.exp(-alpha * logS)
        L = E + P
        if not jac:
            return np.log(L), None
        cols = [E / L, P / L, -P * logS / L]
        base = -alpha * P / (S * L)  # d(log L)/dS
        if self.transfer and m:
            cols += list((base[:, None] * pw).T) + list((base[:, None] * pw * kap * logf).T)
        if self.repetition:
            dS = df_own
            if self.transfer and m:
                fpow = np.where(pos, np.exp((g - 1.0) * logf), 0.0)  # (f/R)^(gamma-1)
                dS = dS + (df_oth * fpow) @ (kap * g)
            cols.append(base * dS * r_star)
        return np.log(L), np.stack(cols, axis=1)


FORMS: dict[str, LawForm] = {
    "no_transfer": LawForm(
        "no_transfer",
        transfer=False,
        repetition=False,
        description="L_i = E_i + A_i (d0 + D_i)^-alpha_i: each domain learns only from itself",
    ),
    "transfer": LawForm(
        "transfer",
        transfer=True,
        repetition=False,
        description="L_i = E_i + A_i (d0 + D_i + sum_j k_ij D_j^gamma_ij)^-alpha_i",
    ),
    "transfer_repetition": LawForm(
        "transfer_repetition",
        transfer=True,
        repetition=True,
        description="transfer form with data-constrained repetition: D -> U + U R* (1 - exp(-(D/U - 1)/R*))",
    ),
}


def get_form(name: str) -> LawForm:
    try:
        return FORMS[name]
    except KeyError:
        raise LawfitError(f"unknown law form {name!r}; known forms: {sorted(FORMS)}") from None


def law_value_grad(
    law: TargetLaw, domains: list[str], D: np.ndarray, U: np.ndarray | None = None, d0: float = D0_DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """Loss of `law.target` at rows of samples-seen D (n, m) and its gradient dL/dD (n, m).

    Needs only the named parameters (an empty `transfer` is the no-transfer law), so allocation, hub
    analysis and simulation do not care which form produced the law.
    """
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    Uv = np.full(D.shape[1], np.inf) if U is None else np.asarray(U, dtype=np.float64)
    f, _ = effective_data(D, Uv, law.r_star)
    if law.r_star is None:
        fprime = np.ones_like(D)
    else:
        Us = np.where(np.isfinite(Uv) & (Uv > 0), Uv, np.inf)
        over = D > Us
        fprime = np.where(over, np.exp(-(D / np.where(over, Us, 1.0) - 1.0) / law.r_star), 1.0)
    i = domains.index(law.target)
    S = d0 + f[:, i]
    dS = np.zeros_like(D)
    dS[:, i] = fprime[:, i]
    for j, t in law.transfer.items():
        if j not in domains:
            continue
        c = domains.index(j)
        fj = f[:, c]
        pos = fj > 0
        S = S + t.k * np.where(pos, fj, 0.0) ** t.gamma
        # d/dD of k f^gamma; at f = 0 with gamma < 1 the slope is infinite: cap it at f = 1 sample.
        dS[:, c] = t.k * t.gamma * np.maximum(fj, 1.0) ** (t.gamma - 1.0) * fprime[:, c]
    P = law.A * S ** (-law.alpha)
    grad = (-law.alpha * P / S)[:, None] * dS
    return law.E + P, grad


def predict_loss(
    law: TargetLaw, domains: list[str], D: np.ndarray, U: np.ndarray | None = None, d0: float = D0_DEFAULT
) -> np.ndarray:
    return law_value_grad(law, domains, D, U, d0)[0]
