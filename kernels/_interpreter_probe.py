"""A one-line pattern of our kernels, run once in Triton's interpreter to find a broken combination.

Imported only in interpreter mode (TRITON_INTERPRET=1 when `triton.jit` decorates), by
`kernels._ext.interpreter_problem`.
"""

import triton
import triton.language as tl


@triton.jit
def loop_over_loaded_bound(P):  # the attention kernels' key-length loop: range(0, tl.load(...), ...)
    n = tl.load(P)
    for i in range(0, n, 1):
        tl.store(P + 1, i)
