"""Identifiability, said out loud: for each target, which fitted parameters the data do not pin down, and
which run would.

Three checks on the chosen form's fit of each target:
* parameters on a bound of the box (lawfit/forms.py `bounds`), except a transfer k_ij at 0, which is a
  finding ("j does not help i"), not a failure;
* the conditioning of the noise-weighted Jacobian over the free parameters (columns scaled to unit
  length, so units do not matter): a condition number above COND_MAX means some combination of
  parameters moves the fit less than noise would; the parameters loading on that direction are named;
* the design: a source's transfer (k) and interference (rho) terms are told apart only by a run where the
  source was seen without the target (its single-domain pilot) and a run where both were seen (their
  pair); the own law needs the target's own data at >= 3 distinct amounts.
Each problem comes with the run that would fix it, named as `lawfit plan` names runs.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .fit import FormFit, _problem, box
from .forms import FORMS, LawForm

COND_MAX = 1e6


def _run_fix(group: str, target: str, src: str | None) -> str:
    if group in ("kappa", "gamma", "rho"):
        return f"pair-{target}+{src} (a 50/50 mixture of {target} and {src}) and pilot-{src}"
    if group == "log_dbar":
        return f"pairwise mixtures of {target} with the sources it interferes with, at a larger budget"
    if group in ("log_d0",):
        return f"pilot-{target} with an earlier first evaluation (below the fitted d0)"
    return f"pilot-{target} evaluated over a wider range of samples (earlier first and later last evaluation)"


def _split(name: str) -> tuple[str, str | None]:
    if "[" in name:
        g, s = name.split("[", 1)
        return g, s.rstrip("]")
    return name, None


def _bound_problems(names, theta, lo, hi, target) -> tuple[list[str], list[str], list[str]]:
    """Parameters on a bound that matter. Not problems: k_j at 0 (a finding: j does not help), d0 at one
    sample (the classic law without offset), and the parameters of a term that is off -- gamma_j where
    the exchange rate k_j ~ 0, dbar where every rho ~ 0 -- which nothing can identify or depends on."""
    val = dict(zip(names, theta))
    rho_max = max([abs(v) for n, v in val.items() if n.startswith("rho[")] or [0.0])
    probs, fixes, zero = [], [], []
    for n, v, a, b in zip(names, theta, lo, hi):
        g, src = _split(n)
        if a < v < b:
            continue
        if g == "kappa" and v <= a:
            zero.append(src)
            continue
        # kappa is the exchange rate at the data's scale: below 0.01 the term moves no prediction.
        off = (g == "gamma" and abs(val.get(f"kappa[{src}]", 0.0)) < 0.01) or (
            g == "log_dbar" and rho_max < 1e-3
        )
        if off or (g == "log_d0" and v <= a):
            continue
        side = "lower" if v <= a else "upper"
        probs.append(f"{n} at its {side} bound ({v:.4g})")
        fixes.append(_run_fix(g, target, src))
    return probs, fixes, zero


def _conditioning(form: LawForm, theta, prob, ref, lo, hi, names) -> tuple[float, list[str]]:
    """Condition number of the noise-weighted Jacobian over the free parameters that the data move
    (a parameter of a term that is off -- gamma_j where k_j = 0 -- has a zero column: it changes no
    prediction, so it is left out rather than reported), and the parameters loading on its weakest
    direction."""
    _, J = form.evaluate(theta, *prob[:4], ref=ref)
    free = (theta > lo) & (theta < hi)
    J = (J / prob.scale[:, None])[:, free]
    norms = np.linalg.norm(J, axis=0)
    live = norms > 1e-12 * max(float(norms.max(initial=0.0)), 1e-300)
    if not live.any():
        return 1.0, []
    J, live_names = J[:, live] / norms[live], np.asarray(names)[free][live]
    _, s, vt = np.linalg.svd(J, full_matrices=False)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    weak = vt[-1] ** 2
    order = np.argsort(-weak)
    return cond, [str(live_names[a]) for a in order[:3] if weak[a] > 0.1]


def _design_problems(ds: Dataset, i: int, form: LawForm, pts: np.ndarray) -> tuple[list[str], list[str]]:
    target = ds.domains[i]
    probs, fixes = [], []
    own_levels = len(np.unique(ds.D[pts, i][ds.D[pts, i] > 0]))
    if own_levels < 3:
        probs.append(f"own data seen at only {own_levels} distinct amount(s)")
        fixes.append(f"pilot-{target} with >= 3 evaluations")
    if not form.transfer:
        return probs, fixes
    for c, src in enumerate(ds.domains):
        if c == i:
            continue
        seen_src = ds.D[pts, c] > 0
        alone = seen_src & (ds.D[pts, i] == 0)
        both = seen_src & (ds.D[pts, i] > 0)
        missing = [
            w for w, ok in (("pilot-" + src, alone.any()), (f"pair-{target}+{src}", both.any())) if not ok
        ]
        if missing and (form.interference or not alone.any() and not both.any()):
            probs.append(f"the transfer from {src} is not identifiable: no run like {' or '.join(missing)}")
            fixes.append(" and ".join(missing))
    return probs, fixes


def identifiability(ds: Dataset, ff: FormFit) -> dict:
    """{target: {"ok", "problems", "suggest", "no_transfer_from", "condition", "n_params", "n_points",
    "n_runs"}} for the chosen form's fit."""
    form = FORMS[ff.form]
    out = {}
    for i, d in enumerate(ds.domains):
        tf = ff.targets[d]
        others = [o for o in ds.domains if o != d]
        names = form.param_names(others)
        prob = _problem(ds, i)
        lo, hi = box(form, others, prob)
        probs, fixes, zero = _bound_problems(names, tf.theta, lo, hi, d)
        cond, loaded = _conditioning(form, tf.theta, prob, tf.ref, lo, hi, names)
        if not np.isfinite(cond):
            probs.append(
                f"the data do not move {', '.join(loaded)} at all (a term that is off at every point)"
            )
        elif cond > COND_MAX:
            probs.append(
                f"ill-conditioned fit (condition number {cond:.3g}): {', '.join(loaded) or 'parameters'} "
                "trade off against each other"
            )
            srcs = sorted({_split(n)[1] for n in loaded if _split(n)[1]})
            fixes += [_run_fix("kappa", d, s) for s in srcs] or [_run_fix("alpha", d, None)]
        pts = ds.target_points(i)
        dp, df = _design_problems(ds, i, form, pts)
        if len(pts) < 2 * len(tf.theta):
            dp.append(
                f"only {len(pts)} evaluation points for {len(tf.theta)} parameters (want >= 2 per parameter)"
            )
            df.append(f"more runs evaluating {d} (`lawfit plan --design pairs`) or more evaluations per run")
        probs += dp
        fixes += df
        out[d] = {
            "ok": not probs,
            "problems": probs,
            "suggest": list(dict.fromkeys(fixes)),
            "no_transfer_from": zero,
            "condition": cond if np.isfinite(cond) else None,
            "n_params": int(len(tf.theta)),
            "n_points": int(len(pts)),
            "n_runs": int(len(np.unique(ds.run[pts]))),
        }
    return out


def noise_summary(ds: Dataset, sig_e: np.ndarray, sig_u: np.ndarray, target: float = 0.01) -> dict:
    """Per target: the measured standard error of the log loss (evaluation crops; median over points),
    and the residual noise the fit leaves (per evaluation, per run). sigma_log: the measured one when the
    runs logged it, else the residual per-evaluation noise."""
    out = {}
    for i, d in enumerate(ds.domains):
        pts = ds.target_points(i)
        rel = ds.se[pts, i] / ds.y[pts, i]
        rel = rel[np.isfinite(rel)]
        measured = float(np.median(rel)) if len(rel) else None
        sigma = measured if measured is not None else float(sig_e[i])
        out[d] = {
            "sigma_log": sigma,
            "source": "evaluation standard error (median over points)" if measured is not None
            else "fit residuals (no standard error in the run logs)",
            "eval_se_log": measured,
            "residual_per_eval": float(sig_e[i]),
            "residual_per_run": float(sig_u[i]),
            "target": target,
            "met": bool(sigma <= target),
        }  # fmt: skip
    return out
