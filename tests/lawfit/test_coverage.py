"""The intervals hold the truth about as often as they say, counted over independent simulated studies.

Each trial (lawfit/coverage.py, design `TEST_DESIGN`: 2 domains, 8 runs of 8 evaluations, 1% noise,
100 resamples) draws its own truth, pilot design and noise, fits the laws and bootstraps them with
lawfit's defaults; two single indicators per trial are counted: does the 90% interval of alpha of domain
d0 hold the true alpha, and does the 90% interval of d0's predicted loss at 4x the per-run budget
(uniform mixture, an extrapolation) hold the true loss. Trials are independent, so each count is
Binomial(K, p), p the coverage of the defaults in this design. docs/notes/coverage_study_2026-11-30.md
measured it over 800 other trials (seeds 1000-1399 and 2000-2399; these use 1-100): alpha 0.885
[0.861, 0.906], prediction 0.8625 [0.837, 0.886] (95% Clopper-Pearson). In this small design the
prediction interval covers a little less than its nominal 0.9.
"""

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from scipy.stats import binom

from voxmix.lawfit.coverage import TEST_DESIGN, coverage_trial
from voxmix.lawfit.fit import FitConfig

K = 100
P0 = 0.83
# A method that covers at least P0 (below both measured lower limits) fails one count with probability
# P(Binomial(K, P0) < THRESHOLD) <= 5e-4, so the test (two counts, union bound) fails below 1e-3. At K = 100
# that is THRESHOLD = 70 (4.2e-4). With the measured coverages (0.885, 0.8625) a count fails with
# probability 1.5e-7 and 7.2e-6. Power: a method covering 0.7 passes one count with probability 0.55, one
# covering 0.6 with 0.025. This 2-domain design is easy: the intervals before #12 covered 0.86 / 0.84 here and
# would have passed; test_bootstrap.py::test_a_warm_started_refit_reaches_the_cold_fits_optimum guards that.
THRESHOLD = max(t for t in range(K + 1) if binom.cdf(t - 1, K, P0) <= 5e-4)


def _trial(seed: int) -> dict:
    cfg = FitConfig()
    return coverage_trial(TEST_DESIGN, seed, methods=(cfg.bootstrap_method,), rules=(cfg.interval,))[0]


@pytest.mark.slow
def test_intervals_cover_the_truth_at_their_level():
    assert TEST_DESIGN.level == 0.9
    workers = min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        rows = list(pool.map(_trial, range(1, K + 1)))
    for probe in ("alpha_d0", "pred_4x_uniform_d0"):
        inside = sum(r["probes"][probe] for r in rows)
        assert inside >= THRESHOLD, (
            f"{probe}: the 90% interval held the truth in {inside} of {K} studies; a method covering "
            f"{P0} or more gets fewer than {THRESHOLD} with probability < 5e-4"
        )
