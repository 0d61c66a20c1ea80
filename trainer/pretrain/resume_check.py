"""`--resume` continues the same run: what the run would use now is compared with what it started with.

The reference is the first `start` event of `<out>/runlog.jsonl`, written once when the run first started
(config.json is rewritten by every attempt, so it is not the reference). Compared:

- every config field `section.field` except `ALLOWED_CHANGES` (train.run_id, train.budget_samples and
  train.precision through the value they resolve to, below);
- the run's identity computed from the inputs (`identity`): run_id, domains, mixture, budget_samples,
  unique_samples, seed, eval_at, precision, total_steps, world_size and data_digest (sha256 of the
  manifest records of the run's domains and the allocation's samples per domain). A field that an older
  `start` event lacks is not compared; a config field it lacks is compared with the field's default.

Any difference raises `ResumeMismatch` listing every field as `old -> new`; the trainer checks this before
it writes anything or starts the process group, so a refused resume leaves the run folder as it was.

`ALLOWED_CHANGES` holds the settings that cannot change what the run computes (each with the reason).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from voxmix.formats.runlog import FILENAME as RUNLOG
from voxmix.formats.runlog import read_state

ALLOWED_CHANGES: dict[str, str] = {
    "train.log_every": "how often a throughput event is logged; the training math never reads it",
    "train.tensorboard": "an extra copy of the logged scalars under <out>/tb",
    "train.wandb": "an extra copy of the logged events in a W&B run; the training math never reads it",
    "train.wandb_project": "where the W&B copy goes (a resumed run in another project starts a new W&B run)",
    "train.wandb_entity": "where the W&B copy goes",
    "train.wandb_group": "a label of the W&B copy",
    "train.wandb_tags": "labels of the W&B copy",
    "train.wandb_mode": "whether the W&B copy is uploaded now (online) or later (offline, `wandb sync`)",
    "train.peak_tflops": "the denominator of the logged MFU, nothing else",
    "checkpoint.every_steps": "when saves happen; a save reads the state and changes none of it (a resume "
    "from any checkpoint reproduces the uninterrupted run, tested)",
    "checkpoint.keep": "how many older checkpoints stay on disk",
    "data.num_threads": "loader threads; every crop is a pure function of (seed, sample position)",
    "train.out": "the folder being resumed: a run folder that was moved or copied continues",
    "data.manifest": "the path only; the records it holds are compared (data_digest)",
    "data.allocation": "the path only; its content is compared (mixture, budget_samples, data_digest)",
}
"""Config fields that may differ on --resume, each with why it cannot change the run."""

_EFFECTIVE = {
    "train.run_id": "run_id",
    "train.budget_samples": "budget_samples",
    "train.precision": "precision",
}
"""Config fields compared through the value they resolve to ('' -> the folder's name, None -> the
allocation's total, auto -> bf16/fp32), when the recorded start event has it: spelling it out is no change."""

_PATHS = ("data.manifest", "data.allocation")
"""Allowed only when the recorded start event has `data_digest` (compared instead of the paths)."""

IDENTITY = (
    "run_id",
    "domains",
    "mixture",
    "budget_samples",
    "unique_samples",
    "seed",
    "eval_at",
    "precision",
    "total_steps",
    "world_size",
    "data_digest",
)

_MISSING = object()


class ResumeMismatch(ValueError):
    """--resume with settings or data that would change the run; the message lists every field."""


def data_digest(manifest: Any, alloc: Any) -> str:
    """sha256 of what the sample sequence and the evaluation crops are drawn from: the manifest records
    of the allocation's domains (every split, in the sampler's order) and the samples per domain."""
    obj = {
        "records": {d: [r.to_json() for r in manifest.select(domain=d)] for d in alloc.domains},
        "samples": {d: int(n) for d, n in alloc.samples.items()},
    }
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def recorded_start(out: Path) -> dict[str, Any]:
    """The first `start` event of `<out>/runlog.jsonl` as written (`read_state`: a torn line is skipped,
    one merged by an older writer recovered); ResumeMismatch when there is none with a config."""
    path = Path(out) / RUNLOG
    start = read_state(path).start
    if start is None or not isinstance(start.get("config"), dict):
        raise ResumeMismatch(
            f"--resume: {path} has no 'start' event with the run's config, so there is no record of how the "
            "run started to check the settings against; start a new run in another --out"
        )
    return start


def _plain(value: Any) -> Any:
    """The value as JSON reads it back (tuples become lists), so that old and new compare alike."""
    return json.loads(json.dumps(value, default=str))


def changes(
    recorded: dict[str, Any], config: dict[str, Any], identity: dict[str, Any], *, defaults: dict[str, Any]
) -> list[str]:
    """`field: old -> new` for every difference between the recorded start event and the run now."""
    allowed = set(ALLOWED_CHANGES)
    if "data_digest" not in recorded:
        allowed -= set(_PATHS)
    old_cfg = recorded.get("config", {})
    out = []
    for sec, fields in config.items():
        old_sec = old_cfg.get(sec) if isinstance(old_cfg.get(sec), dict) else {}
        for name, new in fields.items():
            key = f"{sec}.{name}"
            old = old_sec.get(name, _MISSING)
            if old is _MISSING:
                old = defaults.get(sec, {}).get(name)
            if key in _EFFECTIVE and _EFFECTIVE[key] in recorded:
                continue
            if key not in allowed and _plain(old) != _plain(new):
                out.append(f"{key}: {_plain(old)!r} -> {_plain(new)!r}")
    for key in IDENTITY:
        if key in recorded and _plain(recorded[key]) != _plain(identity[key]):
            out.append(f"{key}: {_plain(recorded[key])!r} -> {_plain(identity[key])!r}")
    return out


def check_resume(
    out: Path, config: dict[str, Any], identity: dict[str, Any], *, defaults: dict[str, Any]
) -> None:
    """ResumeMismatch listing every change unless the run would continue exactly as it started."""
    recorded = recorded_start(out)
    diff = changes(recorded, config, identity, defaults=defaults)
    if diff:
        raise ResumeMismatch(
            f"--resume would change the run in {out}: these differ from what it started with "
            f"({Path(out) / RUNLOG}, first 'start' event):\n  "
            + "\n  ".join(diff)
            + "\nResume with the settings it started with, or start a new run in another --out. "
            f"Only these may change on resume: {', '.join(sorted(ALLOWED_CHANGES))}"
        )
