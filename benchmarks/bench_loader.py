"""Benchmark: crops/s and MB/s of the data loaders on the same cores, same volumes, same crops.

Loaders (all with `--threads` workers/threads, batch `--batch`, float16 output):
- monai: torch DataLoader + MONAI transforms on whole volumes (LoadImage, RandSpatialCrop, RandFlip x3),
  the usual way 3D MONAI pipelines are written; the baseline of the 3x target.
- mmap: plain torch DataLoader that memory-maps the `.npy` and slices the crop, no flips; the strong
  baseline of the 1x target.
- voxmix-torch: our torch backend (memory-mapped ROI + flips + jitter), the fallback without DALI.
- dali-cpu: our DALI backend, `device_id=None`, ROI reads + flips + intensity jitter (the jitter runs in
  torch on the target device: on a GPU it is free, on these 2 CPU cores it is a third of the work).
- dali-cpu-flips: the same without jitter: ROI reads + flips, the work of the issue's reference figures.
- dali-gpu (CUDA only): our DALI backend on the GPU (GDS reader where available).
MB/s counts the crop bytes delivered (float16). Volumes are 256^3 float16 `.npy` in a temporary folder;
one untimed pass first so that the page cache is hot, as in a long training run.

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--out FILE] [--threads 2] [--batch 4]
        [--gpu-batch 32] [--gpu-threads 8]      (the dali-gpu row, CUDA only)
Targets: dali-cpu-flips >= 3x monai and >= 1x mmap on 2 cores; dali-gpu >= 5,000 crops/s of 96^3 on one H200.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Recorder, default_out, print_table  # noqa: E402
from voxmix.formats.allocation import make_allocation  # noqa: E402
from voxmix.formats.manifest import VolumeRecord, read_manifest, write_manifest  # noqa: E402
from voxmix.trainer.data.loader import build_loader, dali_available  # noqa: E402
from voxmix.trainer.data.mixture import MixtureSampler  # noqa: E402


def make_volumes(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        rel = f"vol/v{i:03d}.npy"
        (root / "vol").mkdir(parents=True, exist_ok=True)
        # Smooth-ish content; the values do not matter for I/O, only the size and dtype.
        arr = rng.standard_normal((side, side, side), dtype=np.float32).astype(np.float16)
        np.save(root / rel, arr)
        recs.append(
            VolumeRecord(
                id=f"v{i:03d}",
                domain="ct" if i % 2 == 0 else "mri",
                modality="CT" if i % 2 == 0 else "MRI",
                path=rel,
                shape=(side, side, side),
                spacing=(1.0, 1.0, 1.0),
                source=rel,
                sha256="0" * 64,
                split="train",
            )
        )
    write_manifest(root / "manifest.jsonl", recs)


class _MmapCrops(torch.utils.data.Dataset):
    def __init__(self, files, side, crop, n):
        self.files, self.side, self.crop, self.n = files, side, crop, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        a = np.load(self.files[i % len(self.files)], mmap_mode="r")
        o = rng.integers(0, self.side - self.crop + 1, size=3)
        c = self.crop
        x = np.ascontiguousarray(a[o[0] : o[0] + c, o[1] : o[1] + c, o[2] : o[2] + c])
        return torch.from_numpy(x)[None]


def mmap_loader(files, side, crop, batch, threads, n):
    return torch.utils.data.DataLoader(
        _MmapCrops(files, side, crop, n), batch_size=batch, num_workers=threads, shuffle=True
    )


def monai_loader(files, crop, batch, threads, n):
    from monai.data import Dataset
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandFlipd,
        RandSpatialCropd,
        ToTensord,
    )

    t = Compose(
        [
            LoadImaged(keys="x", reader="NumpyReader", image_only=True),
            EnsureChannelFirstd(keys="x", channel_dim="no_channel"),
            RandSpatialCropd(keys="x", roi_size=(crop,) * 3, random_size=False),
            RandFlipd(keys="x", prob=0.5, spatial_axis=0),
            RandFlipd(keys="x", prob=0.5, spatial_axis=1),
            RandFlipd(keys="x", prob=0.5, spatial_axis=2),
            ToTensord(keys="x", track_meta=False),
        ]
    )
    data = [{"x": str(files[i % len(files)])} for i in range(n)]
    ds = Dataset(data, transform=t)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch, num_workers=threads, collate_fn=lambda b: torch.stack([d["x"] for d in b])
    )


NO_JITTER = {"CT": (0.0, 0.0), "MRI": (0.0, 0.0)}


def voxmix_loader(manifest, backend, crop, batch, threads, n, device, jitter=None):
    alloc = make_allocation({"ct": 0.5, "mri": 0.5}, n)
    s = MixtureSampler(alloc, manifest, seed=0)
    return build_loader(
        manifest,
        s,
        crop=crop,
        batch_size=batch,
        backend=backend,
        num_threads=threads,
        device=device,
        jitter=jitter,
    )


def timed(make, batches: int, device: str) -> float:
    """Seconds for `batches` batches after the first (worker start-up and pipeline build excluded)."""
    it = iter(make())
    first = next(it)
    t0 = time.perf_counter()
    got = 0
    for _ in it:
        got += 1
        if got == batches:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del first, it
    if got < batches:
        raise RuntimeError(f"loader stopped after {got} of {batches} batches")
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--out", default=default_out("loader"), help="JSON Lines file to append rows to ('' to skip)"
    )
    p.add_argument("--quick", action="store_true", help="fewer batches and crops (smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--volumes", type=int, default=8)
    p.add_argument("--gpu-batch", type=int, default=32, help="batch of the dali-gpu row (per-batch overhead)")
    p.add_argument("--gpu-threads", type=int, default=8, help="DALI threads of the dali-gpu row")
    p.add_argument("--dir", default=None, help="folder for the volumes (default: a temporary folder)")
    args = p.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    crops = [96] if args.quick else [96, 128]
    batches = 10 if args.quick else 40
    rec = Recorder(bench="loader", device=device, path=args.out or None)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    root = Path(tmp.name)
    t0 = time.perf_counter()
    make_volumes(root, args.volumes, args.side)
    print(
        f"wrote {args.volumes} volumes of {args.side}^3 float16 in {time.perf_counter() - t0:.1f}s to {root}"
    )
    manifest = read_manifest(root)
    files = [manifest.abspath(r) for r in manifest.records]
    for f in files:  # hot page cache
        np.load(f).sum()
    has_dali = dali_available()
    if not has_dali:  # e.g. on the lent H200, where DALI's 199 MB wheel cannot travel
        print("NVIDIA DALI is not installed: the dali-* rows are left out (pip install nvidia-dali-cuda120)")
    table = []
    for crop in crops:
        n = (batches + 2) * args.batch
        makers = {
            "monai": lambda crop=crop, n=n: monai_loader(files, crop, args.batch, args.threads, n),
            "mmap": lambda crop=crop, n=n: mmap_loader(files, args.side, crop, args.batch, args.threads, n),
            "voxmix-torch": lambda crop=crop, n=n: voxmix_loader(
                manifest, "torch", crop, args.batch, args.threads, n, "cpu"
            ),
            "dali-cpu": lambda crop=crop, n=n: voxmix_loader(
                manifest, "dali", crop, args.batch, args.threads, n, "cpu"
            ),
            # ROI reads + flips, no intensity jitter: the same work as the reference figures.
            "dali-cpu-flips": lambda crop=crop, n=n: voxmix_loader(
                manifest, "dali", crop, args.batch, args.threads, n, "cpu", jitter=NO_JITTER
            ),
        }
        if not has_dali:
            makers = {k: v for k, v in makers.items() if not k.startswith("dali")}
        setting = {name: (args.batch, args.threads) for name in makers}
        if device == "cuda" and has_dali:
            gb, gt = args.gpu_batch, args.gpu_threads
            makers["dali-gpu"] = lambda crop=crop, gb=gb, gt=gt: voxmix_loader(
                manifest, "dali", crop, gb, gt, (batches + 2) * gb, "cuda"
            )
            setting["dali-gpu"] = (gb, gt)
        rates = {}
        for name, make in makers.items():
            timed(make, 2, "cpu")  # warm-up run: imports, page cache
            dt = timed(make, batches, device if name == "dali-gpu" else "cpu")
            rates[name] = batches * setting[name][0] / dt
        crop_mb = crop**3 * 2 / 1e6
        for name, r in rates.items():
            config = {
                "side": args.side,
                "crop": crop,
                "batch": setting[name][0],
                "threads": setting[name][1],
                "volumes": args.volumes,
                "dtype": "float16",
            }
            rec.add(
                config=config,
                backend=name,
                mode="load",
                timing=None,
                crops_per_s=r,
                mb_per_s=r * crop_mb,
                vs_monai=r / rates["monai"],
                vs_mmap=r / rates["mmap"],
                # Other work on a shared machine skews absolute rates; the ratios are measured together.
                load_avg_1m=os.getloadavg()[0],
            )
            table.append([crop, name, r, r * crop_mb, r / rates["monai"], r / rates["mmap"]])
    print_table(["crop", "loader", "crops/s", "MB/s", "x monai", "x mmap"], table)
    rec.write()
    tmp.cleanup()


if __name__ == "__main__":
    main()
