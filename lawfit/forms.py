"""Law forms: which parts of the general law (lawfit/laws.py) a fit uses, their packing into fit vectors,
and one generic value + Jacobian of log L for the fitter.

Forms (register new ones in FORMS; every consumer reads only `TargetLaw`'s named parameters):
  no_transfer          E, A, alpha, d0
  transfer             + k_j, gamma_j per source
  transfer_repetition  + R* (data-constrained repetition)
  interference         + k_j (gamma = 1) and signed rho_j per source, one dbar: help that turns into
                       competition as a source's share grows
  transfer_lowrank     k_ij = b_i a_j (gamma = 1): 2m transfer numbers instead of m (m - 1), for studies
                       with few runs; fitted jointly (lawfit/lowrank.py)
d0 is fitted per target in every form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LawfitError
from .laws import TargetLaw, TransferTerm, effective_data, repeated

RHO_BOUND = 2.0  # |rho| <= 2: a source can change the loss at most e^2 ~ 7x at full share


@dataclass(frozen=True)
class LawForm:
    """A law form: which parts of the general law are active."""

    name: str
    transfer: bool
    gamma: bool  # transfer returns to scale fitted per source (else gamma = 1)
    interference: bool
    repetition: bool
    description: str
    joint: bool = False  # fitted over all targets at once (lawfit/lowrank.py), not target by target

    # ---- parameter layout ---------------------------------------------------------------------------
    # The fit vector is reparametrized around a reference data scale R (geometric mean of the data) so
    # that its coordinates are nearly uncorrelated: G = A * R^-alpha is the reducible loss at R, and
    # kappa_j = k_j * R^(gamma_j - 1) is j's exchange rate at R (k f^gamma = kappa R (f/R)^gamma). With
    # A and alpha fitted directly, a tiny change of alpha needs a huge compensating change of log A and
    # a local solver crawls along that valley. R = 1 gives back the natural parameters (used for storage).
    def layout(self, m: int) -> dict[str, slice]:
        """Where each parameter group sits in a fit vector, for m other domains."""
        sizes = [("log_E", 1), ("log_G", 1), ("alpha", 1), ("log_d0", 1)]
        if self.transfer:
            sizes.append(("kappa", m))
            if self.gamma:
                sizes.append(("gamma", m))
        if self.interference:
            sizes += [("rho", m), ("log_dbar", 1)]
        if self.repetition:
            sizes.append(("log_r_star", 1))
        out, a = {}, 0
        for name, n in sizes:
            out[name] = slice(a, a + n)
            a += n
        return out

    def n_params(self, m: int) -> int:
        return max(s.stop for s in self.layout(m).values())

    def param_names(self, others: list[str]) -> list[str]:
        names = []
        for g in self.layout(len(others)):
            names += [f"{g}[{j}]" for j in others] if g in ("kappa", "gamma", "rho") else [g]
        return names

    def ridge(self, m: int, ref: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices and centres of the weak ridge on parameters that are not identified when a source does
        not transfer: gamma_j (-> 1) where kappa_j ~ 0, log dbar (-> log R) where every rho_j ~ 0."""
        lay, idx, ctr = self.layout(m), [], []
        if "gamma" in lay:
            idx += list(range(lay["gamma"].start, lay["gamma"].stop))
            ctr += [1.0] * m
        if "log_dbar" in lay:
            idx.append(lay["log_dbar"].start)
            ctr.append(np.log(ref))
        return np.asarray(idx, dtype=np.int64), np.asarray(ctr, dtype=np.float64)

    def bounds(
        self, others: list[str], y_min: float, d_range: tuple[float, float]
    ) -> list[tuple[float, float]]:
        """Box of the fit vector; d_range: the smallest positive and the largest total samples seen."""
        m = len(others)
        d_lo, d_hi = max(d_range[0], 1.0), max(d_range[1], 2.0)
        # E may sit slightly above the lowest observed loss only by noise; d0 between one sample and the
        # largest total seen (beyond it the law is flat over the data: alpha and d0 trade off freely).
        b = [(np.log(y_min * 1e-3), np.log(y_min * 1.05)), (-25.0, 25.0), (0.01, 2.0), (0.0, np.log(d_hi))]
        if self.transfer:
            b += [(0.0, 20.0)] * m
            if self.gamma:
                b += [(0.1, 2.0)] * m
        if self.interference:
            b += [(-RHO_BOUND, RHO_BOUND)] * m + [(np.log(0.01 * d_lo), np.log(100.0 * d_hi))]
        if self.repetition:
            b.append((np.log(0.1), np.log(1000.0)))
        return b

    def pack(self, law: TargetLaw, others: list[str], ref: float = 1.0, d0: float = 1.0) -> np.ndarray:
        """Fit vector of a law (`d0`: the value of a law that carries none of its own)."""
        m = len(others)
        th = np.zeros(self.n_params(m))
        lay = self.layout(m)
        th[0], th[2] = np.log(max(law.E, 1e-300)), law.alpha
        th[1] = np.log(max(law.A, 1e-300)) - law.alpha * np.log(ref)
        th[3] = np.log(law.d0 if law.d0 is not None else d0)
        if self.transfer:
            tt = [law.transfer.get(j, TransferTerm(0.0, 1.0)) for j in others]
            th[lay["kappa"]] = [t.k * ref ** (t.gamma - 1.0) if self.gamma else t.k for t in tt]
            if self.gamma:
                th[lay["gamma"]] = [t.gamma for t in tt]
        if self.interference:
            th[lay["rho"]] = [law.interference.get(j, 0.0) for j in others]
            th[lay["log_dbar"]] = np.log(law.dbar if law.dbar else ref)
        if self.repetition:
            th[lay["log_r_star"]] = np.log(law.r_star if law.r_star else 5.0)
        return th

    def unpack(self, theta: np.ndarray, target: str, others: list[str], ref: float = 1.0) -> TargetLaw:
        lay = self.layout(len(others))
        transfer, rho = {}, {}
        if self.transfer:
            kap = theta[lay["kappa"]]
            gam = theta[lay["gamma"]] if self.gamma else np.ones(len(others))
            transfer = {
                j: TransferTerm(float(kap[a] * ref ** (1.0 - gam[a])), float(gam[a]))
                for a, j in enumerate(others)
            }
        if self.interference:
            rho = {j: float(v) for j, v in zip(others, theta[lay["rho"]])}
        return TargetLaw(
            target=target,
            E=float(np.exp(theta[0])),
            A=float(np.exp(theta[1] + theta[2] * np.log(ref))),
            alpha=float(theta[2]),
            transfer=transfer,
            r_star=float(np.exp(theta[lay["log_r_star"]][0])) if self.repetition else None,
            d0=float(np.exp(theta[3])),
            interference=rho,
            dbar=float(np.exp(theta[lay["log_dbar"]][0])) if self.interference else None,
        )

    # ---- value and Jacobian -------------------------------------------------------------------------
    def evaluate(self, theta, D_own, D_oth, U_own, U_oth, jac: bool = True, ref: float = 1.0):
        """log L at n points and d(log L)/d(theta) (n, p). D_own (n,), D_oth (n, m)."""
        return self.at(D_own, D_oth, U_own, U_oth, ref)(theta, jac)

    def at(self, D_own, D_oth, U_own, U_oth, ref: float = 1.0):
        """`evaluate` at fixed points, as a function theta, jac -> (log L, J) for a solver (#18), which
        evaluates the same points 20-100 times. Computed once here: what depends on the data alone (log(f_j
        / R) of every source, unless repetition makes f depend on R*). Kept between calls: the last
        forward pass (a Jacobian asked for at the point just evaluated reuses it) and the work arrays. At 32
        domains a fresh (n, m) temporary per operation cost more than the arithmetic (page faults), and the
        n x m logarithm a third of an evaluation. J is overwritten by the next call with jac: copy it to
        keep it."""
        D_own, D_oth = np.asarray(D_own, np.float64), np.ascontiguousarray(D_oth, np.float64)
        n, m = D_oth.shape
        lay = self.layout(m)
        tot = D_own + D_oth.sum(axis=1)
        src = self.transfer and m > 0
        # R* acts only on repeated samples: where no point repeats any domain's data (#18, third round),
        # f = D whatever R*, log f is computed once and d log L / d log R* is 0 (the same values, bit for bit).
        reps = self.repetition and bool(
            repeated(D_own, np.broadcast_to(U_own, D_own.shape)).any()
            or repeated(D_oth, np.broadcast_to(U_oth, D_oth.shape)).any()
        )
        fixed = _log_shares(D_oth, ref) if src and not reps else None
        buf = {"pw": np.empty((n, m)) if src else None, "J": None}
        memo: dict = {}

        def forward(theta):
            key = theta.tobytes()
            if memo.get("key") == key:
                return memo
            memo.clear()
            E, G, alpha, d0 = np.exp(theta[0]), np.exp(theta[1]), theta[2], np.exp(theta[3])
            r_star = float(np.exp(theta[lay["log_r_star"]][0])) if self.repetition else None
            f_own, df_own = effective_data(D_own, U_own, r_star) if reps else (D_own, None)
            S = d0 + f_own
            pw = pos = logf = df_oth = None
            if src:
                kap = theta[lay["kappa"]]
                g = theta[lay["gamma"]] if self.gamma else np.ones(m)
                if fixed is None:
                    f_oth, df_oth = effective_data(D_oth, U_oth, r_star)
                    pos, logf = _log_shares(f_oth, ref)
                else:
                    f_oth, (pos, logf) = D_oth, fixed
                if self.gamma or fixed is None:  # R (f/R)^gamma, 0 at f = 0; in place (see above)
                    pw = np.multiply(logf, g, out=buf["pw"])
                    np.exp(pw, out=pw)
                    pw *= pos
                    pw *= ref
                else:  # gamma = 1: f itself
                    pw = f_oth
                S = S + pw @ kap
            logS = np.log(S / ref)
            P = G * np.exp(-alpha * logS)
            B = E + P
            logL = np.log(B)
            Q = den = dbar = None
            if self.interference:
                dbar = np.exp(theta[lay["log_dbar"]][0])
                den = dbar + tot
                Q = (D_oth @ theta[lay["rho"]]) / den
                logL = logL + Q
            memo.update(key=key, E=E, alpha=alpha, d0=d0, r_star=r_star, df_own=df_own, S=S, logS=logS,
                        P=P, B=B, logL=logL, pw=pw, pos=pos, logf=logf, df_oth=df_oth, Q=Q, den=den, dbar=dbar)  # fmt: skip
            return memo

        def ev(theta, jac=True):
            fw = forward(theta)
            if not jac:
                return fw["logL"], None
            if buf["J"] is None or buf["J"].shape[1] != len(theta):
                buf["J"] = np.empty((n, len(theta)))
            J = buf["J"]
            S, P, B, logS, alpha = fw["S"], fw["P"], fw["B"], fw["logS"], fw["alpha"]
            base = -alpha * P / (S * B)  # d(log B)/dS
            J[:, 0], J[:, 1], J[:, 2], J[:, 3] = fw["E"] / B, P / B, -P * logS / B, base * fw["d0"]
            if src:
                kap, ks = theta[lay["kappa"]], lay["kappa"]
                np.multiply(base[:, None], fw["pw"], out=J[:, ks])
                if self.gamma:
                    np.multiply(J[:, ks], kap * fw["logf"], out=J[:, lay["gamma"]])
            if self.interference:
                np.divide(D_oth, fw["den"][:, None], out=J[:, lay["rho"]])
                J[:, lay["log_dbar"]] = (-fw["Q"] * fw["dbar"] / fw["den"])[:, None]
            if self.repetition:
                J[:, lay["log_r_star"].start] = _r_star_column(fw, theta, lay, base, src) if reps else 0.0
            return fw["logL"], J

        return ev


def _r_star_column(fw: dict, theta, lay: dict, base, src: bool):
    """d log L / d log R* of the repetition form, from `LawForm.at`'s forward pass (base: d log B / dS)."""
    dS = fw["df_own"]
    if src:
        kap, g = theta[lay["kappa"]], theta[lay["gamma"]]
        fpow = np.where(fw["pos"], np.exp((g - 1.0) * fw["logf"]), 0.0)  # (f/R)^(gamma-1)
        dS = dS + (fw["df_oth"] * fpow) @ (kap * g)
    return base * dS * fw["r_star"]


def _log_shares(f, ref: float):
    """(f > 0, log(f / R) with 0 where f = 0)."""
    pos = f > 0
    return pos, np.log(np.where(pos, f, ref) / ref)


def _form(
    name: str,
    description: str,
    *,
    transfer=False,
    gamma=False,
    interference=False,
    repetition=False,
    joint=False,
):
    return LawForm(name, transfer, gamma, interference, repetition, description, joint)


FORMS: dict[str, LawForm] = {
    "no_transfer": _form(
        "no_transfer", "L_i = E_i + A_i (d0_i + D_i)^-alpha_i: each domain learns only from itself"
    ),
    "transfer": _form(
        "transfer",
        "L_i = E_i + A_i (d0_i + D_i + sum_j k_ij D_j^gamma_ij)^-alpha_i",
        transfer=True,
        gamma=True,
    ),
    "transfer_repetition": _form(
        "transfer_repetition",
        "transfer form with data-constrained repetition: D -> U + U R* (1 - exp(-(D/U - 1)/R*))",
        transfer=True,
        gamma=True,
        repetition=True,
    ),
    "interference": _form(
        "interference",
        "L_i = [E_i + A_i (d0_i + D_i + sum_j k_ij D_j)^-alpha_i] exp(sum_j rho_ij D_j / (dbar_i + D_tot)): "
        "k >= 0 helps, rho signed (> 0: competition for capacity as j's share grows)",
        transfer=True,
        interference=True,
    ),
    "transfer_lowrank": _form(
        "transfer_lowrank",
        "L_i = E_i + A_i (d0_i + D_i + sum_j b_i a_j D_j)^-alpha_i: a rank-one transfer matrix (a_j what source j "
        "gives, b_i what target i takes), fitted over all targets at once (lawfit/lowrank.py)",
        transfer=True,
        joint=True,
    ),
}


def get_form(name: str) -> LawForm:
    try:
        return FORMS[name]
    except KeyError:
        raise LawfitError(f"unknown law form {name!r}; known forms: {sorted(FORMS)}") from None
