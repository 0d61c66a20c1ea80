"""The demo's result in numbers: measured against predicted held-out loss of the final runs, over seeds.

`compare(out, budgets, seeds, pilot_max)` reads <out>/laws.json, the allocation files and every final
run's log (each through its owner: `Laws.load`, `read_allocation`, `read_runlog`) and returns the dict
written to comparison.json; trainer/study/report.py renders it. The statistics are pure functions of
arrays (`t_interval`, `paired_gains`, `accuracy`, `control_checks`, `prediction_check`), tested against
SciPy / NumPy. Fields the lawfit side adds later (margin, identifiability, noise, exchange-rate intervals)
are read with `.get` and come out as None when absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from voxmix.formats.allocation import read_allocation
from voxmix.formats.runlog import RunLog, read_runlog
from voxmix.lawfit.lawsfile import Laws

from .options import StudyError

FINALS = ("proportional", "transfer_aware")
LEVEL = 0.95
"""Level of the measured gain's t-interval over seeds."""

# The controls and their pass rules, fixed before any run (the report prints CONTROL_RULES verbatim).
POSITIVE = ("ct_abdomen", "ct_abdomen_twin")
"""Two domains drawn from one generator: each one's data should be worth about as much as the other's."""
NEGATIVE = ("mri_brain", "ct_abdomen")
"""No shared anatomy by design: neither should help the other."""
POSITIVE_MIN = 0.5
NEAR_ZERO = 0.1
CONTROL_RULES = (
    f"Positive control {POSITIVE[0]} / {POSITIVE[1]}, each direction: the exchange rate's interval "
    f"excludes 0 (lo > 0 or hi < 0) and covers >= {POSITIVE_MIN} (hi >= {POSITIVE_MIN}). "
    f"Negative control {NEGATIVE[0]} / {NEGATIVE[1]}, each direction: 'near 0', the interval intersects "
    f"[-{NEAR_ZERO}, {NEAR_ZERO}]. Without an interval a check is n/a, never a pass. A control passes when "
    "every check of both directions passes."
)


@dataclass(frozen=True)
class FinalBudget:
    """One unseen budget of the final runs and the names of its files and runs."""

    scale: float
    """Budget = scale x the largest pilot."""
    samples: int
    tag: str = ""
    """"" when the demo has one final budget, else "_x<scale>" (file names) / "-x<scale>" (run ids)."""

    @property
    def allocation(self) -> str:
        return f"allocation{self.tag}.json"

    @property
    def allocation_proportional(self) -> str:
        return f"allocation_proportional{self.tag}.json"

    def run_id(self, name: str, seed: int) -> str:
        return f"final-{name}{self.tag.replace('_', '-')}-s{seed}"


def final_budgets(scales: Sequence[float], pilot_max: int, batch: int) -> list[FinalBudget]:
    """Each scale's budget in whole global batches; tags only when there are several (pure)."""
    many = len(scales) > 1
    return [
        FinalBudget(s, max(1, int(round(s * pilot_max / batch))) * batch, f"_x{s:g}" if many else "")
        for s in scales
    ]


# ---- statistics (pure) -----------------------------------------------------------------------------
def t_interval(x: Sequence[float], level: float = LEVEL) -> dict:
    """Mean, sample sd and the t-interval of the mean over n values (interval None when n < 2)."""
    v = np.asarray(x, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "interval": None, "level": level}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "interval": [mean - half, mean + half], "level": level}


def paired_gains(prop: Sequence[float], opt: Sequence[float]) -> np.ndarray:
    """(proportional - optimal) / proportional per seed: > 0 where the law-optimal mix won."""
    p, o = np.asarray(prop, dtype=np.float64), np.asarray(opt, dtype=np.float64)
    return (p - o) / p


def accuracy(pred: Sequence[float], meas: Sequence[float]) -> dict:
    """Pearson r and MAPE (% of the measured loss) of predictions; r None below 3 points or no spread."""
    p, m = np.asarray(pred, dtype=np.float64), np.asarray(meas, dtype=np.float64)
    r = None
    if len(p) >= 3 and np.std(p) > 0 and np.std(m) > 0:
        r = float(np.corrcoef(p, m)[0, 1])
    mape = float(100 * np.mean(np.abs(p - m) / m)) if len(p) else None
    return {"n": int(len(p)), "r": r, "mape": mape}


def overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    if a is None or b is None:
        return None
    return bool(a[0] <= b[1] and b[0] <= a[1])


def _check_direction(kind: str, est: float | None, iv: Sequence[float] | None) -> dict:
    out: dict = {"estimate": est, "interval": None if iv is None else [float(iv[0]), float(iv[1])]}
    lo, hi = (None, None) if iv is None else (float(iv[0]), float(iv[1]))
    if kind == "positive":
        out["excludes_0"] = None if lo is None else bool(lo > 0 or hi < 0)
        out["covers_min"] = None if hi is None else bool(hi >= POSITIVE_MIN)
        checks = (out["excludes_0"], out["covers_min"])
    else:
        out["near_0"] = None if lo is None else bool(lo <= NEAR_ZERO and hi >= -NEAR_ZERO)
        checks = (out["near_0"],)
    out["passed"] = None if any(c is None for c in checks) else all(checks)
    return out


def control_checks(kind: str, pair: tuple[str, str], rate: dict | None, rate_interval: dict | None) -> dict:
    """A control's rules (CONTROL_RULES) in both directions i <- j: rate[i][j] is what one sample of j
    is worth to i in samples of i. Domains or rates that are absent give n/a (None), not a failure."""
    a, b = pair
    out: dict = {"kind": kind, "pair": list(pair), "directions": {}}
    if rate is None or a not in rate or b not in rate:
        out["passed"] = None
        out["note"] = f"n/a: {a} and {b} are not both in this demo's transfer matrix"
        return out
    for i, j in ((a, b), (b, a)):
        iv = (rate_interval or {}).get(i, {}).get(j)
        out["directions"][f"{i} <- {j}"] = _check_direction(kind, rate[i].get(j), iv)
    verdicts = [d["passed"] for d in out["directions"].values()]
    out["passed"] = None if any(v is None for v in verdicts) else all(verdicts)
    return out


def prediction_check(measured: Sequence[float], predicted: float, interval: Sequence[float] | None) -> dict:
    """Is the seeds' mean measured loss inside the prediction interval, and if not, by how much?

    `miss` is the distance to the nearer end (0 inside); `miss_log` the same in log loss (the fit's
    scale); `seed_sd_log` the seeds' sd of log loss. `measured_interval` is the 95% t-interval of the mean
    over seeds: where it does not reach the prediction interval either (`seed_noise_explains` False), seed
    noise cannot explain the miss and it is a bias of the law at this budget."""
    m = np.asarray(measured, dtype=np.float64)
    mi = t_interval(m)
    out: dict = {
        "n_seeds": int(len(m)),
        "measured_mean": mi["mean"],
        "measured_sd": mi["sd"],
        "measured_interval": mi["interval"],
        "seed_sd_log": float(np.log(m).std(ddof=1)) if len(m) > 1 else None,
        "predicted": float(predicted),
        "interval": None if interval is None else [float(interval[0]), float(interval[1])],
    }
    if interval is None:
        out.update(outside=None, side=None, miss=None, miss_log=None, seed_noise_explains=None)
        return out
    lo, hi = float(interval[0]), float(interval[1])
    mean = mi["mean"]
    side = "below" if mean < lo else "above" if mean > hi else None
    edge = lo if side == "below" else hi
    out.update(
        outside=side is not None,
        side=side,
        miss=0.0 if side is None else abs(mean - edge),
        miss_log=0.0 if side is None else abs(math.log(mean / edge)),
        seed_noise_explains=None if side is None else overlap(mi["interval"], out["interval"]),
    )
    return out


# ---- reading the runs --------------------------------------------------------------------------------
def _read_final(out: Path, run_id: str) -> RunLog:
    log = read_runlog(out / "final" / run_id)
    if log.status != "completed" or not log.evals:
        raise StudyError(f"{log.path}: the final run {run_id} did not complete")
    return log


def _D(laws: Laws, samples_seen: dict[str, int]) -> np.ndarray:
    return np.array([[samples_seen.get(d, 0) for d in laws.domains]], dtype=np.float64)


def _points(laws: Laws, log: RunLog, pilot_max: int) -> list[list]:
    """Every evaluation beyond the largest pilot as [run_id, domain, samples, predicted, measured]."""
    pts = []
    for ev in log.evals:
        D = _D(laws, ev.samples_seen)
        if D.sum() <= pilot_max:
            continue
        pred = laws.predict(D)[0]
        pts += [
            [log.run_id, d, int(D.sum()), float(pred[j]), float(ev.loss[d])]
            for j, d in enumerate(laws.domains)
        ]
    return pts


def _predicted(laws: Laws, D: np.ndarray, boots: list) -> tuple[np.ndarray, list | None]:
    """Point prediction (m,) and per-domain bootstrap interval [[lo, hi]] (None without draws)."""
    pred = laws.predict(D)[0]
    iv = laws.predict_interval(D, boots=boots) if boots else None
    return pred, None if iv is None else [[float(iv[0][0, j]), float(iv[1][0, j])] for j in range(len(pred))]


def _predicted_gains(laws: Laws, Dp: np.ndarray, Do: np.ndarray, boots: list) -> dict:
    """Predicted gain per domain and summed at the samples the final runs saw, with bootstrap intervals."""

    def gains(t):
        lp, lo = laws.predict(Dp, t)[0], laws.predict(Do, t)[0]
        return np.append((lp - lo) / lp, (lp.sum() - lo.sum()) / lp.sum())

    est = gains(None)
    ivs = None
    if boots:
        lo, hi = laws.interval_of(np.stack([gains(t) for t in boots]), estimate=est, axis=0)
        ivs = [[float(a), float(b)] for a, b in zip(lo, hi)]
    keys = [*laws.domains, "sum"]
    return {
        k: {"value": float(est[i]), "interval": None if ivs is None else ivs[i]} for i, k in enumerate(keys)
    }


def _gain_entry(per_seed: np.ndarray, predicted: dict) -> dict:
    e = t_interval(per_seed)
    e["per_seed"] = per_seed.tolist()
    e["predicted"], e["predicted_interval"] = predicted["value"], predicted["interval"]
    e["overlap"] = overlap(e["interval"], predicted["interval"])
    return e


def compare_budget(
    out: Path, laws: Laws, boots: list, fb: FinalBudget, seeds: Sequence[int], pilot_max: int
) -> dict:
    """One final budget: measured and predicted losses, paired gains, r and MAPE, prediction checks."""
    doms = laws.domains
    logs = {n: [_read_final(out, fb.run_id(n, s)) for s in seeds] for n in FINALS}
    res: dict = {"scale": fb.scale, "budget": fb.samples, "runs": {}, "points": []}
    D, finals = {}, []
    for n in FINALS:
        last = [lg.evals[-1] for lg in logs[n]]
        D[n] = _D(laws, last[0].samples_seen)
        pred, iv = _predicted(laws, D[n], boots)
        meas = np.array([[ev.loss[d] for d in doms] for ev in last])  # (seeds, domains)
        res["runs"][n] = {
            "run_ids": [lg.run_id for lg in logs[n]],
            "samples_seen": {d: int(last[0].samples_seen.get(d, 0)) for d in doms},
            "measured": {d: meas[:, j].tolist() for j, d in enumerate(doms)},
            "measured_sum": meas.sum(axis=1).tolist(),
            "predicted": dict(zip(doms, map(float, pred))),
            "predicted_interval": None if iv is None else dict(zip(doms, iv)),
            "check": {
                d: prediction_check(meas[:, j], pred[j], None if iv is None else iv[j])
                for j, d in enumerate(doms)
            },
        }
        for lg in logs[n]:
            pts = _points(laws, lg, pilot_max)
            res["points"] += pts
            finals += pts[-len(doms) :]  # the run's last evaluation: its budget
    prop, opt = (res["runs"][n] for n in FINALS)
    pg = _predicted_gains(laws, D[FINALS[0]], D[FINALS[1]], boots)
    res["gain"] = {d: _gain_entry(paired_gains(prop["measured"][d], opt["measured"][d]), pg[d]) for d in doms}
    res["gain"]["sum"] = _gain_entry(paired_gains(prop["measured_sum"], opt["measured_sum"]), pg["sum"])
    res["accuracy"] = {
        "all_points": accuracy([p[3] for p in res["points"]], [p[4] for p in res["points"]]),
        "final_points": accuracy([p[3] for p in finals], [p[4] for p in finals]),
    }
    alloc = read_allocation(out / fb.allocation).extra
    res["allocation_improvement"] = alloc.get("baselines", {}).get("proportional", {}).get("improvement")
    return res


def law_summary(laws: Laws) -> dict:
    sel = laws.fit.get("selection", {})
    return {
        "form": laws.form,
        "method": sel.get("method"),
        "cv_rmse_log": sel.get("cv_rmse_log"),
        "margin": sel.get("margin"),
        "identifiability": laws.fit.get("identifiability"),
        "noise": laws.fit.get("noise"),
        "bootstrap": laws.uncertainty.get("n") if laws.uncertainty else None,
        "level": laws.uncertainty.get("level") if laws.uncertainty else None,
    }


def transfer_summary(alloc_extra: dict) -> dict:
    hubs = alloc_extra.get("hubs") or {}
    rate, iv = hubs.get("exchange_rate"), hubs.get("exchange_rate_interval")
    return {
        "exchange_rate": rate,
        "exchange_rate_interval": iv,
        "class": hubs.get("class"),
        "out_strength": hubs.get("out_strength"),
        "in_strength": hubs.get("in_strength"),
        "rule": hubs.get("rule"),
        "controls": {
            "rules": CONTROL_RULES,
            "positive": control_checks("positive", POSITIVE, rate, iv),
            "negative": control_checks("negative", NEGATIVE, rate, iv),
        },
    }


def compare(out: Path, budgets: Sequence[FinalBudget], seeds: Sequence[int], pilot_max: int) -> dict:
    """Everything comparison.json holds (without the timings, which the demo adds)."""
    laws = Laws.load(out / "laws.json")
    boots = laws.bootstrap_targets()
    res: dict = {
        "domains": laws.domains,
        "seeds": list(seeds),
        "pilot_max": pilot_max,
        "level_measured": LEVEL,
        "law": law_summary(laws),
        "budgets": [compare_budget(out, laws, boots, fb, seeds, pilot_max) for fb in budgets],
    }
    # The transfer matrix and the controls at the largest budget's proportional allocation.
    top = max(budgets, key=lambda b: b.samples)
    res["transfer"] = transfer_summary(read_allocation(out / top.allocation).extra)
    res["transfer"]["at_budget"] = top.samples
    return res
