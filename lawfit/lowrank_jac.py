"""The Jacobian of lawfit/lowrank.py's joint problem with its rank-one structure used (#18, third round).

Rows: every target's points (target i's rows r_in = (log L_i - log y_in) / s_in), then the scale row.
Columns: 5 per target (log E, log G, alpha, log d0, log b_i), then log a_j per source. Target i's rows
depend on log a_j (j != i) through kappa_ij = b_i a_j:

    d r_in / d log a_j = u_in D_nj b_i a_j,    u_in = (d log L_i / d S)_n / s_in,

with D the samples seen at the dataset's rows (N of them). `gn.BlockJacobian` forms J^T W J target by
target: m blocks of (n x (m + 4)), n m^3 in all (16.5 ms a call at 32 domains, 2,560 points per target;
9.2 ms here). Here the (a, a) block is one product over the dataset's rows,

    H_jk = a_j a_k [sum_i b_i^2 sum_n w_in u_in^2 D_nj D_nk  -  (the terms i = j and i = k)],
    = a_j a_k [D^T diag(V) D - C_j[k] - C_k[j] + (j == k) C_j[j]]_jk,
    V_n = sum_i b_i^2 w_in u_in^2,  C_i[k] = b_i^2 sum_n w_in u_in^2 D_ni D_nk,

and a target's (own, a) block is (own columns)^T diag(w u) D: n m^2 in all. Rows are matched through
`pos` (target i's rows in the dataset's rows), so targets may have different points; `Dp[i]` = D[pos[i]]
is made once per solve by the caller (one array for all targets with the same rows).
"""

from __future__ import annotations

import numpy as np


class RankOneJacobian:
    """J of the joint low-rank problem, kept as: per target its 5 own columns and u (n_i,), the shared
    D (N, m) with each target's row positions, b and a, and the scale row's weight per log a_j."""

    def __init__(self, own, u, pos, D, Dp, b, a, scale_w: float):
        self.own, self.u, self.pos, self.D, self.Dp, self.b, self.a = own, u, pos, D, Dp, b, a
        self.m = len(a)
        self.scale_w = scale_w  # the scale row's d/d log a_j, the same for every j
        self.n_cols = 6 * self.m
        self.ends = np.cumsum([len(x) for x in u])

    def _spans(self):
        return zip(range(self.m), self.ends - [len(x) for x in self.u], self.ends)

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        m, out = self.m, np.zeros(self.n_cols)
        z, corr = np.zeros(len(self.D)), np.zeros(m)
        for i, s, e in self._spans():
            vi = v[s:e]
            out[5 * i : 5 * i + 5] = self.own[i].T @ vi
            t = self.b[i] * (vi * self.u[i])
            z[self.pos[i]] += t
            corr[i] = t @ self.Dp[i][:, i]
        out[5 * m :] = self.a * (self.D.T @ z - corr) + v[-1] * self.scale_w
        return out

    def _parts(self, w: np.ndarray):
        """Per target its weighted own columns and w u^2; V and C of the module docstring."""
        m = self.m
        V, C = np.zeros(len(self.D)), np.zeros((m, m))
        ows, wus = [], []
        for i, s, e in self._spans():
            wi = w[s:e]
            wu2 = (self.b[i] ** 2) * wi * self.u[i] ** 2
            V[self.pos[i]] += wu2
            C[i] = (wu2 * self.Dp[i][:, i]) @ self.Dp[i]
            ows.append(self.own[i] * wi[:, None])
            wus.append(wi * self.u[i])
        return V, C, ows, wus

    def gram(self, w: np.ndarray) -> np.ndarray:
        m = self.m
        H = np.zeros((self.n_cols, self.n_cols))
        V, C, ows, wus = self._parts(w)
        ka = slice(5 * m, 6 * m)
        for i in range(m):
            o = slice(5 * i, 5 * i + 5)
            H[o, o] = ows[i].T @ self.own[i]
            X = ((self.own[i] * wus[i][:, None]).T @ self.Dp[i]) * (self.b[i] * self.a)
            X[:, i] = 0.0  # kappa_ii does not exist
            H[o, ka] = X
            H[ka, o] = X.T
        Haa = (self.D * V[:, None]).T @ self.D
        Haa -= C + C.T
        Haa[np.diag_indices(m)] += np.diag(C)
        H[ka, ka] = Haa * np.outer(self.a, self.a) + w[-1] * self.scale_w**2
        return H

    def gram_diag(self, w: np.ndarray) -> np.ndarray:
        m, out = self.m, np.zeros(self.n_cols)
        V, C = np.zeros(len(self.D)), np.zeros(m)
        for i, s, e in self._spans():
            wi = w[s:e]
            out[5 * i : 5 * i + 5] = wi @ (self.own[i] ** 2)
            wu2 = (self.b[i] ** 2) * wi * self.u[i] ** 2
            V[self.pos[i]] += wu2
            C[i] = wu2 @ self.Dp[i][:, i] ** 2
        out[5 * m :] = self.a**2 * (V @ self.D**2 - C) + w[-1] * self.scale_w**2
        return out

    def dense(self) -> np.ndarray:
        m = self.m
        out = np.zeros((int(self.ends[-1]) + 1, self.n_cols))
        for i, s, e in self._spans():
            out[s:e, 5 * i : 5 * i + 5] = self.own[i]
            Da = self.Dp[i] * (self.b[i] * self.a) * self.u[i][:, None]
            Da[:, i] = 0.0
            out[s:e, 5 * m :] = Da
        out[-1, 5 * m :] = self.scale_w
        return out
