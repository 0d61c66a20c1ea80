"""The evaluation protocol that can tell encoders apart (docs/downstream.md, "The evaluation protocol").

    python -m trainer.evaluate_encoders --control runs/control --phantoms WORK \
        [--arm proportional=runs/p-s0,runs/p-s1,runs/p-s2 --arm transfer_aware=runs/t-s0,...] \
        [--allocation proportional=allocation_proportional.json --allocation transfer_aware=allocation.json] \
        [--seeds 5] [--efficiency 4,8,16] [--finetune-steps 100] [--out evaluation.json] [--report evaluation.md]

`--control` is the positive control: an encoder better by construction (e.g. trained with the probe's
labels on other volumes, as `make demo-full` does (trainer/downstream/supervised.py), pretrained several
times longer, or on the target domain itself: `--control ct_abdomen=runs/c-ct,pet_wholebody=runs/c-pet,...`,
one encoder per probed domain) that the protocol must separate from a random encoder of its architecture
before any mixture comparison counts. `--encoder NAME=ENC` adds an encoder that is only reported. Each `--arm` is one mixture with one encoder per pretraining seed (arms pair by
position); with two arms and their `--allocation` files the report ends with the per-domain table.
Encoders are run folders or encoder files. Exit 0 done, 2 bad input or usage (named), 1 failed while running.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from voxmix.trainer.cli import HelpFormatter, prog
from voxmix.trainer.downstream.cli import FAILED, ArgumentParser, check_comparison, check_out, fail

# The demo's five phantom domains (trainer/study/options.py DEMO_DOMAINS), all labelled.
PHANTOM_DOMAINS = ("ct_abdomen", "ct_abdomen_twin", "ct_chest", "mri_brain", "pet_wholebody")


def _pairs(flag: str, items: list[str]) -> dict[str, list[str]]:
    out = {}
    for it in items:
        name, sep, rest = it.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ValueError(f"{flag} {it!r}: expected NAME=PATH[,PATH...]")
        if name in out or name in ("control", "random", "intensity"):
            raise ValueError(f"{flag} {it!r}: the name {name!r} is taken (repeated, or a reserved name)")
        out[name] = [p for p in rest.split(",") if p]
    return out


def _per_domain(control: str) -> dict[str, str]:
    """`--control DOMAIN=ENC[,...]` -> {domain: path}; a plain path -> {} (one control for every domain)."""
    items = [it for it in control.split(",") if it]
    if not any("=" in it for it in items):
        return {}
    out = {}
    for it in items:
        d, sep, path = it.partition("=")
        if not sep or not d.strip() or not path.strip() or d in out:
            raise ValueError(f"--control {it!r}: expected DOMAIN=ENC, each domain once (or one plain ENC)")
        out[d] = path
    return out


def _shares(path: str) -> dict[str, float]:
    from voxmix.formats.allocation import read_allocation

    alloc = read_allocation(path)
    return dict(alloc.weights)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=prog("python -m trainer.evaluate_encoders"), description=__doc__,
                       formatter_class=HelpFormatter)  # fmt: skip
    p.add_argument(
        "--control",
        required=True,
        help="the positive control's run folder or encoder file, or DOMAIN=ENC[,DOMAIN=ENC...]: one per domain",
    )
    p.add_argument("--encoder", action="append", default=[], help="NAME=ENC: one more encoder, reported only")
    p.add_argument(
        "--arm", action="append", default=[], help="NAME=ENC[,ENC...]: one mixture, one encoder per seed"
    )
    p.add_argument("--allocation", action="append", default=[], help="NAME=allocation.json of an arm")
    p.add_argument("--data", help="ingested folder with labels.jsonl")
    p.add_argument(
        "--phantoms", help="work folder: make (or reuse) a labelled phantom set of --domains there"
    )
    p.add_argument(
        "--domains",
        help=f"comma-separated domains to probe (with --phantoms, to generate; default "
        f"{','.join(PHANTOM_DOMAINS)}; with --data: every labelled domain)",
    )
    p.add_argument("--per-domain", type=int, default=48, help="phantoms per domain (with --phantoms)")
    p.add_argument("--size", type=int, default=48, help="phantom edge in voxels (with --phantoms)")
    p.add_argument(
        "--seeds", type=int, default=5, help="evaluation seeds (splits, crops, folds, random encoder)"
    )
    p.add_argument("--efficiency", default="4,8,16", help="labelled volumes of the label-efficiency curves")
    p.add_argument(
        "--finetune-steps", type=int, default=100, help="steps per fine-tuning of the curves (0: none)"
    )
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (Holm)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 on a shared machine)")
    p.add_argument("--out", help="write the evaluation (voxmix.evaluation/1 JSON) here")
    p.add_argument("--report", help="write the markdown report here (it is also printed)")
    a = p.parse_args(argv)
    try:
        check_comparison(a, a.seeds)
        check_out("--report", a.report)
        try:
            sizes = [int(s) for s in a.efficiency.split(",") if s]
        except ValueError:
            raise ValueError(f"--efficiency {a.efficiency!r}: comma-separated integers") from None
        arms = _pairs("--arm", a.arm)
        alloc_paths = _pairs("--allocation", a.allocation)
        if set(alloc_paths) - set(arms):
            raise ValueError(
                f"--allocation names {sorted(set(alloc_paths) - set(arms))} are not arms ({sorted(arms)})"
            )
        allocs = {n: _shares(path[0]) for n, path in alloc_paths.items()}
        from voxmix.trainer.downstream.evaluate import EvalConfig

        domains = [d for d in a.domains.split(",") if d] if a.domains else []
        if a.phantoms and not domains:
            domains = list(PHANTOM_DOMAINS)
        cfg = EvalConfig(domains=domains,
                         efficiency=sizes, finetune_steps=a.finetune_steps, threads=a.threads)  # fmt: skip
        from voxmix.formats.encoder import read_encoder

        per_domain = _per_domain(a.control)
        extra = _pairs("--encoder", a.encoder)
        if taken := set(extra) & {f"{n}-s{i}" for n, es in arms.items() for i in range(len(es))}:
            raise ValueError(f"--encoder names {sorted(taken)} are taken by arm encoders")
        paths = {**({f"control@{d}": e for d, e in per_domain.items()} if per_domain else {"control": a.control}),
                 **{n: e[0] for n, e in extra.items()},
                 **{f"{n}-s{i}": e for n, es in arms.items() for i, e in enumerate(es)}}  # fmt: skip
        if per_domain and domains and (lack := [d for d in domains if d not in per_domain]):
            raise ValueError(
                f"--control: no control for the probed domains {lack} (give DOMAIN=ENC for each)"
            )
        blobs, bad = {}, []
        for n, e in paths.items():
            try:
                blobs[n] = read_encoder(e)
            except ValueError as exc:
                bad.append(str(exc))
        if bad:
            raise ValueError(
                f"{len(bad)} of the {len(paths)} encoders cannot be used:\n  " + "\n  ".join(bad)
            )
        data = a.data
        if a.phantoms:
            from voxmix.trainer.downstream.compare import make_phantom_set

            data = make_phantom_set(Path(a.phantoms), a.per_domain, a.size, domains)
    except (ValueError, OSError) as exc:
        return fail(exc)
    from voxmix.trainer.downstream import report
    from voxmix.trainer.downstream.evaluate import config_json, evaluate

    control = {d: blobs[f"control@{d}"] for d in per_domain} if per_domain else blobs["control"]
    encoders = {"control": control, "random": None,
                **{n: b for n, b in blobs.items() if n != "control" and not n.startswith("control@")}}  # fmt: skip
    groups = {n: [f"{n}-s{i}" for i in range(len(es))] for n, es in arms.items()}
    t0 = time.perf_counter()
    try:
        values = evaluate(encoders, data, cfg, a.seeds, control="control")
        rep = report.build(values, groups, allocs if len(allocs) >= 2 else None, a.level, a.alpha)
    except (ValueError, OSError) as exc:
        return fail(exc, FAILED)
    seconds = round(time.perf_counter() - t0, 1)
    text = report.markdown(rep, ["control", "random", *extra]) + f"\n({a.seeds} seeds, {seconds} s)\n"
    print(text)
    rep.update(encoders=paths, groups=groups, seeds=a.seeds, config=config_json(cfg), seconds=seconds,
               values=values, data=str(data))  # fmt: skip
    from voxmix.formats.io import atomic_write_json, atomic_write_text

    try:
        if a.out:
            atomic_write_json(a.out, rep)
        if a.report:
            atomic_write_text(a.report, text)
    except OSError as exc:  # the report is on stdout above: the evaluation is not lost
        return fail(f"cannot write the results: {exc.strerror or exc}", FAILED)
    return 0  # a control that is not separated is a finding (said first in the report), not a failure


if __name__ == "__main__":
    sys.exit(main())
