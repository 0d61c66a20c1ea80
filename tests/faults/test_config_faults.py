"""Bad config values are refused at load, naming the field and where the value came from (defect 13 of
#15): NaN or infinity in any number (NaN passed every `x < 0` check and failed later, unnamed), numbers
out of range, and DeepSpeed passthrough entries that are not plain JSON or that a config field decides."""

from __future__ import annotations

import re

import pytest

from tests.faults.faults_helpers import REPO, assert_clean_error, run_cli
from voxmix.trainer.pretrain.config import ConfigError, config_from_dict, load_config

FINITE = "must be a finite number (NaN and infinity are refused)"


@pytest.mark.parametrize(
    "text, field, why",
    [
        ("optim.grad_clip=.nan", "optim.grad_clip", FINITE),
        ("optim.grad_clip=nan", "optim.grad_clip", FINITE),  # a string "nan", read as a float
        ("optim.weight_decay=.nan", "optim.weight_decay", FINITE),
        ("optim.weight_decay=-.inf", "optim.weight_decay", FINITE),
        ("train.peak_tflops=.nan", "train.peak_tflops", FINITE),
        ("train.peak_tflops=inf", "train.peak_tflops", FINITE),
        ("optim.lr=.inf", "optim.lr", FINITE),
        ("optim.beta2=.nan", "optim.beta2", FINITE),
        ("optim.warmup_frac=.nan", "optim.warmup_frac", FINITE),
        ("model.mask_ratio=.inf", "model.mask_ratio", FINITE),  # was an OverflowError in round()
        ("model.mlp_ratio=.nan", "model.mlp_ratio", FINITE),
        ("data.max_epochs=.inf", "data.max_epochs", FINITE),
        ("train.deepspeed={zero_optimization: {reduce_bucket_size: .nan}}",
         "train.deepspeed.zero_optimization.reduce_bucket_size", FINITE),
        ("train.deepspeed={gradient_clipping: 5.0}", "train.deepspeed.gradient_clipping",
         "set by the trainer from optim.grad_clip: set that instead"),
        ("train.deepspeed={train_batch_size: 64}", "train.deepspeed.train_batch_size", "set that instead"),
        ("train.deepspeed={zero_optimization: {stage: 3}}", "train.deepspeed.zero_optimization.stage",
         "from train.zero_stage"),
        ("train.deepspeed={when: 2024-01-01}", "train.deepspeed.when", "must be a JSON value"),
        ("optim.lr=-0.1", "optim.lr", "must be a finite number > 0"),
        ("optim.lr=0", "optim.lr", "must be a finite number > 0"),
        ("optim.grad_clip=-1", "optim.grad_clip", "must be >= 0"),
        ("optim.grad_accum=0", "optim.grad_accum", "must be >= 1"),
        ("optim.decay_frac=0.99", "optim.decay_frac", "must lie in [0, 1 - optim.warmup_frac]"),
        ("data.batch_size=0", "data.batch_size", "must be >= 1"),
        ("data.num_threads=0", "data.num_threads", "must be >= 1"),
        ("data.max_epochs=0", "data.max_epochs", "must be > 0"),
        ("model.crop=30", "model.patch", "must divide model.crop=30"),
        ("model.mask_ratio=0", "model.mask_ratio", "must leave >= 1 visible and >= 1 masked"),
        ("model.mask_ratio=1", "model.mask_ratio", "must leave >= 1 visible and >= 1 masked"),
        ("model.mlp_ratio=0.001", "model.mlp_ratio", "give an MLP of >= 1 unit"),
        ("model.heads=5", "model.heads", "must divide model.width=96"),
        ("eval.at=[64, 64]", "eval.at", "strictly increasing"),
        ("eval.at=[128, 64]", "eval.at", "strictly increasing"),
        ("eval.at=[0, 64]", "eval.at", "sample counts >= 1"),
        ("eval.at=[]", "eval.at", "non-empty"),
        ("eval.seed=-3", "eval.seed", "must lie in [0, 2147483648)"),
        ("train.seed=-1", "train.seed", "must lie in [0, 2147483648)"),
        ("train.seed=4294967296", "train.seed", "must lie in [0, 2147483648)"),
        ("train.budget_samples=0", "train.budget_samples", "must be >= 1"),
        ("train.budget_samples=100000000000000000000", "train.budget_samples", "does not fit a 64-bit integer"),
        ("train.out=''", "train.out", "must name the output folder"),
        ("checkpoint.keep=0", "checkpoint.keep", "must be >= 1"),
    ],
)  # fmt: skip
def test_bad_values_from_set_are_named(tmp_path, text, field, why):
    """Given with --set: the message names the --set item (the value's origin) and the field."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  size: tiny\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [text])
    msg = str(err.value)
    assert msg.startswith(f"--set {text}: config field '{field}'"), msg
    assert why in msg, msg


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("optim:\n  grad_clip: .nan\n", "optim.grad_clip"),
        ("optim:\n  weight_decay: .inf\n", "optim.weight_decay"),
        ("train:\n  peak_tflops: .nan\n", "train.peak_tflops"),
        ("train:\n  deepspeed:\n    zero_optimization:\n      reduce_bucket_size: .inf\n",
         "train.deepspeed.zero_optimization.reduce_bucket_size"),
    ],
)  # fmt: skip
def test_bad_values_from_the_file_name_the_file(tmp_path, yaml_text, field):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: config field '{field}' = "), err.value
    assert FINITE in str(err.value)


def test_a_cross_field_error_names_the_set_item_that_caused_it(tmp_path):
    """model.patch is checked against model.crop: a --set crop that breaks it is named as the origin."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  size: tiny\n")
    with pytest.raises(ConfigError, match=r"^--set model\.crop=36: config field 'model\.patch' = 8"):
        load_config(path, ["model.crop=36"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, ["eval.at=[1,"])


def test_every_float_field_refuses_nan():
    """The finiteness check is generic: every float field of every section, not a hand-kept list."""
    import dataclasses
    import typing

    from voxmix.trainer.pretrain.config import Config

    checked = []
    for sec in dataclasses.fields(Config):
        hints = typing.get_type_hints(sec.default_factory)
        for f in dataclasses.fields(sec.default_factory):
            if float in (hints[f.name], *typing.get_args(hints[f.name])):
                name = f"{sec.name}.{f.name}"
                with pytest.raises(ConfigError, match=re.escape(f"'{name}' = nan: {FINITE}")):
                    config_from_dict({sec.name: {f.name: float("nan")}})
                checked.append(name)
    assert {"optim.grad_clip", "optim.weight_decay", "train.peak_tflops", "model.mask_ratio"} <= set(checked)


def test_trainer_command_names_the_bad_set(tmp_path):
    """The trainer's command line (fails before torch is imported: cheap)."""
    p = run_cli(["trainer/run.py", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", "optim.grad_clip=nan"],
                cwd=REPO)  # fmt: skip
    assert_clean_error(p, "voxmix: --set optim.grad_clip=nan: config field 'optim.grad_clip' = nan", FINITE)
