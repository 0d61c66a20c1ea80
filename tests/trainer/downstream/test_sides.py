"""The side task (equal-intensity classes told apart by context) and the every-layer readout, against loops
and MONAI's own forward."""

from __future__ import annotations

import numpy as np
import torch

from tests.trainer.downstream.downstream_helpers import make_encoder
from voxmix.formats.encoder import read_encoder
from voxmix.trainer.data.phantoms import KIDNEY, LIVER, generate
from voxmix.trainer.downstream import probes, sides
from voxmix.trainer.downstream.data import Case
from voxmix.trainer.downstream.models import build_vit


def _loop_sides(lab, x0, half, low, organ, p, min_voxels):
    """Per-patch loop reference of sides.token_sides (tokens in D-slowest order)."""
    g = [s // p for s in lab.shape]
    out = []
    for i in range(g[0]):
        for j in range(g[1]):
            for k in range(g[2]):
                n = a = 0
                for u in range(p):
                    for v in range(p):
                        for w in range(p):
                            if lab[i * p + u, j * p + v, k * p + w] == organ:
                                n += 1
                                a += ((x0 + i * p + u) < half) == low
                out.append(sides.IGNORE if n < min_voxels else int(2 * a > n))
    return np.array(out)


def test_token_sides_match_a_loop_on_a_phantom():
    _, lab, _ = generate("ct_abdomen", 3, size=48, seed=0)
    low = sides.anchor_low(lab, LIVER)
    # The generator puts the liver at negative x (patient's right), i.e. the low half of axis 0.
    assert low is True
    for x0, crop in ((0, lab[:32, 8:40, 4:36]), (16, lab[16:48, 0:32, 16:48]), (8, lab[8:40, 8:40, 8:40])):
        got = sides.token_sides(crop, x0, 24.0, low, KIDNEY, 8, min_voxels=4)
        ref = _loop_sides(crop, x0, 24.0, low, KIDNEY, 8, 4)
        np.testing.assert_array_equal(got, ref)
    # Both kidneys appear in the full volume's tokens with both labels.
    t = sides.token_sides(lab, 0, 24.0, low, KIDNEY, 8, min_voxels=1)
    assert {0, 1} <= set(t.tolist())


def test_anchor_low_and_mirrored_token_order():
    lab = np.zeros((16, 8, 8), np.int8)
    lab[12:, :, :] = LIVER
    assert sides.anchor_low(lab, LIVER) is False and sides.anchor_low(lab, KIDNEY) is None
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 5, size=(32, 32, 32))
    # Mirroring a crop's tokens = the tokens of the mirrored crop (token labels as the reference).
    np.testing.assert_array_equal(
        sides.mirror_tokens(probes.token_labels(crop[None], 8, 5)[0], (4, 4, 4)),
        probes.token_labels(crop[::-1][None].copy(), 8, 5)[0],
    )


def test_side_crops_mirror_image_and_labels_together():
    cases = []
    for i in range(3):
        img, lab, _ = generate("ct_abdomen", i, size=48, seed=0)
        cases.append(Case(id=f"v{i}", split="train", image=img.astype(np.float32), label=lab, classes={}))
    x, y = sides.side_crops(cases, "ct_abdomen", 32, 6, 8, np.random.default_rng(1))
    assert x.shape == (18, 1, 32, 32, 32) and y.shape == (18, 64)
    # Replay the same stream: each crop is the plain crop or its mirror, with the labels to match.
    rng, flips = np.random.default_rng(1), 0
    for c_i, c in enumerate(cases):
        low = sides.anchor_low(c.label, LIVER)
        for n, s in enumerate(probes.crop_starts(c.image.shape, 32, 6, rng)):
            sl = tuple(slice(a, a + 32) for a in s)
            t = sides.token_sides(c.label[sl], s[0], 24.0, low, KIDNEY, 8)
            flip = rng.random() < 0.5
            flips += flip
            k = c_i * 6 + n
            np.testing.assert_array_equal(x[k, 0], c.image[sl][::-1] if flip else c.image[sl])
            np.testing.assert_array_equal(y[k], sides.mirror_tokens(t, (4, 4, 4)) if flip else t)
    assert 0 < flips < 18
    assert sides.side_crops(cases, "mri_brain", 32, 2, 8, np.random.default_rng(0)) is None
    assert sides.usable(np.array([0] * 20 + [1] * 20), np.array([0] * 20 + [1] * 20))
    assert not sides.usable(np.array([0] * 20 + [1] * 19), np.array([0] * 20 + [1] * 20))


def test_every_layer_tokens_match_monai_forward(tmp_path):
    vit = build_vit(read_encoder(make_encoder(tmp_path / "e.pt", seed=3)))
    x = np.random.default_rng(0).normal(size=(3, 1, 32, 32, 32)).astype(np.float32)
    final, every = probes.encoder_tokens(vit, x, torch.device("cpu"), batch=2, layers=True)
    with torch.no_grad():
        ref, hidden = vit(torch.from_numpy(x))
        emb = vit.patch_embedding(torch.from_numpy(x))
    np.testing.assert_allclose(final, ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(every, torch.cat([emb, *hidden], -1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(probes.encoder_tokens(vit, x, torch.device("cpu")), final)
