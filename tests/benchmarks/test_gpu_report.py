"""benchmarks/gpu_report.py: each target's threshold and scope, on rows shaped like the benchmarks' own."""

import json

import pytest

from benchmarks import gpu_report


def _att(n, vs_best, vs_fa4=None):
    row = {"bench": "attention", "device_type": "cuda", "mode": "fwd+bwd:ratio", "best_baseline": "sdpa-cudnn",
           "config": {"B": 4, "H": 12, "N": n, "Dh": 64, "dtype": "bfloat16"}, "vs_best_baseline": vs_best}  # fmt: skip
    if vs_fa4 is not None:
        row["vs_flash_attn_4"] = vs_fa4
    return row


def test_attention_thresholds_and_fa4_scope():
    assert [c.ok for c in gpu_report.checks_for(_att(55, 1.0))] == [True]
    assert [c.ok for c in gpu_report.checks_for(_att(55, 0.99))] == [False]
    # flash-attn-4's 0.9x target applies from N = 512 only
    assert [c.ok for c in gpu_report.checks_for(_att(216, 1.2, vs_fa4=0.5))] == [True]
    assert [c.ok for c in gpu_report.checks_for(_att(512, 1.2, vs_fa4=0.9))] == [True, True]
    assert [c.ok for c in gpu_report.checks_for(_att(4096, 1.2, vs_fa4=0.89))] == [True, False]
    # forward-only ratios and CPU rows carry no target
    assert gpu_report.checks_for({**_att(512, 0.5), "mode": "fwd:ratio"}) == []
    assert gpu_report.checks_for({**_att(512, 0.5), "device_type": "cpu"}) == []


@pytest.mark.parametrize(
    "row, ok",
    [
        ({"bench": "patch_embed", "device_type": "cuda", "mode": "fwd+bwd:ratio", "vs_conv3d": 1.99}, False),
        ({"bench": "patch_embed", "device_type": "cuda", "mode": "fwd+bwd:ratio", "vs_conv3d": 2.0}, True),
        ({"bench": "patch_embed", "device_type": "cpu", "mode": "unpatchify:ratio", "vs_pytorch": 1.83}, False),
        ({"bench": "mae_loss", "device_type": "cuda", "backend": "voxmix", "mode": "fwd+grad", "hbm_fraction": 0.69}, False),
        ({"bench": "mae_loss", "device_type": "cuda", "backend": "voxmix", "mode": "fwd+grad", "hbm_fraction": 0.71}, True),
        ({"bench": "mae_loss", "device_type": "cpu", "mode": "fwd+grad:ratio", "vs_pytorch": 4.1}, True),
        ({"bench": "train", "device_type": "cuda", "mode": "data_wait", "config": {"case": "base"}, "data_wait_frac": 0.05}, False),
    ],
)  # fmt: skip
def test_single_targets(row, ok):
    (check,) = gpu_report.checks_for(row)
    assert check.ok is ok


def test_cli_exit_status_and_table(tmp_path, capsys):
    good, bad = _att(512, 1.1, vs_fa4=0.95), _att(1728, 0.8)
    (tmp_path / "a.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    assert gpu_report.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2/3 targets met" in out and "| FAIL |" in out and "N=1728" in out
    (tmp_path / "a.jsonl").write_text(json.dumps(good) + "\n")
    assert gpu_report.main([str(tmp_path / "a.jsonl")]) == 0
    (tmp_path / "a.jsonl").write_text('{"bench": "attention"}\n{oops\n')
    with pytest.raises(SystemExit, match=r"a\.jsonl:2: not JSON"):
        gpu_report.main([str(tmp_path)])
