"""Experiment tracking without a trainer launch: the metrics sink with a real offline W&B run, read back with
W&B's own reader (`wandb leet inspect`, the wandb-core binary), against the run log; the tracker checks;
the W&B config fields."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from voxmix.trainer.pretrain.config import Config, ConfigError, config_from_dict
from voxmix.trainer.pretrain.resume_check import changes
from voxmix.trainer.pretrain.sink import MetricsSink
from voxmix.trainer.pretrain.tracking import WANDB_ID_FILE, WandbOptions, check_trackers, wandb_run_id


def _inspect(run_file, *flags) -> str:
    """`wandb leet inspect --json [flags] <run file>`: W&B's own reader of its transaction log, called as
    the `wandb leet` command calls it (the wandb-core binary; the Python CLI adds seconds of imports)."""
    from wandb.util import get_core_path

    args = [get_core_path(), "leet", "inspect", "--no-observability", "--json", *flags]
    p = subprocess.run([*args, "--run-file", str(run_file), str(run_file.parents[1])],
                       capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return p.stdout


def _expected_rows(events: list[dict]) -> list[dict]:
    """The W&B history rows the run log's events call for (the mapping of tracking.py's docstring)."""
    rows = []
    for e in events:
        if e["event"] == "throughput":
            row = {"train/step": e["step"], "train/loss": e["train_loss"], "train/lr": e["lr"]}
            for k, v in e.items():
                if k in ("event", "step", "train_loss", "lr"):
                    continue
                if isinstance(v, dict):
                    row.update({f"throughput/{k}/{d}": x for d, x in v.items()})
                else:
                    row[f"throughput/{k}"] = v
            rows.append(row)
        elif e["event"] == "eval":
            row = {"train/step": e["step"], "samples_total": e["samples_total"]}
            for k in ("loss", "loss_se", "samples_seen"):
                row.update({f"eval/{k}/{d}": x for d, x in e.get(k, {}).items()})
            rows.append(row)
    return rows


def test_wandb_offline_run_holds_the_run_logs_events(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    # W&B's own state stays in the test folder; no console capture or system monitor (speed only).
    for var, value in (("WANDB_CONFIG_DIR", tmp_path / "cfg"), ("WANDB_CACHE_DIR", tmp_path / "cache"),
                       ("WANDB_DATA_DIR", tmp_path / "data"), ("WANDB_SILENT", "true"),
                       ("WANDB_CONSOLE", "off"), ("WANDB_X_DISABLE_STATS", "true")):  # fmt: skip
        monkeypatch.setenv(var, str(value))
    out = tmp_path / "run"
    out.mkdir()
    options = WandbOptions(project="voxmix-test", group="study", tags=("pilot",), mode="offline")
    sink = MetricsSink(out, rank=0, domains=["a", "b"], schedule=np.array([0, 1, 1, 0, 0, 1, 0, 1]),
                       log_every=1, tensorboard=False, wandb=options)  # fmt: skip
    start = dict(run_id="r1", domains=["a", "b"], mixture={"a": 0.5, "b": 0.5}, budget_samples=8,
                 unique_samples={"a": 3, "b": 3}, seed=7, eval_at=[4, 8], total_steps=2)  # fmt: skip
    config = {"optim": {"lr": 0.001}, "train": {"seed": 7, "wandb": True}}
    sink.begin(config=config, world_size=1, start=start)
    report = {"samples_per_s": 10.0, "seconds_per_sample": {"a": 0.1, "b": 0.2}, "data_wait_frac": 0.25,
              "tflops_per_device": 1.5, "peak_memory_bytes": 123456789, "window_steps": 1}  # fmt: skip
    sink.throughput(step=1, total_steps=2, train_loss=1.75, lr=5e-4, report=report)
    sink.eval(step=1, position=4, loss={"a": 1.5, "b": 1.25}, loss_se={"a": 0.125, "b": 0.0625})
    sink.throughput(step=2, total_steps=2, train_loss=1.5, lr=1e-3, report={**report, "mfu": 0.5})
    sink.eval(step=2, position=8, loss={"a": 1.375, "b": 1.125})
    sink.completed_run(2)
    assert sink.wb is None  # finished

    runlog = [json.loads(x) for x in (out / "runlog.jsonl").read_text().splitlines()]
    assert [e["event"] for e in runlog] == ["start", "throughput", "eval", "throughput", "eval", "end"]
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    (run_file,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = [json.loads(x) for x in _inspect(run_file).splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    # Every throughput and eval event of the run log, in order, value for value (W&B's own `_step`,
    # `_runtime` and `_timestamp` aside).
    assert [{k: v for k, v in h.items() if not k.startswith("_")} for h in history] == _expected_rows(runlog)
    summary = json.loads(_inspect(run_file, "--summary"))
    assert (summary["state"], summary["exit_code"], summary["run_id"]) == ("finished", 0, run_id)
    assert (summary["name"], summary["project"], summary["tags"]) == ("r1", "voxmix-test", ["pilot"])
    assert summary["summary"]["status"] == "completed" and summary["summary"]["end_step"] == 2
    # The run config: the config sections and the start event's other fields (under `voxmix`).
    cfg = {k: v for k, v in summary["config"].items() if k != "_wandb"}
    logged_start = {k: v for k, v in runlog[0].items() if k not in ("event", "format", "config")}
    assert cfg == {**config, "voxmix": {**logged_start, "world_size": 1}}
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_group"] == "study"


def test_wandb_run_id_is_kept_in_the_run_folder(tmp_path):
    first = wandb_run_id(tmp_path / "a")
    assert wandb_run_id(tmp_path / "a") == first  # a resumed attempt continues the same W&B run
    assert (tmp_path / "a" / WANDB_ID_FILE).read_text() == first + "\n"
    assert wandb_run_id(tmp_path / "b") != first  # a new run folder, a new W&B run


def test_missing_tracker_packages_are_named_on_every_rank(monkeypatch):
    pytest.importorskip("wandb")
    cfg = config_from_dict({"train": {"wandb": True}}).train
    check_trackers(cfg)  # installed (the train extra)
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when it is not installed
    with pytest.raises(
        ValueError, match=r"'train\.wandb' = True needs the wandb package.*train\.wandb=false"
    ):
        check_trackers(cfg)


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"wandb_project": "a/b"}, "train.wandb_project"),
        ({"wandb_project": "x" * 129}, "train.wandb_project"),
        ({"wandb_project": " "}, "train.wandb_project"),
        ({"wandb_mode": "disabled"}, "train.wandb_mode"),
        ({"wandb_tags": ["ok", "x" * 65]}, "train.wandb_tags[1]"),
        ({"wandb_tags": "pilot"}, "train.wandb_tags"),
        ({"wandb_entity": ""}, "train.wandb_entity"),
        ({"wandb": "yes"}, "train.wandb"),
    ],
)
def test_wandb_fields_are_validated(train, field):
    with pytest.raises(ConfigError, match=f"config field '{re.escape(field)}'"):
        config_from_dict({"train": train})


def test_wandb_fields_from_yaml_and_set():
    cfg = config_from_dict(
        {"train": {"wandb": True, "wandb_tags": ["pilot"]}},
        ["train.wandb_mode=offline", "train.wandb_group=sweep1"],
    ).train
    assert WandbOptions.from_config(cfg) == WandbOptions(
        project="voxmix", group="sweep1", tags=("pilot",), mode="offline"
    )
    assert WandbOptions.from_config(config_from_dict({}).train) is None  # off by default


def test_wandb_fields_may_change_on_resume():
    before = Config().to_dict()
    now = config_from_dict({"train": {"wandb": True, "wandb_project": "p2", "wandb_entity": "team",
                                      "wandb_group": "g", "wandb_tags": ["t"], "wandb_mode": "offline"}})  # fmt: skip
    assert changes({"config": before}, now.to_dict(), {}, defaults=before) == []
