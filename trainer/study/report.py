"""demo/report.md from comparison.json's dict (trainer/study/compare.py): pure rendering, no I/O.

Every field that the lawfit side may not write (CV margin, identifiability, noise, exchange-rate
intervals, bootstrap intervals) renders as "n/a" when absent, so that the report never claims a check it
could not make.
"""

from __future__ import annotations

from collections.abc import Sequence

from .compare import FINALS

NA = "n/a"
LABEL = {"proportional": "proportional", "transfer_aware": "law-optimal"}


# ---- formatting ----------------------------------------------------------------------------------------
def num(x: float | None, fmt: str = ".4f") -> str:
    return NA if x is None else format(x, fmt)


def pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:+.2f}%"


def iv(x: Sequence[float] | None, f=num) -> str:
    return NA if x is None else f"[{f(x[0])}, {f(x[1])}]"


def yes_no(x: bool | None, yes: str = "yes", no: str = "no") -> str:
    return NA if x is None else (yes if x else no)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _mean_sd(v: Sequence[float]) -> str:
    if len(v) < 2:
        return f"{v[0]:.4f}"
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5
    return f"{m:.4f} ± {sd:.4f}"


def _level(res: dict) -> str:
    lv = res["law"].get("level")
    return NA if lv is None else f"{100 * lv:g}%"


# ---- sections ------------------------------------------------------------------------------------------
def gain_verdict(g: dict, level_pred: str) -> str:
    """One sentence on the summed gain: the seeds' interval decides, not the sign of the mean."""
    head = f"Measured gain on the summed loss: {pct(g['mean'])} (mean of {g['n']} paired seed(s))"
    if g["interval"] is None:
        s = head + ", no interval (one seed): not evidence either way."
    else:
        lo, hi = g["interval"]
        what = (
            "law-optimal better than proportional"
            if lo > 0
            else "law-optimal worse than proportional"
            if hi < 0
            else "the interval includes 0: no measured difference"
        )
        s = head + f", 95% t-interval {iv(g['interval'], pct)}: {what}."
    s += f" Predicted {pct(g['predicted'])} ({level_pred} bootstrap interval {iv(g['predicted_interval'], pct)})"
    return s + f"; intervals overlap: {yes_no(g['overlap'])}."


def budget_section(res: dict, b: dict) -> list[str]:
    doms, runs, cls = res["domains"], b["runs"], (res["transfer"].get("class") or {})
    prop, opt = (runs[n] for n in FINALS)
    lv = _level(res)
    rows = []
    for d in [*doms, "sum"]:
        g = b["gain"][d]
        if d == "sum":
            name, c, samples = "**all (sum)**", "", ""
            mp, mo = prop["measured_sum"], opt["measured_sum"]
        else:
            name, c = d, cls.get(d, NA)
            samples = f"{prop['samples_seen'][d]} / {opt['samples_seen'][d]}"
            mp, mo = prop["measured"][d], opt["measured"][d]
        rows.append([
            name, c, samples, _mean_sd(mp), _mean_sd(mo),
            f"{pct(g['mean'])} {iv(g['interval'], pct)}", f"{pct(g['predicted'])} {iv(g['predicted_interval'], pct)}",
            yes_no(g["overlap"]),
        ])  # fmt: skip
    acc = b["accuracy"]
    out = [
        f"## Unseen budget: {b['budget']} samples ({b['scale']:g}x the largest pilot)\n",
        *table(
            [
                "domain",
                "class",
                "samples prop / opt",
                "measured prop (mean ± sd)",
                "measured opt (mean ± sd)",
                "measured gain [95% CI]",
                f"predicted gain [{lv} CI]",
                "overlap",
            ],
            rows,
        ),  # fmt: skip
        "",
        gain_verdict(b["gain"]["sum"], lv),
        "",
        f"Predicted vs measured held-out loss at this budget: every final-run evaluation beyond the largest "
        f"pilot, all seeds ({acc['all_points']['n']} points): r = {num(acc['all_points']['r'], '.3f')}, "
        f"MAPE = {num(acc['all_points']['mape'], '.1f')}%; final points only ({acc['final_points']['n']}): "
        f"r = {num(acc['final_points']['r'], '.3f')}, MAPE = {num(acc['final_points']['mape'], '.1f')}%.\n",
    ]
    return out + prediction_section(res, b)


def _flag_line(d: str, name: str, c: dict, sigma: float | None) -> str:
    s = (
        f"- **{d}** ({LABEL[name]}): measured {c['measured_mean']:.4f} is {c['miss']:.4f} "
        f"({100 * c['miss'] / c['predicted']:.1f}% of the prediction {c['predicted']:.4f}; "
        f"{c['miss_log']:.3f} in log loss) {c['side']} the interval {iv(c['interval'])}."
    )
    if c["measured_interval"] is None:
        s += " One seed: the seed spread is not measured, so seed noise is not ruled out."
    else:
        s += (
            f" The {c['n_seeds']} seeds spread by sd {c['measured_sd']:.4f} (log sd {c['seed_sd_log']:.4f}); "
            f"the 95% interval of their mean is {iv(c['measured_interval'])}: "
            + (
                "it reaches the prediction interval, so seed noise can explain the miss."
                if c["seed_noise_explains"]
                else "it does not reach the prediction interval, so seed noise does not explain the miss: the "
                "law is biased at this budget."
            )
        )
    if sigma is not None:
        s += f" The fit's noise floor for {d}: sigma_log {sigma:.4f} per evaluation."
    return s


def prediction_section(res: dict, b: dict) -> list[str]:
    noise = res["law"].get("noise") or {}
    rows, flags = [], []
    for name in FINALS:
        for d, c in b["runs"][name]["check"].items():
            sd = c["measured_sd"]
            rows.append([
                LABEL[name], d, f"{c['predicted']:.4f} {iv(c['interval'])}",
                f"{c['measured_mean']:.4f} ± {num(sd)}", yes_no(c["outside"], "**outside**", "inside"),
                NA if c["miss"] is None else f"{c['miss']:.4f}",
            ])  # fmt: skip
            if c["outside"]:
                flags.append(_flag_line(d, name, c, (noise.get(d) or {}).get("sigma_log")))
    return [
        "### Prediction vs measurement per domain\n",
        f"Measured: mean ± sd over seeds of the last evaluation. Interval: the laws' {_level(res)} bootstrap "
        "interval of the predicted loss (parameter uncertainty only; it does not include evaluation noise).\n",
        *table(
            ["allocation", "domain", "predicted [interval]", "measured", "mean vs interval", "miss"], rows
        ),
        "",
        *(
            flags
            or ["No domain's measured mean lies outside its prediction interval (or no intervals: n/a)."]
        ),
        "",
    ]


def transfer_section(res: dict) -> list[str]:
    t = res["transfer"]
    rate, ivs, doms = t.get("exchange_rate"), t.get("exchange_rate_interval") or {}, res["domains"]
    out = [f"## Transfer matrix (at the proportional allocation of {t.get('at_budget')} samples)\n"]
    if not rate:
        return out + [f"{NA}: the allocation has no exchange rates.\n"]
    out.append(
        "T[i][j]: how many of its own samples one sample of j is worth to target i at the margin (rows: "
        "targets i, columns: sources j), with its interval where the laws carry bootstrap draws.\n"
    )
    rows = [
        [i]
        + [
            "1"
            if i == j
            else f"{num(rate[i].get(j), '.3f')} {iv((ivs.get(i) or {}).get(j), lambda x: f'{x:.3f}')}"
            for j in doms
        ]
        for i in doms
    ]
    out += table(["target \\ source", *doms], rows) + [""]
    cls, o_s, i_s = t.get("class") or {}, t.get("out_strength") or {}, t.get("in_strength") or {}
    out += table(
        ["domain", "out-strength", "in-strength", "class"],
        [[d, num(o_s.get(d), ".3f"), num(i_s.get(d), ".3f"), cls.get(d, NA)] for d in doms],
    )
    return out + ["", f"Rule: {t.get('rule') or NA}\n"]


def controls_section(res: dict) -> list[str]:
    c = res["transfer"]["controls"]
    rows = []
    for kind in ("positive", "negative"):
        ctl = c[kind]
        if not ctl["directions"]:
            rows.append([kind, " / ".join(ctl["pair"]), NA, NA, ctl.get("note", NA), NA])
        for dname, e in ctl["directions"].items():
            checks = (
                f"excludes 0: {yes_no(e['excludes_0'])}; covers >= 0.5: {yes_no(e['covers_min'])}"
                if kind == "positive"
                else f"near 0: {yes_no(e['near_0'])}"
            )
            rows.append([kind, dname, num(e["estimate"], ".3f"), iv(e["interval"], lambda x: f"{x:.3f}"), checks,
                         yes_no(e["passed"], "pass", "FAIL")])  # fmt: skip
    verdict = ", ".join(
        f"{k} control: {yes_no(c[k]['passed'], 'pass', 'FAIL')}" for k in ("positive", "negative")
    )
    return [
        "## Controls\n",
        f"Rules (fixed in trainer/study/compare.py before the run): {c['rules']}\n",
        *table(
            ["control", "direction (target <- source)", "estimate", "interval", "checks", "verdict"], rows
        ),
        "",
        verdict + ".\n",
    ]


def law_section(res: dict) -> list[str]:
    law = res["law"]
    cv = law.get("cv_rmse_log") or {}
    out = [
        "## Law form\n",
        f"Chosen: **{law['form']}** ({law.get('method') or NA}). Held-out RMSE of log loss per form: "
        + (", ".join(f"{f} {num(v)}" for f, v in cv.items()) or NA)
        + ".",
    ]
    m = law.get("margin")
    if m:
        out.append(
            f"CV margin over the runner-up {m.get('runner_up', NA)}: {num(m.get('value'))} "
            f"(interval {iv(m.get('interval'))}; {m.get('definition', NA)})."
        )
    else:
        out.append(f"CV margin over the runner-up: {NA}.")
    out += ["", "## Identifiability\n"]
    ident = law.get("identifiability")
    if ident is None:
        out.append(f"{NA}: the fit wrote no identifiability check.")
    else:
        bad = {d: e for d, e in ident.items() if not e.get("ok", True)}
        out += [
            f"- **{d}**: {'; '.join(e.get('problems') or [NA])}"
            + (f" (suggested: {'; '.join(e['suggest'])})" if e.get("suggest") else "")
            for d, e in bad.items()
        ] or ["Every domain's law is identifiable from the pilots."]
    return out + [""]


def noise_section(res: dict, b: dict) -> list[str]:
    noise = res["law"].get("noise") or {}
    rows = []
    for d in res["domains"]:
        n = noise.get(d) or {}
        sds = [b["runs"][name]["check"][d]["seed_sd_log"] for name in FINALS]
        rows.append(
            [d, num(n.get("eval_se_log")), num(n.get("residual_per_eval")), num(n.get("residual_per_run")),
             *(num(x) for x in sds)]
        )  # fmt: skip
    return [
        "## Noise floor\n",
        "All in log loss. eval se: the measured standard error of one evaluation over its held-out crops "
        "(median over the pilots' points; the target was about 1%); residual per evaluation / per run: the "
        "noise the fitted law leaves, within a run's curve and as one offset per run (the bootstrap's noise "
        "model), which includes training noise between evaluations and any misfit of the law; seed sd: "
        f"the final runs' spread over seeds at {b['budget']} samples. When the residuals are far above the "
        "eval se, more crops no longer lower the noise the fit sees.\n",
        *table(
            [
                "domain",
                "eval se",
                "residual per evaluation",
                "residual per run",
                "seed sd prop",
                "seed sd opt",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def time_section(res: dict) -> list[str]:
    t = res.get("timing") or {}
    st = t.get("stages") or {}
    known = [v for v in st.values() if v is not None]
    total = sum(known)
    rows = [[k, num(v, ".1f")] for k, v in st.items()]
    return [
        "## Time\n",
        *table(["stage", "seconds"], rows + [["**total**", f"{total:.1f}"]]),
        "",
        f"Total demo time: {total:.0f} s ({total / 60:.1f} min), the sum of the stages' own times (across "
        "reruns, if the demo was resumed); 2 runs at a time, one CPU thread each.\n",
    ]


def render(res: dict) -> str:
    pil = res.get("pilots") or {}
    seeds = res["seeds"]
    budgets = ", ".join(f"{b['budget']} ({b['scale']:g}x)" for b in res["budgets"])
    md = [
        "# voxmix demo: law-optimal vs proportional allocation (phantoms, tiny model, CPU)\n",
        f"Domains: {', '.join(res['domains'])}. Pilots: {pil.get('runs', NA)} runs of "
        f"{'/'.join(map(str, pil.get('samples', []))) or NA} samples (design {pil.get('design') or NA}; "
        f"{pil.get('fit', NA)} fitted, the rest held out). Final runs at the unseen budget(s) {budgets} "
        f"samples: proportional and the law-optimal allocation, seeds {seeds} each; a seed pair shares "
        "the budget, the seed and the evaluation points. Loss: mean normalized-pixel MAE loss on each "
        "domain's fixed held-out crops. Gain = (proportional - law-optimal) / proportional, per seed pair; "
        f"its 95% interval is Student's t over the {len(seeds)} pairs; the predicted gain's interval is "
        f"the laws' {_level(res)} bootstrap interval ({res['law'].get('bootstrap') or NA} resamples).\n",
    ]
    for b in res["budgets"]:
        md += budget_section(res, b)
    md += transfer_section(res) + controls_section(res) + law_section(res)
    md += noise_section(res, res["budgets"][-1]) + time_section(res)
    md.append(
        "Figures and the laws' own report: [report/report.md](report/report.md). Data: `comparison.json`, "
        "`laws.json`, `allocation*.json`, run logs in `runs/` and `final/`.\n"
    )
    return "\n".join(md)


def summary(res: dict) -> str:
    """The few lines printed at the end of the demo."""
    lines = []
    for b in res["budgets"]:
        g, acc = b["gain"]["sum"], b["accuracy"]["all_points"]
        lines.append(f"{b['budget']} samples ({b['scale']:g}x): " + gain_verdict(g, _level(res)))
        lines.append(
            f"  r = {num(acc['r'], '.3f')}, MAPE = {num(acc['mape'], '.1f')}% over {acc['n']} points"
        )
    c = res["transfer"]["controls"]
    lines.append(
        "controls: "
        + ", ".join(f"{k} {yes_no(c[k]['passed'], 'pass', 'FAIL')}" for k in ("positive", "negative"))
    )
    lines.append(f"law form: {res['law']['form']}")
    return "\n".join(lines)
