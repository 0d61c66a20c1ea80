"""A tiny on-disk dataset (.npy volumes + manifest.jsonl + allocation.json) and run helpers for the trainer tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from voxmix.formats.manifest import VolumeRecord, write_manifest

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable
DOMAINS = {"ct_abdomen": "CT", "mri_brain": "MRI"}

# The reference run: 2 domains x 96 samples, batch 8 -> 24 optimizer steps, a throughput event (with the
# mean training loss) every step, evaluations at 16, 32, 64, 128 and 192 samples, checkpoints every 4.
RUN_ARGS = [
    "--config", "configs/tiny.yaml",
    "--eval-at", "16,32,64,128",
    "--set", "train.log_every=1",
    "--set", "checkpoint.every_steps=4",
    "--set", "data.num_threads=1",
]  # fmt: skip


def _volume(rng: np.random.Generator, shape, modality: str) -> np.ndarray:
    """Smooth blobs on a background: structure an MAE can learn to fill in within a few steps."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(6):
        c = rng.uniform(-0.7, 0.7, 3)
        r = rng.uniform(0.15, 0.5)
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / r**2
        )
    vol += 0.05 * rng.standard_normal(shape).astype(np.float32)
    return (vol if modality == "CT" else np.sqrt(np.abs(vol))).astype(np.float16)


def make_dataset(root: Path, *, train: int = 6, val: int = 2, shape=(40, 40, 40), seed: int = 0) -> Path:
    root = Path(root)
    (root / "vol").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs = []
    for domain, modality in DOMAINS.items():
        for i in range(train + val):
            split = "train" if i < train else "val"
            rel = f"vol/{domain}_{i:03d}.npy"
            np.save(root / rel, _volume(rng, shape, modality))
            recs.append(
                VolumeRecord(
                    id=f"{domain}-{i:03d}",
                    domain=domain,
                    modality=modality,
                    path=rel,
                    shape=tuple(shape),
                    spacing=(1.5, 1.5, 1.5),
                    source=f"synthetic/{domain}/{i}",
                    sha256=f"{i:064x}",
                    split=split,
                )
            )
    write_manifest(root / "manifest.jsonl", recs, {"created_by": "tests/trainer"})
    return root / "manifest.jsonl"


def write_allocation(path: Path, samples: dict[str, int]) -> Path:
    total = sum(samples.values())
    obj = {
        "format": "voxmix.allocation/1",
        "budget": {"samples": total},
        "domains": {d: {"weight": n / total, "samples": n} for d, n in samples.items()},
        "predicted_loss": {},
        "objective": {},
        "baselines": {},
    }
    Path(path).write_text(json.dumps(obj))
    return Path(path)


def env() -> dict[str, str]:
    e = dict(os.environ)
    # The repo first, then the caller's path (packages installed with --target, e.g. by gpu_check.sh).
    path = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH", "")) if p)
    e.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    return e


def run_trainer(args: list[str], *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [PY, str(REPO / "trainer" / "run.py"), *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"trainer exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
        )
    return p


def events(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = (Path(run_dir) / "runlog.jsonl").read_text().splitlines()
    evs = [json.loads(x) for x in lines if x.strip()]
    return [e for e in evs if kind is None or e["event"] == kind]
