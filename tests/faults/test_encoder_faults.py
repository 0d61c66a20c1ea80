"""Bad encoders, data and arguments given to the downstream commands (defect 14 of #15): each is refused
before any training with a `voxmix: ...` message naming the file or argument, exit 2, no traceback, and
an encoder.pt that asks to run code when unpickled is refused without running it."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from tests.faults.faults_helpers import assert_clean_error, run_cli
from tests.trainer.downstream.downstream_helpers import make_encoder
from voxmix.formats.encoder import FORMAT
from voxmix.formats.labels import write_labels_file
from voxmix.formats.manifest import VolumeRecord, write_manifest
from voxmix.trainer import compare_encoders, finetune

SHAPE = (8, 9, 10)
CONFIG = """\
seg: [{domain: ct_abdomen, labels: [liver], steps: 1, feature_size: 4}]
cls: [{domain: ct_abdomen, folds: 2}]
threads: 1
"""


class _RunsCode:
    """Unpickled, this would run a shell command that creates `marker` (what an attacker's file does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_dataset(root, n: int = 8) -> None:
    """An ingested folder in miniature: `n` volumes of one domain (train and val, both lesion classes)
    with uint8 label maps, written by the formats' own writers."""
    rng = np.random.default_rng(0)
    records, rows = [], []
    for i in range(n):
        rid = f"ct_{i}"
        (root / "ct").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        np.save(root / "ct" / f"{rid}.npy", rng.random(SHAPE).astype(np.float16))
        np.save(root / "labels" / f"{rid}.npy", (rng.random(SHAPE) > 0.5).astype(np.uint8))
        records.append(
            VolumeRecord(
                id=rid,
                domain="ct_abdomen",
                modality="CT",
                path=f"ct/{rid}.npy",
                shape=SHAPE,
                spacing=(1.0, 1.0, 1.0),
                source=f"{rid}.nii.gz",
                sha256="0" * 64,
                split="train" if i % 2 else "val",
            )  # fmt: skip
        )
        rows.append({"id": rid, "labels": f"labels/{rid}.npy", "classes": {"lesion": (i // 2) % 2}})
    write_manifest(root / "manifest.jsonl", records)
    write_labels_file(root, ["background", "liver"], rows, index="raw/phantoms.jsonl")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream_faults")
    make_dataset(root / "data")
    (root / "cfg.yaml").write_text(CONFIG)
    return root, make_encoder(root / "good" / "encoder.pt")


def _unreadable_encoders(d, good: str, marker) -> dict[str, tuple[str, str]]:
    """name -> (file, what its message must say), for files that fail before any architecture check."""
    d.mkdir(exist_ok=True)
    blob = torch.load(good, weights_only=True)
    kw, sd = blob["monai_vit_kwargs"], blob["state_dict"]
    torch.save({"format": FORMAT, "monai_vit_kwargs": kw, "state_dict": _RunsCode(marker)}, d / "zip_code.pt")
    (d / "raw_code.pt").write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    (d / "random.pt").write_bytes(np.random.default_rng(1).bytes(4096))
    (d / "truncated.pt").write_bytes(open(good, "rb").read()[:5000])
    torch.save({"format": FORMAT, "state_dict": sd}, d / "no_kwargs.pt")
    (d / "folder.pt").mkdir(exist_ok=True)
    code = "refused: loading it would import and call code"
    return {
        "zip_code": (d / "zip_code.pt", code),
        "raw_code": (d / "raw_code.pt", code),
        "random": (d / "random.pt", "not a torch weights file"),
        "truncated": (d / "truncated.pt", "not a readable torch file, truncated or corrupt"),
        "no_kwargs": (d / "no_kwargs.pt", "field 'monai_vit_kwargs' missing"),
        "folder": (d / "folder.pt", "is a folder"),
        "missing": (d / "missing.pt", "file not found"),
    }


def test_bad_encoders_are_refused_by_name_and_never_run(inputs, tmp_path, capsys):
    """One compare_encoders launch: every bad encoder is named in one message with its reason, and the
    pickles that would run a command (zip and plain) leave no marker behind."""
    root, good = inputs
    marker = tmp_path / "code_ran"
    bad = _unreadable_encoders(tmp_path / "bad", good, marker)
    files = [str(f) for f, _ in bad.values()]
    p = run_cli(["-m", "trainer.compare_encoders", *files, "--names", ",".join(bad),
                 "--data", str(root / "data"), "--config", str(root / "cfg.yaml"), "--seeds", "2"])  # fmt: skip
    needles = [f"{len(bad)} of the {len(files)} encoders cannot be used"]
    needles += [f"{f}: {why}" for f, why in bad.values()]
    assert_clean_error(p, *needles, code=2)
    assert "will likely succeed" not in p.stderr  # torch's advice (weights_only=False) is not passed on
    assert not marker.exists(), "unpickling the encoder ran code"
    # finetune reads encoders the same way (in-process here: were code run, it would run in this test).
    f, why = bad["zip_code"]
    code, err = _finetune(
        capsys, "--encoder", str(f), "--data", str(root / "data"), "--config", str(root / "cfg.yaml")
    )
    assert code == 2 and f"voxmix: {f}: {why}" in err, err
    assert not marker.exists(), "unpickling the encoder ran code"


def _fill(text: str, tmp, root) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{cfg}", str(root / "cfg.yaml"))


def _finetune(capsys, *argv) -> tuple[int, str]:
    try:
        code = finetune.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


def test_bad_downstream_data_is_named_before_training(inputs, tmp_path, capsys):
    """Label maps and volumes missing, truncated or of the wrong shape or dtype: every bad file in one
    message with the command that rebuilds it (checked in-process: the check runs before MONAI loads)."""
    root, good = inputs
    data = tmp_path / "data"
    make_dataset(data)
    lab = data / "labels"
    (lab / "ct_0.npy").unlink()
    (lab / "ct_1.npy").write_bytes((lab / "ct_1.npy").read_bytes()[:-50])
    np.save(lab / "ct_2.npy", np.zeros((8, 8, 8), np.uint8))
    np.save(lab / "ct_3.npy", np.zeros(SHAPE, np.float32))
    args = ["--encoder", good, "--data", str(data), "--config", str(root / "cfg.yaml")]
    code, err = _finetune(capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    for needle in ("4 of the 8 label maps", f"{lab / 'ct_0.npy'}: file not found",
                   f"{lab / 'ct_1.npy'}: truncated", "shape (8, 8, 8), the manifest says (8, 9, 10)",
                   "dtype float32", "python -m trainer.downstream.labels --data", "--index raw/phantoms.jsonl"):  # fmt: skip
        assert needle in err, (needle, err)
    # Volumes: checked before the label maps, with the ingest as the fix.
    vol = data / "ct"
    (vol / "ct_4.npy").write_bytes((vol / "ct_4.npy").read_bytes()[:100])
    np.save(vol / "ct_5.npy", np.zeros(SHAPE, np.float32))
    code, err = _finetune(capsys, *args, "--task", "cls")
    assert (
        code == 2 and "2 of the 8 volumes used for the downstream tasks" in err and "trainer.ingest" in err
    ), err
    assert f"{vol / 'ct_4.npy'}: " in err and "dtype float32, the manifest says float16" in err, err
    (data / "labels.jsonl").unlink()
    code, err = _finetune(capsys, *args)
    assert code == 2 and "labels.jsonl: file not found" in err, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--task", "segment"], "voxmix: argument --task: invalid choice: 'segment'"),
        (["--seed", "-1"], "voxmix: --seed -1: must lie in [0, 2^32)"),
        (["--out", "{tmp}"], "voxmix: --out {tmp}: is a folder; give a file name"),
        (["--out", "{cfg}/r.json"], "voxmix: --out {cfg}/r.json: cannot create its folder: {cfg} is a file"),
        (["--config", "{tmp}/none.yaml"], "voxmix: --config '{tmp}/none.yaml': neither a preset"),
        (["--data", "{tmp}/nodata"], "voxmix: --data {tmp}/nodata: folder not found; give the ingested folder"),
    ],
)  # fmt: skip
def test_finetune_usage_errors(inputs, tmp_path, capsys, argv, needle):
    root, good = inputs
    base = {"--encoder": good, "--data": str(root / "data"), "--config": str(root / "cfg.yaml")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code, err = _finetune(capsys, *[_fill(str(x), tmp_path, root) for kv in base.items() for x in kv])
    assert code == 2 and _fill(needle, tmp_path, root) in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--seeds", "0"], "voxmix: --seeds 0: a paired test needs >= 2 seeds"),
        (["--names", "a"], "voxmix: --names: need 2 distinct, non-empty names (one per encoder), got ['a']"),
        (["--names", "a,scratch", "--scratch"], "'scratch' is the name of the --scratch control"),
        (["--level", "nan"], "voxmix: --level nan: must lie strictly between 0 and 1"),
        (["--phantoms", "{cfg}"], "is a file; give a work folder"),
        (["--out", "{tmp}"], "voxmix: --out {tmp}: is a folder"),
        (["--correction", "bonferroni"], "voxmix: argument --correction: invalid choice"),
    ],
)  # fmt: skip
def test_compare_encoders_usage_errors(inputs, tmp_path, capsys, argv, needle):
    root, good = inputs
    args = [good, good, "--names", "a,b", "--config", str(root / "cfg.yaml")]
    args += [] if "--phantoms" in argv else ["--data", str(root / "data")]
    try:
        code = compare_encoders.main(args + [_fill(a, tmp_path, root) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and _fill(needle, tmp_path, root) in err and "Traceback" not in err, err


def test_labels_file_still_reads(inputs):
    """The miniature dataset is valid: the refusals above are about the damage, not the fixture."""
    root, _ = inputs
    from voxmix.trainer.downstream.config import load_config
    from voxmix.trainer.downstream.data import check_data

    check_data(root / "data", load_config(str(root / "cfg.yaml")), "all")
    head = json.loads((root / "data" / "labels.jsonl").read_text().splitlines()[0])
    assert head["label_names"] == ["background", "liver"]
