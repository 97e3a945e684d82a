"""Two builds of the CPU kernels timed alternately in one run (so both see the same machine
load): forward and backward, float32, the ResNet-50 shapes of benchmarks/bench_kernels.py, both
layouts. Prints each build's medians and new/old.
Usage: compare_kernels.py OLD.so NEW.so [REPEAT]"""
import ctypes
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks'))
import bench_kernels as bk  # noqa: E402
from gn_mxnet.training.step_profile import machine_header  # noqa: E402

GROUPS = 32


def calls(lib, shape, channels_last, arrays):
    """forward() and backward() of one build on shared buffers."""
    N, C, S = shape[0], shape[1], int(np.prod(shape[2:]))
    x, dy, y, dx, gamma, beta, dgamma, dbeta, mean, rstd = arrays
    ws = [np.empty(max(1, getattr(lib, f'gn_cpu_{k}_workspace_bytes')(N, C, S, GROUPS,
                                                                       channels_last)), np.uint8)
          for k in ('forward', 'backward')]
    p = lambda a: a.ctypes.data  # noqa: E731

    def forward():
        assert lib.gn_cpu_forward(bk.FLOAT32, bk.FLOAT32, p(x), p(gamma), p(beta), None, p(y),
                                  p(mean), p(rstd), N, C, S, GROUPS, channels_last, 0, 1e-5,
                                  p(ws[0])) == 0

    def backward():
        assert lib.gn_cpu_backward(bk.FLOAT32, bk.FLOAT32, p(dy), p(x), p(gamma), p(beta), None,
                                   p(mean), p(rstd), p(dx), p(dgamma), p(dbeta), None, N, C, S,
                                   GROUPS, channels_last, 0, p(ws[1])) == 0
    return forward, backward


def main(old_path, new_path, repeat='15'):
    repeat = int(repeat)
    old, new = bk.load_kernels(old_path), bk.load_kernels(new_path)
    print(machine_header())
    print(f'old: {old_path}\nnew: {new_path}\nfloat32, G={GROUPS}, median of {repeat} (ms), '
          f'old and new called alternately')
    print(f"{'shape':>16} {'layout':>6} {'pass':>4} {'old ms':>9} {'new ms':>9} {'new/old':>8}")
    for shape in bk.SHAPES:
        for channels_last in (0, 1):
            rng = np.random.RandomState(0)
            N, C, S = shape[0], shape[1], int(np.prod(shape[2:]))
            x, dy = (rng.randn(N * C * S).astype(np.float32) for _ in range(2))
            gamma, beta = (rng.randn(C).astype(np.float32) for _ in range(2))
            arrays = (x, dy, np.empty_like(x), np.empty_like(x), gamma, beta,
                      np.empty_like(gamma), np.empty_like(beta),
                      np.empty((N, GROUPS), np.float32), np.empty((N, GROUPS), np.float32))
            fo, bo = calls(old, shape, channels_last, arrays)
            fn, bn = calls(new, shape, channels_last, arrays)
            # The forwards leave mean/rstd for the backwards (the same from both builds here).
            for name, a, b in (('fwd', fo, fn), ('bwd', bo, bn)):
                t_old, t_new = bk.paired_median_ms(a, b, repeat)
                print(f"{'x'.join(map(str, shape)):>16} {'NHWC' if channels_last else 'NCHW':>6} "
                      f"{name:>4} {t_old:9.2f} {t_new:9.2f} {t_new / t_old:8.3f}", flush=True)
    print(f'after the run: {machine_header()}')


if __name__ == '__main__':
    main(*sys.argv[1:4])
