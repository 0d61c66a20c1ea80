"""Small manifests and allocations built in code for the sampler and validation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxmix.formats.manifest import Manifest, VolumeRecord, write_manifest


def record(domain: str, i: int, *, split: str = "train", shape=(8, 8, 8), path: str | None = None):
    return VolumeRecord(
        id=f"{domain}-{i:04d}",
        domain=domain,
        modality="CT" if domain.startswith("ct") else "MRI",
        path=path or f"{domain}/{domain}-{i:04d}.npy",
        shape=tuple(shape),
        spacing=(1.0, 1.0, 1.0),
        source=f"/src/{domain}/{i}.nii.gz",
        sha256=f"{i:064x}",
        split=split,
    )


def manifest_with(counts: dict[str, int], root: Path | str = "/nonexistent", val: int = 0) -> Manifest:
    recs = []
    for d, n in counts.items():
        recs += [record(d, i) for i in range(n)]
        recs += [record(d, 1000 + i, split="val") for i in range(val)]
    return Manifest(root=Path(root), records=recs)


def write_volumes(root: Path, shapes: dict[str, list[tuple[int, int, int]]], *, val: int = 0, seed: int = 0):
    """Real `.npy` volumes (float16) whose voxel values encode (volume number, flat index) for crop checks."""
    rng = np.random.default_rng(seed)
    recs = []
    for d, shp_list in shapes.items():
        for i, shp in enumerate(shp_list):
            split = "val" if i < val else "train"
            arr = rng.random(shp, dtype=np.float32).astype(np.float16)
            rel = f"{d}/{d}-{i:04d}.npy"
            (root / d).mkdir(parents=True, exist_ok=True)
            np.save(root / rel, arr)
            recs.append(record(d, i, split=split, shape=shp, path=rel))
    write_manifest(root / "manifest.jsonl", recs, {"created_by": "tests"})
    return recs
