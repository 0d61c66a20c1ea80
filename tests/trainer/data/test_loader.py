"""The loader contract on the torch backend (DALI is checked against the same references in test_dali.py)."""

import numpy as np
import pytest
import torch

from tests.trainer.data.data_helpers import write_volumes
from voxmix.formats.allocation import make_allocation
from voxmix.formats.manifest import read_manifest
from voxmix.trainer.data.crops import crop_params, crop_ref
from voxmix.trainer.data.loader import build_eval_set, build_loader
from voxmix.trainer.data.mixture import MixtureSampler

CROP = (8, 6, 7)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vols")
    # Shapes that hurt: smaller than the crop on some axes, exactly the crop, primes.
    write_volumes(
        root,
        {
            "ct": [(11, 9, 13), (8, 6, 7), (5, 17, 3), (16, 16, 16)],
            "mri": [(9, 10, 11), (13, 5, 9), (7, 7, 7)],
        },
        val=1,
    )
    return read_manifest(root)


def expected_batch(manifest, sampler, loader, indices):
    """Independent of the loader's read path: whole volume in RAM, pad, slice, flip, jitter."""
    xs, ds = [], []
    for i in indices:
        ref = sampler.sample(i)
        p = loader.params(ref)
        vol = np.load(manifest.abspath(ref.record))
        xs.append(crop_ref(vol, p, CROP)[None])
        ds.append(ref.domain_id)
    return np.stack(xs), np.array(ds)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_torch_loader_batches_match_reference(dataset, num_threads):
    alloc = make_allocation({"ct": 0.6, "mri": 0.4}, 23)
    sampler = MixtureSampler(alloc, dataset, seed=5)
    loader = build_loader(dataset, sampler, crop=CROP, batch_size=4, backend="torch", num_threads=num_threads)
    assert len(loader) == 5
    batches = list(loader)
    assert len(batches) == 5 and loader.state_dict()["position"] == 20
    flips = set()
    for b, (x, d) in enumerate(batches):
        assert x.shape == (4, 1, *CROP) and x.dtype == torch.float16 and d.dtype == torch.int64
        want_x, want_d = expected_batch(dataset, sampler, loader, range(4 * b, 4 * b + 4))
        np.testing.assert_array_equal(d.numpy(), want_d)
        # fp16 output of an fp32 computation: one rounding.
        np.testing.assert_allclose(x.float().numpy(), want_x, rtol=1e-3, atol=1e-3)
        flips |= {loader.params(sampler.sample(i)).flip for i in range(4 * b, 4 * b + 4)}
    assert len(flips) > 2  # the augmentation is exercised, not a no-op


def test_crop_params_cover_volume_and_pad():
    shape, crop = (10, 4, 6), (6, 6, 6)
    starts = np.array([crop_params(shape, crop, s).start for s in range(400)])
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 4
    assert starts[:, 1].min() == -2 and starts[:, 1].max() == 0  # smaller than the crop: padded
    assert (starts[:, 2] == 0).all()
    vol = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1
    p = crop_params(shape, crop, 1, augment=False)
    out = crop_ref(vol, p, crop)
    assert out.shape == crop and (out > 0).sum() == 6 * 4 * 6  # every voxel of the overlap, zeros elsewhere


def test_resume_and_world_sizes_consume_same_sequence(dataset):
    alloc = make_allocation({"ct": 0.5, "mri": 0.5}, 24)

    def run(world_size, batch, start_state=None, take=None):
        out = []
        state = None
        for r in range(world_size):
            s = MixtureSampler(alloc, dataset, seed=2, rank=r, world_size=world_size)
            ld = build_loader(dataset, s, crop=CROP, batch_size=batch, backend="torch", num_threads=1)
            if start_state:
                ld.load_state_dict(start_state)
            it = iter(ld)
            got = [next(it) for _ in range(take)] if take else list(it)
            out.append(got)
            state = ld.state_dict()
        return out, state

    (full,), _ = run(1, 4)
    full_x = torch.cat([x for x, _ in full])
    # Two steps on one rank, then the rest on two ranks with batch 2: same global sequence.
    (first,), state = run(1, 4, take=2)
    assert state["position"] == 8
    rest, _ = run(2, 2, start_state=state)
    got = [x for x, _ in first]
    for (x0, _), (x1, _) in zip(rest[0], rest[1]):
        # rank r takes positions s + r + 2k: interleave back into global order.
        got.append(torch.stack([x0[0], x1[0], x0[1], x1[1]]))
    assert torch.equal(torch.cat(got), full_x)


def test_eval_set_is_fixed_and_from_validation(dataset):
    ev = build_eval_set(dataset, ["ct", "mri"], crops_per_domain=3, crop=CROP, seed=7)
    again = build_eval_set(dataset, ["mri", "ct"], crops_per_domain=3, crop=CROP, seed=7)
    assert set(ev) == {"ct", "mri"} and ev["ct"].shape == (3, 1, *CROP) and ev["ct"].dtype == torch.float32
    assert torch.equal(ev["ct"], again["ct"]) and torch.equal(ev["mri"], again["mri"])
    (val,) = dataset.select("ct", "val")
    vol = np.load(dataset.abspath(val)).astype(np.float32)
    # Every eval crop is a window of the single validation volume (padded with zeros).
    for i in range(3):
        crop = ev["ct"][i, 0].numpy()
        found = any(
            np.array_equal(crop, crop_ref(vol, crop_params(vol.shape, CROP, s, augment=False), CROP))
            for s in range(2000)
        )
        assert found
    with pytest.raises(ValueError, match="domain 'pet' has no 'val' volumes"):
        build_eval_set(dataset, ["pet"], crops_per_domain=1, crop=CROP, seed=0)


def test_bad_loader_arguments(dataset):
    s = MixtureSampler(make_allocation({"ct": 1.0}, 4), dataset, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(dataset, s, crop=CROP, batch_size=0)
    with pytest.raises(ValueError, match="crop"):
        build_loader(dataset, s, crop=(8, 8), batch_size=1)
    with pytest.raises(ValueError, match="backend"):
        build_loader(dataset, s, crop=CROP, batch_size=1, backend="jax")


def test_batch_params_equal_single_and_are_well_spread():
    from voxmix.trainer.data.crops import crop_params_batch

    shapes = np.array([[10, 4, 6]] * 4000)
    seeds = np.arange(4000, dtype=np.uint64) * np.uint64(7919)
    jit = np.tile([0.1, 0.05], (4000, 1))
    p = crop_params_batch(shapes, (6, 6, 6), seeds, augment=True, jitter=jit)
    for i in (0, 1, 17, 3999):
        one = crop_params((10, 4, 6), (6, 6, 6), int(seeds[i]), jitter=(0.1, 0.05))
        assert one.start == tuple(p["start"][i]) and one.flip == tuple(bool(b) for b in p["flip"][i])
        assert one.scale == pytest.approx(float(p["scale"][i])) and one.shift == pytest.approx(
            float(p["shift"][i])
        )
    # Offsets uniform over the 5 valid positions of axis 0, flips fair, jitter inside its bounds.
    counts = np.bincount(p["start"][:, 0], minlength=5)
    assert counts.min() > 650 and counts.max() < 950
    assert np.abs(p["flip"].mean(axis=0) - 0.5).max() < 0.04
    assert 0.9 <= p["scale"].min() and p["scale"].max() <= 1.1 and np.abs(p["shift"]).max() <= 0.05
    assert p["scale"].std() > 0.05  # spread over the range, not constant


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_loader_on_cuda_matches_cpu(dataset):
    """GPU twin of test_torch_loader_batches_match_reference: pinned host batches, jitter on the GPU."""
    alloc = make_allocation({"ct": 0.6, "mri": 0.4}, 23)
    out = {}
    for dev in ("cpu", "cuda"):
        s = MixtureSampler(alloc, dataset, seed=5)
        ld = build_loader(
            dataset, s, crop=CROP, batch_size=4, backend="torch", device=dev, dtype=torch.bfloat16
        )
        out[dev] = list(ld)
    for (x, d), (y, e) in zip(out["cuda"], out["cpu"]):
        assert x.is_cuda and d.is_cuda and x.dtype == torch.bfloat16
        assert torch.equal(d.cpu(), e)
        torch.testing.assert_close(x.cpu().float(), y.float(), rtol=1e-2, atol=1e-2)
