"""The DALI backend (real CPU pipelines, `device_id=None`) against the torch backend and the reference."""

import numpy as np
import pytest
import torch

from tests.trainer.data.data_helpers import write_volumes
from voxmix.formats.allocation import make_allocation
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data import dali as dali_mod
from voxmix.trainer.data.crops import crop_ref
from voxmix.trainer.data.loader import build_loader
from voxmix.trainer.data.mixture import MixtureSampler

pytest.importorskip("nvidia.dali", reason="DALI backend tests need nvidia-dali (the torch backend is tested)")

CROP = (8, 6, 7)
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vols")
    write_volumes(
        root,
        {
            "ct": [(11, 9, 13), (8, 6, 7), (5, 17, 3), (16, 16, 16)],
            "mri": [(9, 10, 11), (13, 5, 9), (7, 7, 7)],
        },
        val=1,
    )
    return read_manifest(root)


def _run(dataset, backend, *, dtype=torch.float16, world_size=1, rank=0, batch=4, state=None, total=23, **kw):
    alloc = make_allocation({"ct": 0.6, "mri": 0.4}, total)
    s = MixtureSampler(alloc, dataset, seed=5, rank=rank, world_size=world_size)
    ld = build_loader(
        dataset, s, crop=CROP, batch_size=batch, backend=backend, dtype=dtype, num_threads=2, **kw
    )
    if state:
        ld.load_state_dict(state)
    return ld


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dali_cpu_equals_torch_backend_and_reference(dataset, dtype):
    dl = _run(dataset, "dali", dtype=dtype)
    tl = _run(dataset, "torch", dtype=dtype)
    assert dl.backend == "dali"
    got = list(dl)
    want = list(tl)
    assert len(got) == len(want) == 5 and dl.state_dict()["position"] == 20
    for b, ((x, d), (y, e)) in enumerate(zip(got, want)):
        assert x.shape == (4, 1, *CROP) and x.dtype == dtype and x.device.type == "cpu"
        assert torch.equal(d, e) and d.dtype == torch.int64
        assert torch.equal(x, y), f"batch {b}: max diff {(x.float() - y.float()).abs().max()}"
        for k in range(4):
            ref = dl.sampler.sample(4 * b + k)
            p = dl.params(ref)
            want_k = crop_ref(np.load(dataset.abspath(ref.record)), p, CROP)
            np.testing.assert_allclose(x[k, 0].float().numpy(), want_k, rtol=1e-2, atol=1e-2)


def test_dali_chunks_resume_and_sharding(dataset, monkeypatch):
    # Pipelines rebuilt every 2 batches: chunk boundaries must not shift the sequence.
    monkeypatch.setattr(dali_mod, "CHUNK_BATCHES", 2)
    full = torch.cat([x for x, _ in _run(dataset, "dali", total=40)])
    assert full.shape[0] == 40
    first = _run(dataset, "dali", total=40)
    it = iter(first)
    head = [next(it)[0] for _ in range(3)]
    state = first.state_dict()
    assert state["position"] == 12  # prefetched batches are not counted as consumed
    ranks = [
        list(_run(dataset, "dali", world_size=2, rank=r, batch=2, state=state, total=40)) for r in range(2)
    ]
    tail = []
    for (x0, _), (x1, _) in zip(*ranks):
        tail.append(torch.stack([x0[0], x1[0], x0[1], x1[1]]))
    assert torch.equal(torch.cat(head + tail), full)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_dali_gpu_equals_cpu(dataset):
    """GPU twin of test_dali_cpu_equals_torch_backend_and_reference."""
    g = list(_run(dataset, "dali", device="cuda"))
    c = list(_run(dataset, "dali"))
    for (x, d), (y, e) in zip(g, c):
        assert x.device.type == "cuda" and d.device.type == "cuda"
        assert torch.equal(d.cpu(), e)
        # The jitter's multiply-add may be fused on the GPU: equal up to one fp16 rounding.
        torch.testing.assert_close(x.cpu().float(), y.float(), rtol=1e-3, atol=1e-3)
