"""Training-step benchmark: voxmix MAE (kernels) vs its --reference path vs MONAI's MaskedAutoEncoderViT.

One step = forward + backward + AdamW step on a synthetic batch, all three models in the same run and the
same configuration; the ratio to MONAI (the outside baseline) and to the reference path are printed.
Optionally (`--data`) the real loader (DALI where available) feeds the voxmix model from a phantom
dataset, to measure the data-wait fraction of the step.

CPU default: `tiny` and the MONAI reference-point configuration (64^3 crops, 8^3 patches, hidden 192,
6 layers, 3 heads, decoder 96 x 2, batch 4). GPU default: `base` (ViT-B, 96^3 crops, 16^3 patches,
bf16) and `large`. MFU = train_flops_per_sample (trainer/model.py, the formula is written there) x
samples/s / peak dense TFLOP/s of the device (trainer/metrics.py); unknown peak on CPU -> no MFU.

Targets (one H200, base, bf16): MFU >= 40%, >= 1.3x the reference path, data wait < 5% of step time,
faster than MONAI on CPU and GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Recorder, Timing, default_out, measure, print_table  # noqa: E402
from voxmix.trainer.pretrain.config import ModelConfig  # noqa: E402
from voxmix.trainer.pretrain.metrics import peak_tflops  # noqa: E402
from voxmix.trainer.pretrain.model import MAE3D, train_flops_per_sample  # noqa: E402

# (name, ModelConfig kwargs, batch per device)
CPU_CASES = [
    ("tiny", dict(size="tiny"), 8),
    ("monai-ref", dict(size="tiny", crop=64, patch=8, width=192, depth=6, heads=3, dec_width=96, dec_depth=2,
                       dec_heads=3), 4),
]  # fmt: skip
GPU_CASES = [("base", dict(size="base"), 32), ("large", dict(size="large"), 16)]


def monai_mae(cfg: ModelConfig):
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(
        in_channels=cfg.in_chans, img_size=cfg.crop, patch_size=cfg.patch, hidden_size=cfg.width,
        mlp_dim=int(cfg.width * cfg.mlp_ratio), num_layers=cfg.depth, num_heads=cfg.heads,
        masking_ratio=cfg.mask_ratio, decoder_hidden_size=cfg.dec_width,
        decoder_mlp_dim=int(cfg.dec_width * cfg.mlp_ratio), decoder_num_layers=cfg.dec_depth,
        decoder_num_heads=cfg.dec_heads, spatial_dims=3, qkv_bias=True,
    )  # fmt: skip


def monai_loss(model, x, cfg: ModelConfig):
    """MONAI's MAE forward and the usual normalized-pixel loss on the masked patches (plain PyTorch)."""
    from voxmix.kernels.patchify import patchify_ref

    pred, mask = model(x)
    t = patchify_ref(x, (cfg.patch,) * 3).float()
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred.float() - t) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def make_step(model, loss_fn, x):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=x.is_cuda or None)

    def step():
        loss = loss_fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def measure_all(steps: dict, device: str, rounds: int = 7, per_round: int = 3) -> dict[str, Timing]:
    """Time each step function. CUDA: the harness (do_bench) one after the other, with peak memory.

    CPU: interleaved rounds (a, b, c, a, b, c, ...) so a neighbour's burst on a shared 2-core machine
    hits all backends alike; the lowest round median per backend is reported (the harness's rule).
    """
    if device == "cuda":
        out = {}
        for k, fn in steps.items():
            torch.cuda.reset_peak_memory_stats()
            out[k] = measure(fn, device=device)
            out[k].peak_bytes = torch.cuda.max_memory_allocated()
        return out
    for fn in steps.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[list[float]]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            r = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                r.append((time.perf_counter() - t0) * 1e3)
            times[k].append(r)
    out = {}
    for k, rs in times.items():
        flat = sorted(v for r in rs for v in r)
        q = statistics.quantiles(flat, n=10)
        out[k] = Timing(ms=min(statistics.median(r) for r in rs), ms_p20=q[1], ms_p80=q[7], reps=len(flat))
    return out


def data_wait(cfg: ModelConfig, batch: int, device: str, dtype, steps: int) -> dict:
    """Data-wait fraction of real training steps fed by the real loader from a phantom dataset."""
    from tests.trainer.pretrain.trainer_helpers import make_dataset, write_allocation
    from voxmix.formats.allocation import read_allocation
    from voxmix.formats.manifest import read_manifest
    from voxmix.trainer.data.loader import build_loader
    from voxmix.trainer.data.mixture import MixtureSampler

    with tempfile.TemporaryDirectory() as tmp:
        edge = cfg.crop + cfg.crop // 2
        man = make_dataset(Path(tmp), train=8, val=1, shape=(edge,) * 3)
        n = batch * (steps + 5)
        alloc = write_allocation(Path(tmp) / "a.json", {"ct_abdomen": n // 2, "mri_brain": n - n // 2})
        manifest = read_manifest(man)
        sampler = MixtureSampler(read_allocation(alloc), manifest, seed=0)
        loader = build_loader(
            manifest,
            sampler,
            crop=cfg.crop,
            batch_size=batch,
            device=device,
            dtype=dtype,
            num_threads=os.cpu_count() or 2,
        )
        model = MAE3D(cfg).to(device=device, dtype=dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        waits, total, it = 0.0, 0.0, iter(loader)
        for i in range(steps + 5):
            t0 = time.perf_counter()
            x, _ = next(it)
            t1 = time.perf_counter()
            loss = model(x)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()  # CPU-GPU sync: the step ends when the device is done
            if i >= 5:  # after the loader's and the model's warm-up
                waits += t1 - t0
                total += time.perf_counter() - t0
        return {"data_wait_frac": waits / total, "loader": loader.backend}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all for the device)")
    ap.add_argument(
        "--out", default=default_out("train"), help="JSON Lines file to append rows to ('' to skip)"
    )
    ap.add_argument(
        "--data", action="store_true", help="also measure the data-wait fraction with the real loader"
    )
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    prec = "bf16" if dtype == torch.bfloat16 else "fp32"
    cases = GPU_CASES if device == "cuda" else CPU_CASES
    if args.cases:
        cases = [c for c in cases if c[0] in args.cases.split(",")]
    rec = Recorder(bench="train", device=device, path=args.out or None)
    peak = peak_tflops(torch.device(device), prec, None)
    table = []
    for name, kw, batch in cases:
        torch.manual_seed(0)
        cfg = ModelConfig(**kw)
        x = torch.randn(batch, cfg.in_chans, cfg.crop, cfg.crop, cfg.crop, device=device, dtype=dtype)
        flops = train_flops_per_sample(cfg)
        results = {}
        steps = {}
        # MONAI's 3D sin-cos position embedding needs a width divisible by 6 (base 768 is, large 1024
        # is not): without it there is no MONAI baseline to time, and the row says so.
        backends = ("voxmix", "reference", "monai") if cfg.width % 6 == 0 else ("voxmix", "reference")
        if "monai" not in backends:
            print(
                f"{name}: no MONAI baseline (MaskedAutoEncoderViT needs a width divisible by 6, got {cfg.width})"
            )
        for backend in backends:
            if backend == "monai":
                model = monai_mae(cfg).to(device=device, dtype=dtype)
                steps[backend] = make_step(model, lambda m, x, c=cfg: monai_loss(m, x, c), x)
            else:
                c = ModelConfig(**{**kw, "reference": backend == "reference"})
                model = MAE3D(c).to(device=device, dtype=dtype)
                steps[backend] = make_step(model, lambda m, x: m(x)[0], x)
        timings = measure_all(steps, device)
        for backend, t in timings.items():
            sps = batch / (t.ms * 1e-3)
            tf = flops * sps / 1e12
            results[backend] = t.ms
            extra = {"steps_per_s": 1e3 / t.ms, "samples_per_s": sps, "voxels_per_s": sps * cfg.crop**3,
                     "tflops": tf, "mfu": tf / peak if peak else None,
                     "peak_memory_bytes": t.peak_bytes}  # fmt: skip
            rec.add(
                config={"case": name, **kw, "batch": batch, "dtype": prec},
                backend=backend,
                mode="train_step",
                timing=t,
                **extra,
            )
            table.append([name, backend, t.ms, extra["samples_per_s"], tf, extra["mfu"] or float("nan")])
        del steps, model
        vs_ref = results["reference"] / results["voxmix"]
        vs_monai = results["monai"] / results["voxmix"] if "monai" in results else None
        rec.add(
            config={"case": name, **kw, "batch": batch, "dtype": prec},
            backend="voxmix",
            mode="ratios",
            timing=None,
            speedup_vs_reference=vs_ref,
            speedup_vs_monai=vs_monai,
        )
        monai_txt = f"{vs_monai:.2f}x MONAI MaskedAutoEncoderViT" if vs_monai else "no MONAI baseline"
        print(f"{name}: voxmix {vs_ref:.2f}x the reference path, {monai_txt}")
        if args.data:
            dw = data_wait(ModelConfig(**kw), batch, device, dtype, steps=20)
            rec.add(
                config={"case": name, **kw, "batch": batch},
                backend="voxmix",
                mode="data_wait",
                timing=None,
                **dw,
            )
            print(f"{name}: data wait {100 * dw['data_wait_frac']:.1f}% of step time ({dw['loader']} loader)")
    print_table(["case", "backend", "ms/step", "samples/s", "TFLOP/s", "MFU"], table)
    rec.write()


if __name__ == "__main__":
    main()
