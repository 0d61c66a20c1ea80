"""The side task: a token-level context task whose two classes have the same intensity by construction.

Paired organs are rendered with one intensity table by the phantom generator (both kidneys; both lungs), so
a token inside either one looks the same to a patch's own intensity statistics. What tells them apart is
context: whether the organ lies on the side of an asymmetric anchor (the liver, patient's right; the
heart, left). Each crop is mirrored along axis 0 with probability 1/2, so neither the absolute position
nor the position in the crop carries the label; only the layout around the token does.

- Tokens: patches holding >= `min_voxels` voxels of the paired organ. Label 1: most of those voxels lie
  in the half of the volume (along axis 0) that holds most of the anchor's voxels; 0 otherwise.
- Probe: the token probe (probes.softmax_probe, two classes), balanced accuracy on the test volumes.
- The intensity baseline reads the same tokens' patch statistics. It is near chance except where the
  anchor's own voxels fall into an organ's patch (liver beside the right kidney, heart in the left lung):
  reported beside the encoders, as for every task.
Defined before the round that uses it was run (docs/downstream.md, "Round 2").
"""

from __future__ import annotations

import numpy as np

from voxmix.trainer.data.phantoms import HEART, KIDNEY, LIVER, LUNG

from .data import Case, _pad_to
from .probes import crop_starts, patches

# domain -> (paired organ, anchor organ)
PAIRS = {"ct_abdomen": (KIDNEY, LIVER), "ct_abdomen_twin": (KIDNEY, LIVER), "mri_abdomen": (KIDNEY, LIVER),
         "pet_wholebody": (KIDNEY, LIVER), "ct_chest": (LUNG, HEART)}  # fmt: skip
MIN_VOXELS = 32
"""An organ token holds at least 1/16 of an 8^3 patch of the organ."""
MIN_TOKENS = 20
"""The task runs in a split only when each class has this many tokens in the training and the test half."""
IGNORE = -1


def anchor_low(label: np.ndarray, anchor: int) -> bool | None:
    """Whether most voxels of `anchor` lie in the low half of axis 0 (None: no anchor voxels)."""
    x = np.nonzero(label == anchor)[0]
    if len(x) == 0:
        return None
    return bool((x < label.shape[0] / 2).mean() > 0.5)


def token_sides(lab_crop: np.ndarray, x0: int, half: float, low: bool, organ: int, p: int,
                min_voxels: int = MIN_VOXELS) -> np.ndarray:  # fmt: skip
    """(D, H, W) label crop starting at axis-0 coordinate `x0` of a volume whose axis-0 midpoint is `half`
    -> (T,) token labels: 1 anchor side, 0 other side, IGNORE for tokens with too few organ voxels."""
    organ_v = lab_crop == organ
    x = x0 + np.arange(lab_crop.shape[0])[:, None, None]
    on_anchor = organ_v & ((x < half) == low)
    n = patches(organ_v[None].astype(np.int64), p)[0].sum(-1)
    a = patches(on_anchor[None].astype(np.int64), p)[0].sum(-1)
    return np.where(n >= min_voxels, (2 * a > n).astype(np.int64), IGNORE)


def mirror_tokens(t: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """(T,) per-token values of a crop -> those of the crop mirrored along axis 0 (D is slowest)."""
    return t.reshape(grid)[::-1].reshape(-1)


def side_crops(cases: list[Case], domain: str, size: int, n: int, p: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """(images (V*n, 1, size^3), token labels (V*n, T)) of `n` uniform crops per volume, each mirrored
    along axis 0 with probability 1/2; None when the domain has no side task."""
    if domain not in PAIRS:
        return None
    organ, anchor = PAIRS[domain]
    g = (size // p,) * 3
    xs, ys = [], []
    for c in cases:
        img, lab = _pad_to(c.image, size), _pad_to(c.label, size)
        low = anchor_low(lab, anchor)
        for s in crop_starts(c.image.shape, size, n, rng):
            sl = tuple(slice(a, a + size) for a in s)
            ic, lc = img[sl], lab[sl]
            if low is None:  # no anchor in this volume: no side to tell
                t = np.full(g[0] * g[1] * g[2], IGNORE)
            else:
                t = token_sides(lc, s[0], lab.shape[0] / 2, low, organ, p)
            if rng.random() < 0.5:
                ic, t = ic[::-1], mirror_tokens(t, g)
            xs.append(np.ascontiguousarray(ic))
            ys.append(t)
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys)


def usable(y_tr: np.ndarray, y_te: np.ndarray, min_tokens: int = MIN_TOKENS) -> bool:
    return all(int((y == k).sum()) >= min_tokens for y in (y_tr, y_te) for k in (0, 1))
