"""Every target's law at once: the laws of lawfit/laws.py as (m, m) arrays, for allocation and hubs.

Why (#18): `lawfit allocate` evaluates all m laws at one point thousands of times (SLSQP over starts,
the no-transfer baseline, hubs, bootstrap intervals); law by law that is m Python calls each looping over
its m - 1 sources, 1,000 small NumPy calls per evaluation at m = 32. Here one evaluation is a few
whole-array operations on (m, m) arrays. `law_value_grad` stays the definition; the test checks this
against it.
"""

from __future__ import annotations

import numpy as np

from .laws import D0_DEFAULT, TargetLaw


class LawMatrix:
    """The laws of `targets` over `domains` (rows: targets, columns: the data of each domain)."""

    def __init__(
        self, targets: dict[str, TargetLaw], domains: list[str], U: np.ndarray, d0: float = D0_DEFAULT
    ):
        m = len(domains)
        idx = {d: c for c, d in enumerate(domains)}
        law = [targets[d] for d in domains]
        self.E = np.array([t.E for t in law])
        self.A = np.array([t.A for t in law])
        self.alpha = np.array([t.alpha for t in law])
        self.d0 = np.array([t.d0 if t.d0 is not None else d0 for t in law])
        self.K, self.gam = np.zeros((m, m)), np.ones((m, m))
        self.rho, self.dbar = np.zeros((m, m)), np.ones(m)
        self.has_rho = np.zeros(m, dtype=bool)
        for i, t in enumerate(law):
            for j, tt in t.transfer.items():
                if j in idx and idx[j] != i:
                    self.K[i, idx[j]], self.gam[i, idx[j]] = tt.k, tt.gamma
            if t.interference:
                self.has_rho[i], self.dbar[i] = True, t.dbar
                for j, v in t.interference.items():
                    if j in idx and idx[j] != i:
                        self.rho[i, idx[j]] = v
        self.r_star = np.array([t.r_star if t.r_star is not None else np.nan for t in law])
        self.rep = np.isfinite(self.r_star)
        U = np.asarray(U, dtype=np.float64)
        self.Ucap = np.where(np.isfinite(U) & (U > 0), U, np.inf)  # np.inf: never repeated
        self.eye = np.eye(m, dtype=bool)

    def _effective(self, D: np.ndarray):
        """f_ij: domain j's effective data for target i (repetition discount with i's R*), and df/dD."""
        m = len(D)
        f = np.broadcast_to(D, (m, m)).copy()
        fp = np.ones((m, m))
        if not self.rep.any():
            return f, fp
        over = (D > self.Ucap)[None, :] & self.rep[:, None]
        if over.any():
            Us = np.where(np.isfinite(self.Ucap), self.Ucap, 1.0)[None, :]
            rs = np.where(self.rep, self.r_star, 1.0)[:, None]
            x = np.where(over, D[None, :] / Us - 1.0, 0.0)
            e = np.exp(-x / rs)
            f = np.where(over, Us + Us * rs * (1.0 - e), f)
            fp = np.where(over, e, 1.0)
        return f, fp

    def value_grad(self, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L (m,) at one point D (m,) and G = dL_i/dD_j (m, m); as `law_value_grad` target by target."""
        D = np.asarray(D, dtype=np.float64)
        f, fp = self._effective(D)
        fpos = np.where(f > 0, f, 0.0)
        with np.errstate(divide="ignore"):
            # 0 ** gamma is 0 (gamma > 0); masked where k = 0 so that no 0 * inf appears.
            tr = np.where(self.K > 0, self.K * fpos**self.gam, 0.0)
        S = self.d0 + np.diag(f) + tr.sum(axis=1)
        # d/dD of k f^gamma; at f = 0 with gamma < 1 the slope is infinite: cap it at f = 1 (as laws.py).
        dS = np.where(self.K > 0, self.K * self.gam * np.maximum(f, 1.0) ** (self.gam - 1.0) * fp, 0.0)
        dS[self.eye] = np.diag(fp)
        P = self.A * S ** (-self.alpha)
        B = self.E + P
        G = (-self.alpha * P / S)[:, None] * dS
        if not self.has_rho.any():
            return B, G
        den = self.dbar + D.sum()
        Q = np.where(self.has_rho, (self.rho @ D) / den, 0.0)
        eq = np.exp(Q)
        L = B * eq
        dQ = np.where(self.has_rho[:, None], (self.rho - Q[:, None]) / den[:, None], 0.0)
        return L, eq[:, None] * G + L[:, None] * dQ
