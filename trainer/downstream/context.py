"""Volume-level tasks that need context, their labels read from the label maps, and the probe that scores them.

Defined before any encoder was scored on them (docs/downstream.md, "The evaluation protocol"); a task
runs in a domain only where both classes have at least MIN_PER_CLASS volumes:
- `lesion`: a lesion is present (the phantoms' lesions are intensity changes: the baseline should find
  them, which is the point of reporting it);
- `liver_size`: the liver has more voxels than the domain's median (organ size);
- `kidney_side`: the kidney on the high side of axis 0 is the larger one (laterality of a size
  difference; both kidneys have the same intensity, so global statistics are blind to it);
- `lesion_side`: among volumes with a lesion, its centroid lies on the high side of the body's midline
  along axis 0 (position, not intensity).

The probe is frozen: the whole volume resized to the encoder's crop, all final tokens concatenated (a
mean over tokens would erase the layout these tasks are about), standardized, an L2 logistic regression,
stratified k-fold; AUROC of the pooled out-of-fold scores. The baseline runs the same probe on eight
global intensity statistics of the same resized volume.
"""

from __future__ import annotations

import numpy as np

from voxmix.trainer.data.phantoms import KIDNEY, LABEL_NAMES, LESION, LIVER

from .stats import auroc

TASKS = ("lesion", "liver_size", "kidney_side", "lesion_side")
MIN_PER_CLASS = 4
GLOBAL_STATS = ("mean", "sd", "p1", "p10", "p50", "p90", "p99", "max")
assert LABEL_NAMES[LIVER] == "liver" and LABEL_NAMES[KIDNEY] == "kidney" and LABEL_NAMES[LESION] == "lesion"


def _side_counts(mask: np.ndarray, mid: float) -> tuple[int, int]:
    x = np.nonzero(mask)[0]
    return int((x < mid).sum()), int((x > mid).sum())


def task_labels(label_maps: list[np.ndarray], task: str) -> list[int | None]:
    """One 0/1 label per volume for `task` (None: the task does not apply to that volume)."""
    if task == "lesion":
        return [int((m == LESION).any()) for m in label_maps]
    if task == "liver_size":
        n = np.array([(m == LIVER).sum() for m in label_maps])
        if not n.any():
            return [None] * len(label_maps)
        med = np.median(n)
        return [int(v > med) for v in n]
    out: list[int | None] = []
    for m in label_maps:
        if task == "kidney_side":
            x = np.nonzero(m == KIDNEY)[0]
            if x.size == 0:
                out.append(None)
                continue
            lo, hi = _side_counts(m == KIDNEY, float(x.mean()))  # between the two kidneys
            out.append(None if lo == hi else int(hi > lo))
        elif task == "lesion_side":
            les = np.nonzero(m == LESION)[0]
            body = np.nonzero(m.any(axis=(1, 2)))[0]
            if les.size == 0:
                out.append(None)
                continue
            mid = (body.min() + body.max()) / 2
            c = float(les.mean())
            out.append(None if c == mid else int(c > mid))
        else:
            raise ValueError(f"context task {task!r}: choose from {', '.join(TASKS)}")
    return out


def usable(y: list[int | None]) -> bool:
    """Both classes with >= MIN_PER_CLASS volumes among those the task applies to."""
    v = np.array([t for t in y if t is not None])
    return v.size > 0 and min((v == 0).sum(), (v == 1).sum()) >= MIN_PER_CLASS


def global_stats(volumes: np.ndarray) -> np.ndarray:
    """(N, 1, D, H, W) -> (N, 8): GLOBAL_STATS of each volume."""
    v = volumes.reshape(len(volumes), -1).astype(np.float64)
    q = np.percentile(v, [1, 10, 50, 90, 99], axis=1)
    return np.stack([v.mean(1), v.std(1), *q, v.max(1)], axis=1)


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per item: each class shuffled, then dealt round-robin (every fold sees both classes)."""
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def newton_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """argmin over (w, b) of mean BCE(x w + b, y) + l2 ||w||^2 by Newton's method (the objective of
    tasks.fit_probe, exact Hessian, step halving): for the few-dimensional problems below, ~10 steps."""
    n, d = x.shape
    z = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, 2 * l2)
    reg[-1] = 0.0  # the bias is not penalized
    # A tiny ridge on the bias keeps the Hessian invertible when one class is absent from a fold.
    reg_h = np.diag(reg + np.r_[np.zeros(d), 1e-10])

    def objective(t):
        m = z @ t
        return float(np.mean(np.logaddexp(0, m) - y * m) + l2 * (t[:-1] @ t[:-1]))

    f = objective(theta)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(z @ theta)))
        grad = z.T @ (p - y) / n + reg * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z / n + reg_h
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            cand = theta - t * step
            fc = objective(cand)
            if fc <= f:
                break
            t /= 2
        theta, f_old, f = cand, f, fc
        if f_old - f < 1e-12 and np.abs(grad).max() < 1e-9:
            break
    return theta[:-1], float(theta[-1])


def logistic(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, l2: float) -> np.ndarray:
    """Binary L2 logistic regression on standardized features -> P(y=1) of x_te.

    Solved in the span of the n training rows: with A = U S V^T (thin SVD), the rows' coordinates A V and
    the test rows' B V. The optimal weights lie in that span (the gradient does, so the penalty pushes
    every other component to zero), and the coordinates are an orthogonal change of basis: the same
    optimum as in the 6,144 dimensions of concatenated tokens, from an n-dimensional problem (n ~ 36)."""
    from .probes import standardize

    a, b = standardize(x_tr, x_te)
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    w, bias = newton_logistic(a @ vt.T, y_tr.astype(np.float64), l2)
    return 1 / (1 + np.exp(-(b @ vt.T @ w + bias)))


def cv_auroc(feats: np.ndarray, y: np.ndarray, folds: int, l2: float, rng: np.random.Generator) -> float:
    """AUROC of the pooled out-of-fold scores of `logistic` over stratified folds."""
    k = min(folds, int(np.bincount(y).min()))
    fold = stratified_folds(y, k, rng)
    scores = np.zeros(len(y))
    for f in range(k):
        tr, te = fold != f, fold == f
        scores[te] = logistic(feats[tr], y[tr], feats[te], l2)
    return auroc(scores, y)
