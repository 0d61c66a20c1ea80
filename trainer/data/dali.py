"""The DALI backend: numpy reader with per-sample region-of-interest reads over the sampler's sequence.

The sampler decides every sample's file and crop; DALI executes it. Per chunk of this rank's sequence
the pipeline gets the file list in sequence order (`fn.readers.numpy(files=...)`, no shuffling) and,
through `fn.external_source`, each sample's ROI start, flips and domain id, drawn by
trainer/data/crops.py exactly as the torch backend draws them. Only the ROI is read from disk (`roi_start`/`roi_shape`, zero
padding where the crop leaves the volume). The intensity jitter is applied by the Loader on the target
device (trainer/data/crops.py says why).

Modes: `device_id=None` runs the whole pipeline on the CPU. On CUDA the reader is tried on the GPU
(GPUDirect Storage where the platform has it); if that pipeline cannot be built or run, the CPU reader
feeds `.gpu()` and the rest runs on the GPU, with a warning. Known DALI details: the CPU `fn.flip` rejects
float16 and needs a layout, so the crop is reinterpreted as int16 with a `CDHW` layout and flipped as
such: a flip only moves elements, and this avoids two float conversions per crop (on 2 cores, read +
cast + flip + cast ran at ~1/3 of the speed of read + flip).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from voxmix.formats.manifest import Manifest

from .mixture import MixtureSampler
from .torch_loader import SampleParams, rank_batches
from .volumes import check_volumes

# Samples per pipeline: one pipeline's `files` list. Large enough that rebuilding (tens of ms) is noise,
# small enough that the per-sample argument arrays stay a few MB on long budgets.
CHUNK_BATCHES = 4096
_GPU_READER_BROKEN = False
# Same-width integer type to flip stored arrays as (flips only move elements).
_FLIP_AS = {"float16": "INT16", "float32": "INT32"}


def _chunk_args(manifest: Manifest, sampler: MixtureSampler, params: SampleParams, batches: list[list[int]]):
    refs = [sampler.sample(i) for batch in batches for i in batch]
    p = params.batch(refs)
    return (
        [r.record.path for r in refs],
        p["start"],
        p["flip"],
        p["scale"],
        p["shift"],
        np.asarray([r.domain_id for r in refs], dtype=np.int64),
    )


def _slice_args(args, lo: int):
    return tuple(a[lo:] for a in args)


def _build_pipeline(
    root: str,
    args,
    *,
    crop: tuple[int, int, int],
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    gpu_reader: bool,
    stored: str,
):
    from nvidia.dali import fn, pipeline_def, types

    files, starts, flips, scale, shift, dom = args
    n_iter = len(files) // batch_size

    def feeder(column: np.ndarray):
        def source(info):
            # DALI calls this once per iteration, in order; the reader reads files in the same order.
            if info.iteration >= n_iter:
                raise StopIteration
            lo = info.iteration * batch_size
            return [column[k] for k in range(lo, lo + batch_size)]

        return source

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=2)
    def pipe():
        roi = fn.external_source(source=feeder(starts), batch=True, batch_info=True, dtype=types.INT32)
        fl = fn.external_source(source=feeder(flips), batch=True, batch_info=True, dtype=types.INT32)
        d = fn.external_source(source=feeder(dom), batch=True, batch_info=True, dtype=types.INT64)
        x = fn.readers.numpy(
            device="gpu" if gpu_reader else "cpu",
            file_root=root,
            files=files,
            roi_start=roi,
            roi_shape=list(crop),
            out_of_bounds_policy="pad",
            fill_value=0.0,
            random_shuffle=False,
            name="reader",
        )
        if device_id is not None and not gpu_reader:
            x = x.gpu()
        as_int = getattr(types, _FLIP_AS[stored])
        x = fn.reinterpret(x, dtype=as_int, shape=[1, *crop], layout="CDHW")
        x = fn.flip(x, depthwise=fl[0], vertical=fl[1], horizontal=fl[2])
        x = fn.reinterpret(x, dtype=getattr(types, stored.upper()))
        return x, d

    p = pipe()
    p.build()
    return p, n_iter


def _to_torch(tl, device: torch.device) -> torch.Tensor:
    from nvidia.dali.backend import TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = tl.as_tensor()
    dtype = to_torch_type[tensor.dtype]
    if isinstance(tl, TensorListGPU):
        out = torch.empty(tensor.shape(), dtype=dtype, device=device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tensor)).to(dtype)


def dali_batches(
    manifest: Manifest,
    sampler: MixtureSampler,
    params: SampleParams,
    *,
    start: int,
    batch_size: int,
    num_threads: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    global _GPU_READER_BROKEN
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    else:
        device_id = None
    batches = rank_batches(sampler, start, batch_size)
    stored_types = {r.dtype for vols in sampler.volumes.values() for r in vols}
    if len(stored_types) > 1:
        raise ValueError(
            f"{manifest.root}: the DALI backend needs one stored dtype, found {sorted(stored_types)}"
        )
    stored = stored_types.pop() if stored_types else "float16"
    root = str(manifest.root)
    while chunk := list(itertools.islice(batches, CHUNK_BATCHES)):
        args = _chunk_args(manifest, sampler, params, chunk)
        kw = dict(crop=params.crop, batch_size=batch_size, num_threads=num_threads, device_id=device_id)
        kw["stored"] = stored
        jit = torch.from_numpy(np.stack([args[3], args[4]], axis=1))
        it = 0
        n_iter = len(args[0]) // batch_size
        while it < n_iter:
            use_gds = device_id is not None and not _GPU_READER_BROKEN
            rest = _slice_args(args, it * batch_size)
            try:
                pipe, _ = _build_pipeline(root, rest, gpu_reader=use_gds, **kw)
                for k in range(it, n_iter):
                    x_tl, d_tl = pipe.run()
                    x = _to_torch(x_tl, device)
                    d = _to_torch(d_tl, torch.device("cpu")).to(torch.int64)
                    it = k + 1
                    yield x, d, jit[k * batch_size : (k + 1) * batch_size]
            except Exception as exc:
                if not use_gds:
                    # A file changed since build_loader checked it: name it rather than show DALI's trace.
                    recs = [sampler.sample(i).record for batch in chunk for i in batch]
                    check_volumes(manifest, recs)
                    raise
                # GDS/cuFile missing, unsupported filesystem or ROI: continue this chunk from the first
                # batch not yet returned with the CPU reader (then .gpu()); later chunks too.
                _GPU_READER_BROKEN = True
                warnings.warn(
                    f"DALI GPU numpy reader unavailable ({type(exc).__name__}: {exc}); "
                    "reading on the CPU and copying crops to the GPU",
                    stacklevel=2,
                )
