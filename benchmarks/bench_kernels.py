"""The CPU kernels alone, through their C ABI, on preallocated buffers: forward, backward and
forward+backward against a plain copy of x (numpy.copyto), on the ResNet-50 shapes of
docs/design.md §8, and the fused forms y = relu(GN(x)) and y = relu(GN(x) + residual) beside
the plain op (timed alternately, so both see the same machine load). Without MXNet's per-call
allocations, which on these machines page-fault unpredictably, this isolates the kernels' own
cost. Prints medians and ratios of one run.

GB/s counts the arrays of x's size each pass moves through memory: a group stays in cache
between the kernels' two passes, so the plain forward moves x and y once (2 arrays), the fused
one also the residual (3); the plain backward dy, x and dx (3), the fused one also the residual
and d residual (5). Where both run at the memory's speed, fused/plain can be no lower than 1.5
(forward) and 1.67 (backward): the residual's own bytes.
"""
import argparse
import sys
import ctypes
import time

import numpy as np

import gn_mxnet
from cuda_build import builder  # this script's folder is on sys.path when it runs
from gn_mxnet.operator import validation
from gn_mxnet.training.step_profile import machine_header
from gn_mxnet.utils import cli

SHAPES = ((32, 64, 56, 56), (32, 256, 56, 56), (32, 1024, 14, 14), (8, 256, 64, 64))
# Arrays of x's size each pass moves through memory (see the module docstring).
ARRAYS_MOVED = {'copy': 2, 'fwd': 2, 'fused fwd': 3, 'bwd': 3, 'fused bwd': 5}
FLOAT32 = builder.DTYPE_CODES['float32']
ACT_CODES = builder.ACT_CODES


def add_timing_arguments(parser):
    """--groups and --repeat, as every kernel benchmark takes them."""
    parser.add_argument('--groups', type=cli.positive_int, default=32, help='GN groups')
    parser.add_argument('--repeat', type=cli.int_range(5), default=15,
                        help='timed runs per cell (>= 5)')


def format_shapes(shapes):
    """[(32, 64, 56, 56), (8, 256, 64, 64)] -> '32x64x56x56,8x256x64x64' (shape_list's form)."""
    return ','.join('x'.join(map(str, shape)) for shape in shapes)


def shape_list(text):
    """'32x64x56x56,8x256x64x64' -> [(32, 64, 56, 56), (8, 256, 64, 64)], sizes positive."""
    shapes = [tuple(cli.positive_int(d) for d in s.split('x')) for s in text.split(',')]
    if any(len(shape) < 2 for shape in shapes):
        raise argparse.ArgumentTypeError(f"shapes look like 32x64x56x56, got {text!r}")
    return shapes


def check_groups(parser, groups, shapes):
    """A usage error unless `groups` divides the channels of every shape to be timed."""
    try:
        for shape in shapes:
            validation.layout(validation.parse_attrs(groups), shape)
    except ValueError as error:
        parser.error(f"argument --groups: {error}")


def load_kernels(path=None):
    """The CPU kernels' C ABI from the installed library, or from the build at `path` (to
    time two builds side by side in one run)."""
    lib = ctypes.CDLL(path or gn_mxnet.library_path())
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    # operators/group_norm_kernels.h: residual after beta, act after channels_last; backward
    # also takes beta, residual and dresidual.
    lib.gn_cpu_forward.argtypes = [c_int, c_int, p, p, p, p, p, p, p, i64, i64, i64, i64, c_int,
                                   c_int, ctypes.c_double, p]
    lib.gn_cpu_backward.argtypes = [c_int, c_int, p, p, p, p, p, p, p, p, p, p, p, i64, i64, i64,
                                    i64, c_int, c_int, p]
    for name in ('gn_cpu_forward_workspace_bytes', 'gn_cpu_backward_workspace_bytes'):
        getattr(lib, name).argtypes = [i64, i64, i64, i64, c_int]
        getattr(lib, name).restype = ctypes.c_size_t
    return lib


def median_ms(fn, repeat):
    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def paired_median_ms(fn_a, fn_b, repeat):
    """Medians of fn_a and fn_b called alternately: a busy machine slows both alike."""
    for fn in (fn_a, fn_b, fn_a, fn_b):
        fn()
    times = ([], [])
    for _ in range(repeat):
        for fn, out in zip((fn_a, fn_b), times):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
    return tuple(float(np.median(t)) for t in times)


def bench(lib, shape, groups, channels_last, repeat):
    rng = np.random.RandomState(0)
    N, C, S = shape[0], shape[1], int(np.prod(shape[2:]))
    x, dy = rng.randn(N * C * S).astype(np.float32), rng.randn(N * C * S).astype(np.float32)
    residual = rng.randn(N * C * S).astype(np.float32)
    y, dx, dresidual = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    gamma, beta = rng.randn(C).astype(np.float32), rng.randn(C).astype(np.float32)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(beta)
    mean, rstd = np.empty((N, groups), np.float32), np.empty((N, groups), np.float32)
    fwd_ws = np.empty(max(1, lib.gn_cpu_forward_workspace_bytes(N, C, S, groups, channels_last)), np.uint8)
    bwd_ws = np.empty(max(1, lib.gn_cpu_backward_workspace_bytes(N, C, S, groups, channels_last)), np.uint8)
    ptr = lambda a: a.ctypes.data

    def forward(act='none', r=None):
        status = lib.gn_cpu_forward(FLOAT32, FLOAT32, ptr(x), ptr(gamma), ptr(beta), r, ptr(y),
                                    ptr(mean), ptr(rstd), N, C, S, groups, channels_last,
                                    ACT_CODES[act], 1e-5, ptr(fwd_ws))
        assert status == 0, status

    def backward(act='none', r=None, dr=None):
        status = lib.gn_cpu_backward(FLOAT32, FLOAT32, ptr(dy), ptr(x), ptr(gamma), ptr(beta),
                                     r, ptr(mean), ptr(rstd), ptr(dx), ptr(dgamma), ptr(dbeta),
                                     dr, N, C, S, groups, channels_last, ACT_CODES[act],
                                     ptr(bwd_ws))
        assert status == 0, status

    copy = median_ms(lambda: np.copyto(y, x), repeat)
    fwd, fused_fwd = paired_median_ms(forward, lambda: forward('relu', ptr(residual)), repeat)
    _, relu_fwd = paired_median_ms(forward, lambda: forward('relu'), repeat)
    bwd, fused_bwd = paired_median_ms(
        backward, lambda: backward('relu', ptr(residual), ptr(dresidual)), repeat)
    both = median_ms(lambda: (forward(), backward()), repeat)
    times = {'copy': copy, 'fwd': fwd, 'bwd': bwd, 'fwd+bwd': both, 'fused fwd': fused_fwd,
             'fused bwd': fused_bwd, 'relu fwd': relu_fwd}
    gb_per_s = {k: n * x.nbytes / (times[k] * 1e-3) / 1e9 for k, n in ARRAYS_MOVED.items()}
    return times, gb_per_s


def print_row(cells):
    print(' '.join(f'{c:>15.2f}' if isinstance(c, float) else f'{c:>15}' for c in cells),
          flush=True)


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    add_timing_arguments(parser)
    parser.add_argument('--channels-last', action='store_true', help='NHWC (default: NCHW)')
    parser.add_argument('--shapes', type=shape_list, default=SHAPES,
                        help=f"e.g. '32x64x56x56,8x256x64x64'; default: {format_shapes(SHAPES)}")
    args = parser.parse_args(argv)
    check_groups(parser, args.groups, args.shapes)
    lib = load_kernels()
    layout = 'NHWC' if args.channels_last else 'NCHW'
    print(machine_header())
    print(f"CPU kernels ({gn_mxnet.cpu_isa()} build), float32, {layout}, G={args.groups}, "
          f"median of {args.repeat} (ms)")
    print("fused: y = relu(GN(x) + residual), relu: y = relu(GN(x)); X/plain is the ratio of "
          "medians timed alternately; GB/s counts the arrays each pass moves (docstring)")
    print_row(('shape', 'copy', 'fwd', 'bwd', 'fwd+bwd', 'fwd/copy', '(fwd+bwd)/copy',
               'fused fwd', 'fused bwd', 'fused/plain fwd', 'fused/plain bwd', 'relu/plain fwd',
               'copy GB/s', 'fwd GB/s', 'fused fwd GB/s', 'bwd GB/s', 'fused bwd GB/s'))
    for shape in args.shapes:
        t, rates = bench(lib, shape, args.groups, int(args.channels_last), args.repeat)
        print_row(['x'.join(map(str, shape)), t['copy'], t['fwd'], t['bwd'], t['fwd+bwd'],
                   t['fwd'] / t['copy'], t['fwd+bwd'] / t['copy'], t['fused fwd'],
                   t['fused bwd'], t['fused fwd'] / t['fwd'], t['fused bwd'] / t['bwd'],
                   t['relu fwd'] / t['fwd'], rates['copy'], rates['fwd'], rates['fused fwd'],
                   rates['bwd'], rates['fused bwd']])
    print(f"memory-traffic floor of fused/plain: fwd "
          f"{ARRAYS_MOVED['fused fwd'] / ARRAYS_MOVED['fwd']:.2f}, bwd "
          f"{ARRAYS_MOVED['fused bwd'] / ARRAYS_MOVED['bwd']:.2f} (when both run at the "
          f"memory's speed)")
    print(f"after the run: {machine_header()}")


if __name__ == '__main__':
    sys.exit(cli.run(main))
