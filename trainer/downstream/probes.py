"""Representation probes that read a frozen encoder directly (the standard MAE diagnostics).

- **Token probe**: every token of a crop gets the anatomy label most of its patch's voxels carry (dense
  labels at token resolution); a multinomial logistic regression on the frozen final tokens, trained on
  the tokens of some volumes and scored on others by balanced accuracy (mean recall over the classes
  present in the test tokens).
- **kNN retrieval**: each test token's k nearest training tokens by cosine similarity; precision@k is the
  share of retrieved tokens of the query's structure, averaged per class, then over classes.
- **Intensity baseline**: the same two probes on seven statistics of the token's own patch voxels (mean,
  sd, min, max, 10/50/90th percentiles). A structure this baseline finds is defined by its intensity; an
  encoder has to beat it to show that it uses context.

A decoder (UNETR) can learn around a weak encoder; these probes cannot, so they are the protocol's
primary measurements (docs/downstream.md, "The evaluation protocol").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import Case, _pad_to

# Patch statistics of the intensity baseline, in column order.
PATCH_STATS = ("mean", "sd", "min", "max", "p10", "p50", "p90")


def crop_starts(shape, size: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """`n` uniform crop corners of edge `size` in a volume of `shape` (padded to >= size first)."""
    return [tuple(int(rng.integers(0, max(s, size) - size + 1)) for s in shape) for _ in range(n)]


def crops(cases: list[Case], size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(images (V*n, 1, size^3) float32, label crops (V*n, size^3) uint8): `n` uniform crops per volume.

    Uniform random offsets, not the whole volume resized: a token's position in the crop then says little
    about its anatomy, so a probe cannot read the structure off the position embedding alone."""
    xs, ys = [], []
    for c in cases:
        img, lab = _pad_to(c.image, size), _pad_to(c.label, size)
        for s in crop_starts(c.image.shape, size, n, rng):
            sl = tuple(slice(a, a + size) for a in s)
            xs.append(img[sl])
            ys.append(lab[sl])
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys)


def patches(a: np.ndarray, p: int) -> np.ndarray:
    """(N, D, H, W) -> (N, T, p^3) with tokens in the order of MONAI's patch embedding (a stride-p conv
    flattened over (D, H, W), D slowest)."""
    n, d, h, w = a.shape
    g = (d // p, h // p, w // p)
    t = a.reshape(n, g[0], p, g[1], p, g[2], p).transpose(0, 1, 3, 5, 2, 4, 6)
    return t.reshape(n, g[0] * g[1] * g[2], p**3)


def token_labels(labels: np.ndarray, p: int, num_classes: int) -> np.ndarray:
    """(N, D, H, W) integer label crops -> (N, T): each patch's most frequent label (ties: the lowest)."""
    pt = patches(labels.astype(np.int64), p)
    counts = np.stack([(pt == k).sum(-1) for k in range(num_classes)], axis=-1)
    return counts.argmax(-1)  # argmax returns the first maximum: ties go to the lowest label


def patch_stats(images: np.ndarray, p: int) -> np.ndarray:
    """(N, 1, D, H, W) -> (N, T, 7): PATCH_STATS of every patch's voxels."""
    pt = patches(images[:, 0], p).astype(np.float64)
    q = np.percentile(pt, [10, 50, 90], axis=-1)
    return np.stack([pt.mean(-1), pt.std(-1), pt.min(-1), pt.max(-1), q[0], q[1], q[2]], axis=-1)


@torch.no_grad()
def encoder_tokens(vit, images: np.ndarray, device, batch: int = 16, layers: bool = False):
    """Final (normed) tokens of a frozen MONAI ViT: (N, 1, D, H, W) -> (N, T, width) float32.

    With `layers`, also every layer's tokens: the patch embedding's output (position included) and each
    block's output, concatenated -> (N, T, (depth + 1) * width). The last MAE encoder layer is shaped by
    what its decoder needs; earlier layers can hold what the probe asks for (docs/downstream.md, round 2)."""
    vit = vit.to(device).eval()
    out, every = [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if layers:
                # MONAI ViT.forward, unrolled to keep the embedding (no cls token: classification=False).
                h = vit.patch_embedding(x)
                hidden = [h]
                for blk in vit.blocks:
                    h = blk(h)
                    hidden.append(h)
                tokens = vit.norm(h)
                every.append(torch.cat(hidden, dim=-1).float().cpu().numpy())
            else:
                tokens, _ = vit(x)
        out.append(tokens.float().cpu().numpy())
    if layers:
        return np.concatenate(out), np.concatenate(every)
    return np.concatenate(out)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every array scaled by the training rows' mean and sd (columns of zero sd left centred)."""
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [(a - mu) / sd for a in (train, *others)]


def softmax_probe(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, num_classes: int, l2: float
) -> np.ndarray:
    """Multinomial logistic regression (standardized inputs, L2 penalty on the weights, full-batch L-BFGS
    in float64) -> predicted classes of x_te. Classes absent from y_tr are never predicted."""
    a, b = standardize(x_tr, x_te)
    xa, xb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    y = torch.from_numpy(y_tr.astype(np.int64))
    w = torch.zeros(xa.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[y.unique()] = True
    # -inf logits for absent classes: the softmax then ignores them and their weights stay 0.
    mask = torch.where(present, 0.0, -torch.inf).double()
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xa @ w + bias + mask, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xb @ w + bias + mask).argmax(1).numpy()


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the classes present in `truth` of the share of their items predicted as themselves."""
    classes = np.unique(truth)
    return float(np.mean([(pred[truth == c] == c).mean() for c in classes]))


def knn_precision(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, k: int,
                  chunk: int = 4096) -> float:  # fmt: skip
    """Class-balanced precision@k of cosine nearest-neighbour retrieval from the training tokens."""
    bank = F.normalize(torch.from_numpy(x_tr).float(), dim=1)
    q = F.normalize(torch.from_numpy(x_te).float(), dim=1)
    labels = torch.from_numpy(y_tr.astype(np.int64))
    hits = torch.empty(len(q), dtype=torch.float64)
    for i in range(0, len(q), chunk):
        top = (q[i : i + chunk] @ bank.T).topk(k, dim=1).indices
        hits[i : i + chunk] = (
            (labels[top] == torch.from_numpy(y_te[i : i + chunk, None].astype(np.int64))).double().mean(1)
        )
    h = hits.numpy()
    return float(np.mean([h[y_te == c].mean() for c in np.unique(y_te)]))
