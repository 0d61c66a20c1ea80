"""Bad volumes and ingest faults against the real commands (#15 defects 2, 3, 14 (volumes, --out), 15,
16, and ingest workers outliving a SIGKILLed ingest).

Every kind of bad `.npy` is checked in-process in tests/trainer/data/test_volumes.py; here one trainer
launch meets six of them at once (the check lists every bad file before the first step).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults.faults_helpers import (
    alive,
    assert_clean_error,
    children,
    cli_env,
    kill_and_check_workers_die,
    run_cli,
)
from tests.trainer.data.ingest_helpers import phantom_hu, write_nifti
from tests.trainer.pretrain.trainer_helpers import make_dataset, write_allocation
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.ingest import ingest, load_spec
from voxmix.trainer.data.volumes import check_volume
from voxmix.trainer.ingest import main as ingest_main


def test_trainer_names_every_bad_volume_and_stops_before_training(tmp_path):
    root = tmp_path / "ds"
    manifest = make_dataset(root, train=4, val=1, shape=(32, 25, 32))
    alloc = write_allocation(root / "a.json", {"ct_abdomen": 16, "mri_brain": 16})
    v = root / "vol"
    np.save(v / "ct_abdomen_000.npy", np.zeros((8, 8, 8), np.float16))  # defect 2: trained silently
    data = (v / "ct_abdomen_001.npy").read_bytes()
    (v / "ct_abdomen_001.npy").write_bytes(data[: len(data) // 2])
    np.save(v / "ct_abdomen_002.npy", np.zeros((32, 25, 32), np.float64))
    (v / "mri_brain_000.npy").write_bytes(os.urandom(len(data)))  # defect 15: "contains pickled data"
    (v / "mri_brain_001.npy").unlink()
    (v / "mri_brain_002.npy").unlink()
    (v / "mri_brain_002.npy").symlink_to(tmp_path / "elsewhere.npy")
    out = tmp_path / "run"
    p = run_cli(
        ["trainer/run.py", "--config", "configs/tiny.yaml", "--manifest", str(manifest),
         "--allocation", str(alloc), "--out", str(out), "--set", "data.num_threads=1"],
        env=cli_env(CUDA_VISIBLE_DEVICES=""),
    )  # fmt: skip
    assert_clean_error(
        p,
        f"voxmix: rank 0: {manifest}: 6 of the 8 volumes used for training",
        "re-run the ingest",
        f"line 2, id 'ct_abdomen-000': {v / 'ct_abdomen_000.npy'}: shape (8, 8, 8), the manifest says (32, 25, 32)",
        f"{v / 'ct_abdomen_001.npy'}: truncated: {len(data) // 2} bytes, expected {len(data)}",
        f"{v / 'ct_abdomen_002.npy'}: dtype float64, the manifest says float16",
        f"{v / 'mri_brain_000.npy'}: not a NumPy .npy file",
        f"{v / 'mri_brain_001.npy'}: file not found",
        f"{v / 'mri_brain_002.npy'} (a symbolic link to {tmp_path / 'elsewhere.npy'}): the link's target",
        code=1,
    )
    assert not (out / "runlog.jsonl").exists()


def _sources(folder: Path, n: int, shape=(40, 36, 24)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_nifti(folder / f"s{i}.nii.gz", phantom_hu(shape, seed=i))


def _spec(path: Path, domains: dict[str, list[str]]) -> Path:
    lines = ["defaults: {spacing: null, val_fraction: 0.0}", "domains:"]
    lines += [f"  {d}: {{modality: CT, sources: {src!r}}}" for d, src in domains.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ingest_rerun_rebuilds_missing_and_corrupt_outputs(tmp_path):
    _sources(tmp_path / "ct", 4)
    # A source pattern that matches nothing next to one that matches: a warning naming it, not an error.
    spec = _spec(tmp_path / "spec.yaml", {"ct": ["ct/*.nii.gz", "typo/*.nii.gz"]})
    out = tmp_path / "out"
    ingest(load_spec(spec), out, progress=False)
    recs = read_manifest(out).records
    paths = [out / r.path for r in recs]
    before = [np.load(p) for p in paths]
    text = (out / "manifest.jsonl").read_text()
    paths[0].write_bytes(paths[0].read_bytes()[:-100])  # defect 3: kept as "unchanged"
    paths[1].unlink()
    with open(paths[2], "r+b") as fh:  # same size, one zeroed block: only the content check sees it
        fh.seek(200)
        fh.write(bytes(2000))
    p = run_cli(["-m", "trainer.ingest", "--spec", str(spec), "--out", str(out), "--quiet"])
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert "(1 unchanged, 3 rebuilt (missing or corrupt output))" in p.stdout
    assert f"warning: {spec}: domain 'ct': source 'typo/*.nii.gz'" in p.stderr
    for path, why in zip(paths, ["truncated", "missing", "the manifest recorded"]):
        assert f"warning: {path}" in p.stderr and why in p.stderr, p.stderr
    for path, r, want in zip(paths, recs, before):
        check_volume(path, r)
        np.testing.assert_array_equal(np.load(path), want)
    assert (out / "manifest.jsonl").read_text() == text


def test_ingest_spec_matching_nothing_and_out_naming_a_file_exit_2(tmp_path, capsys):
    _sources(tmp_path / "ct", 1, shape=(20, 20, 20))
    spec = _spec(tmp_path / "spec.yaml", {"ct": ["nope/*.nii.gz"], "mri": ["mri/*.nii.gz"]})
    p = run_cli(["-m", "trainer.ingest", "--spec", str(spec), "--out", str(tmp_path / "out")])
    assert_clean_error(
        p,
        f"voxmix: {spec}: domain 'ct': field 'sources' matched no volume: 'nope/*.nii.gz' "
        f"(looked for {tmp_path / 'nope/*.nii.gz'})",
        "domain 'mri'",
        "Fix the glob",
        code=2,
    )
    assert not (tmp_path / "out").exists()
    # One domain matching nothing while another matches is an error too (found before any work).
    spec = _spec(tmp_path / "spec2.yaml", {"ct": ["ct/*.nii.gz"], "mri": ["mri/*.nii.gz"]})
    assert ingest_main(["--spec", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "domain 'mri': field 'sources' matched no volume" in err and "'ct'" not in err
    spec = _spec(tmp_path / "spec3.yaml", {"ct": ["ct/*.nii.gz"]})
    for bad in (spec, spec / "sub"):
        assert ingest_main(["--spec", str(spec), "--out", str(bad), "--quiet"]) == 2
        assert f"voxmix: --out {bad}: {spec} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkilled_ingest_leaves_no_worker_running(tmp_path):
    # The workers import torch before their first job: the ingest outlives that, whatever the sources.
    _sources(tmp_path / "ct", 4)
    spec = _spec(tmp_path / "spec.yaml", {"ct": ["ct/*.nii.gz"]})
    cmd = [sys.executable, "-m", "trainer.ingest", "--spec", str(spec), "--out", str(tmp_path / "o")]
    proc = subprocess.Popen([*cmd, "--workers", "2", "--quiet"], env=cli_env(), cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = [c for c in children(proc.pid) if "resource_tracker" not in Path(
                f"/proc/{c}/cmdline").read_text(errors="replace")]  # fmt: skip
        assert len(workers) >= 2 and proc.poll() is None, "the ingest ended before its workers were seen"
        kill_and_check_workers_die(proc, workers, "ingest")
        # Nothing is lost: the rerun finishes the dataset, every volume matching its manifest record.
        p = run_cli([*cmd[1:], "--workers", "1", "--quiet"])
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        recs = read_manifest(tmp_path / "o").records
        assert len(recs) == 4
        for r in recs:
            check_volume(tmp_path / "o" / r.path, r)
    finally:
        proc.kill()
        proc.wait()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
