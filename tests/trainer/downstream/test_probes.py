"""Representation probes and context tasks against independent references (NumPy loops, scipy, conv3d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from voxmix.trainer.data.phantoms import KIDNEY, LESION, LIVER, SOFT
from voxmix.trainer.downstream import context, probes
from voxmix.trainer.downstream.tasks import fit_probe


def test_patches_follow_the_patch_embedding_token_order():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 8, 12, 4)).astype(np.float32)
    # MONAI's patch embedding is a stride-p conv flattened over (D, H, W): an averaging kernel gives
    # each token's mean in that order.
    conv = F.conv3d(torch.from_numpy(a)[:, None], torch.full((1, 1, 4, 4, 4), 1 / 64), stride=4)
    ref = conv.flatten(2)[:, 0].numpy()
    np.testing.assert_allclose(probes.patches(a, 4).mean(-1), ref, rtol=1e-5, atol=1e-6)


def test_token_labels_and_patch_stats_match_a_loop():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 4, size=(3, 8, 8, 8))
    lab[0, :4, :4, :4] = 2  # a pure patch
    lab[1, :4, :4, 4:] = np.r_[[1] * 32, [3] * 32].reshape(4, 4, 4)  # a tie between 1 and 3 -> 1
    img = rng.normal(size=(3, 1, 8, 8, 8))
    got, stats = probes.token_labels(lab, 4, 5), probes.patch_stats(img, 4)
    for n in range(3):
        t = 0
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    block = lab[n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, 4 * k : 4 * k + 4].ravel()
                    assert got[n, t] == np.bincount(block, minlength=5).argmax()
                    v = img[n, 0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, 4 * k : 4 * k + 4].ravel()
                    ref = [v.mean(), v.std(), v.min(), v.max(), *np.percentile(v, [10, 50, 90])]
                    np.testing.assert_allclose(stats[n, t], ref, rtol=1e-12)
                    t += 1
    assert got[0, 0] == 2 and got[1, 1] == 1


def test_balanced_accuracy_closed_form():
    truth = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2])
    assert probes.balanced_accuracy(pred, truth) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_softmax_probe_reaches_the_optimum_of_its_objective():
    rng = np.random.default_rng(2)
    k, d = 4, 5
    centres = rng.normal(0, 2, size=(k, d))
    y = rng.integers(0, 3, size=300)  # class 3 never appears in training
    x = centres[y] + rng.normal(size=(300, d))
    xt = np.vstack([centres[y] + rng.normal(size=(300, d)), centres[3] + rng.normal(size=(20, d))])
    pred = probes.softmax_probe(x, y, xt, k, 1e-3)
    assert 3 not in pred
    # Reference: the same objective (mean cross-entropy on standardized x + l2 |W|^2) by scipy, over the
    # three present classes only.
    a, b = probes.standardize(x, xt)

    def f(theta):
        w, c = theta[: d * 3].reshape(d, 3), theta[d * 3 :]
        z = a @ w + c
        z = z - z.max(1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]) + 1e-3 * (w * w).sum()

    res = minimize(f, np.zeros(d * 3 + 3), method="BFGS", options={"gtol": 1e-10})
    ref = (b @ res.x[: d * 3].reshape(d, 3) + res.x[d * 3 :]).argmax(1)
    assert (pred == ref).mean() > 0.995  # the same minimizer: at most a boundary point may differ


def test_knn_precision_matches_a_full_sort():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 6)), rng.integers(0, 3, size=200)
    q, yq = rng.normal(size=(50, 6)), rng.integers(0, 3, size=50)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    top = np.argsort(-(qn @ xn.T), axis=1)[:, :7]
    hits = (y[top] == yq[:, None]).mean(1)
    ref = np.mean([hits[yq == c].mean() for c in np.unique(yq)])
    assert probes.knn_precision(x, y, q, yq, 7, chunk=16) == pytest.approx(ref, abs=1e-12)


def _body(shape=(20, 10, 10)) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[2:18, 1:9, 1:9] = SOFT
    return m


def test_context_labels_from_label_maps():
    right_big, left_big, none = _body(), _body(), _body()
    right_big[3:6, 4:6, 4:6] = KIDNEY  # low side: 12 voxels
    right_big[13:17, 4:6, 4:7] = KIDNEY  # high side: 24 voxels
    left_big[3:7, 4:6, 4:7] = KIDNEY
    left_big[14:16, 4:6, 4:6] = KIDNEY
    assert context.task_labels([right_big, left_big, none], "kidney_side") == [1, 0, None]
    les_hi, les_lo = _body(), _body()
    les_hi[14:16, 5, 5] = LESION  # body spans 2..17: midline 9.5
    les_lo[3:5, 5, 5] = LESION
    assert context.task_labels([les_hi, les_lo, none], "lesion_side") == [1, 0, None]
    assert context.task_labels([les_hi, none], "lesion") == [1, 0]
    livers = []
    for n in (4, 8, 2, 6):
        m = _body()
        m[5 : 5 + n, 3, 3] = LIVER
        livers.append(m)
    assert context.task_labels(livers, "liver_size") == [0, 1, 0, 1]  # median 5
    assert context.task_labels([none, none], "liver_size") == [None, None]
    with pytest.raises(ValueError, match="choose from"):
        context.task_labels([none], "size")
    assert context.usable([0] * 4 + [1] * 4 + [None]) and not context.usable([0] * 4 + [1] * 3)


def test_volume_probe_solves_the_primal_problem_in_the_span_of_its_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 400))  # more features than volumes, as with concatenated tokens
    y = (x[:, :3].sum(1) + rng.normal(0, 1, 30) > 0).astype(np.int64)
    xt = rng.normal(size=(12, 400))
    got = context.logistic(x, y, xt, 1e-2)
    # Reference: the primal problem in all 400 dimensions (tasks.fit_probe's objective), solved to a
    # tight gradient tolerance by scipy's BFGS with the analytic gradient.
    a, b = probes.standardize(x, xt)

    def f(t):
        m = a @ t[:-1] + t[-1]
        p = 1 / (1 + np.exp(-m))
        g = np.r_[a.T @ (p - y) / len(y) + 2e-2 * t[:-1], np.mean(p - y)]
        return np.mean(np.logaddexp(0, m) - y * m) + 1e-2 * t[:-1] @ t[:-1], g

    ref = minimize(f, np.zeros(401), jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 10000})
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(b @ ref.x[:-1] + ref.x[-1]))), atol=1e-6)
    # ... and the L-BFGS probe the cls task has always used lands on the same optimum, to its tolerance.
    w, c = fit_probe(torch.from_numpy(a), torch.from_numpy(y), 1e-2)
    np.testing.assert_allclose(got, torch.sigmoid(torch.from_numpy(b) @ w + c).numpy(), atol=1e-3)


def test_newton_logistic_matches_the_objective_minimum():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] + rng.normal(0, 0.5, 40) > 0).astype(np.float64)
    w, b = context.newton_logistic(x, y, 0.05)

    def f(t):
        m = x @ t[:3] + t[3]
        return np.mean(np.logaddexp(0, m) - y * m) + 0.05 * t[:3] @ t[:3]

    ref = minimize(f, np.zeros(4), method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose(np.r_[w, b], ref.x, atol=1e-6)


def test_global_stats_and_folds():
    rng = np.random.default_rng(6)
    v = rng.normal(size=(3, 1, 4, 4, 4))
    s = context.global_stats(v)
    flat = v.reshape(3, -1)
    np.testing.assert_allclose(s[:, 0], flat.mean(1))
    np.testing.assert_allclose(s[:, 7], flat.max(1))
    np.testing.assert_allclose(s[:, 4], np.median(flat, axis=1))
    y = np.array([0] * 9 + [1] * 5)
    fold = context.stratified_folds(y, 4, np.random.default_rng(0))
    for f in range(4):
        assert {0, 1} <= set(y[fold == f])  # every fold holds both classes
