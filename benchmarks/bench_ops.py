"""Side-by-side GroupNorm speed on ResNet-50 shapes (docs/design.md §8): ours vs MXNet's
built-in GroupNorm vs gluoncv's GroupNorm vs MXNet BatchNorm (training mode) vs a plain copy
of x.

Two tables, both measured in this one run:
- imperative: NDArray calls (autograd for fwd+bwd). MXNet 1.9's CPU storage has no memory
  pool: outputs are malloc'd and freed on its engine threads, and glibc's per-thread arenas
  hand large blocks back to the OS on free, so each output page-faults on first write. For
  cheap layers (ours, the copy) that, not the arithmetic, sets the time. Running with
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296
  keeps freed memory for reuse (docs/benchmarks.md, "Operators in MXNet").
- bound graph: each layer in a Symbol executor (simple_bind), whose memory is planned once
  and reused, as in Module and in Gluon's hybridize(static_alloc=True) that train/ uses.
  The input is a graph argument, so our front's guard against grad_req='add' (an identity
  copy of x, see ops._native) is inside our time; a third table times the raw op without it,
  as inside a network, where the norm's input is a layer's output and no guard is added.

Prints ms (median after warm-up) and ratios; compare ratios, not absolute times across runs
(shared machines are noisy).
"""
import argparse
import sys
import os
import time

import mxnet as mx
import numpy as np

import bench_kernels
import gn_mxnet
from gn_mxnet.utils import cli
from gn_mxnet.operator.validation import SUPPORTED_DTYPES
from gn_mxnet.training.step_profile import machine_header


def median_ms(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    mx.nd.waitall()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        mx.nd.waitall()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def make_layers(channels, groups, dtype):
    """name -> (forward(x) returning y, parameter NDArrays that need gradients)."""
    import gluoncv
    per_channel = [mx.nd.ones(channels, dtype=dtype), mx.nd.zeros(channels, dtype=dtype)]
    per_group = [mx.nd.ones(groups, dtype=dtype), mx.nd.zeros(groups, dtype=dtype)]
    bn_params = per_channel + [mx.nd.zeros(channels, dtype=dtype), mx.nd.ones(channels, dtype=dtype)]
    gluoncv_gn = gluoncv.nn.GroupNorm(ngroups=groups, in_channels=channels)
    gluoncv_gn.initialize()
    gluoncv_gn.cast(dtype)
    return {
        'ours': (lambda x: gn_mxnet.group_norm(x, *per_channel, num_groups=groups), per_channel),
        'mxnet_gn': (lambda x: mx.nd.GroupNorm(x, *per_group, num_groups=groups), per_group),
        'gluoncv_gn': (gluoncv_gn, []),
        'batchnorm': (lambda x: mx.nd.BatchNorm(x, *bn_params, fix_gamma=False), bn_params[:2]),
    }


def bench_shape(shape, groups, dtype, repeat):
    x = mx.nd.random.normal(shape=shape, dtype=dtype)
    dy = mx.nd.random.normal(shape=shape, dtype=dtype)
    row = {'copy': median_ms(lambda: x.copy(), repeat)}
    for name, (layer, params) in make_layers(shape[1], groups, dtype).items():
        def forward():
            with mx.autograd.train_mode():
                layer(x)
        row[name] = median_ms(forward, repeat)

        xg = x.copy()
        xg.attach_grad()
        for p in params:
            p.attach_grad()

        def forward_backward():
            with mx.autograd.record():
                # Inside a network a norm's input is an intermediate, not a leaf: a recorded
                # view stands in for the layer before (the same for every column).
                y = layer(xg.reshape(shape))
            y.backward(dy)
        row[name + '_fb'] = median_ms(forward_backward, repeat)
    return row


def gluoncv_symbol(x, channels, groups):
    """gluoncv's GroupNorm as a Symbol, or None: its hybrid_forward calls reshape with
    positional arguments, which mxnet.sym rejects, so it cannot be hybridized or bound."""
    import gluoncv
    try:
        return gluoncv.nn.GroupNorm(ngroups=groups, in_channels=channels, prefix='gcv_')(x)
    except mx.MXNetError:
        return None


def graph_layers(channels, groups):
    """name -> Symbol of the layer applied to the argument 'x' (None: cannot be built)."""
    x, gamma, beta = mx.sym.var('x'), mx.sym.var('gamma'), mx.sym.var('beta')
    return {
        'copy': mx.sym.identity(x),
        'ours': gn_mxnet.group_norm(x, gamma, beta, num_groups=groups),
        'ours_raw': mx.sym.GroupNormalization(x, gamma, beta, num_groups=groups)[0],
        'mxnet_gn': mx.sym.GroupNorm(x, gamma, beta, num_groups=groups),
        'gluoncv_gn': gluoncv_symbol(x, channels, groups),
        'batchnorm': mx.sym.BatchNorm(x, gamma, beta, fix_gamma=False),
    }


def bench_shape_graph(shape, groups, dtype, repeat):
    x = mx.nd.random.normal(shape=shape, dtype=dtype)
    dy = mx.nd.random.normal(shape=shape, dtype=dtype)
    row = {}
    for name, symbol in graph_layers(shape[1], groups).items():
        if symbol is None:
            row[name] = row[name + '_fb'] = float('nan')
            continue
        exe = symbol.simple_bind(mx.cpu(), grad_req='write', x=shape, type_dict={'x': dtype})
        for arg, array in list(exe.arg_dict.items()) + list(exe.aux_dict.items()):
            array[:] = 1.0 if arg.endswith(('gamma', 'var')) else 0.0
        x.copyto(exe.arg_dict['x'])
        row[name] = median_ms(lambda: exe.forward(is_train=True), repeat)

        def forward_backward():
            exe.forward(is_train=True)
            exe.backward(dy)
        row[name + '_fb'] = median_ms(forward_backward, repeat)
        del exe
    return row


def print_table(title, shapes, bench, groups, dtype, repeat):
    print(title)
    header = ('shape', 'copy', 'ours', 'mxnet GN', 'gluoncv GN', 'BN', 'ours/copy',
              'mxGN/ours', 'BN/ours', '| ours f+b', 'mxnet GN', 'gluoncv GN', 'BN',
              'mxGN/ours', 'BN/ours')
    print(' '.join(f'{h:>11}' for h in header))
    rows = []
    for shape in shapes:
        r = bench(shape, groups, dtype, repeat)
        rows.append((shape, r))
        cells = ['x'.join(map(str, shape)), r['copy'], r['ours'], r['mxnet_gn'],
                 r['gluoncv_gn'], r['batchnorm'], r['ours'] / r['copy'],
                 r['mxnet_gn'] / r['ours'], r['batchnorm'] / r['ours'], r['ours_fb'],
                 r['mxnet_gn_fb'], r['gluoncv_gn_fb'], r['batchnorm_fb'],
                 r['mxnet_gn_fb'] / r['ours_fb'], r['batchnorm_fb'] / r['ours_fb']]
        print(' '.join(f'{c:>11.2f}' if isinstance(c, float) else f'{c:>11}' for c in cells),
              flush=True)
    if np.isnan(r['gluoncv_gn']):
        print("gluoncv GN nan: it cannot be bound (Symbol.reshape rejects its positional args)")
    return rows


def print_raw_table(rows):
    print("bound graph, the raw op mx.sym.GroupNormalization (no grad_req='add' guard), same run:")
    header = ('shape', 'copy', 'raw op', 'raw/copy', 'mxGN/raw', 'BN/raw', '| raw f+b',
              'mxGN/raw', 'BN/raw')
    print(' '.join(f'{h:>11}' for h in header))
    for shape, r in rows:
        raw, raw_fb = r['ours_raw'], r['ours_raw_fb']
        cells = ['x'.join(map(str, shape)), r['copy'], raw, raw / r['copy'], r['mxnet_gn'] / raw,
                 r['batchnorm'] / raw, raw_fb, r['mxnet_gn_fb'] / raw_fb,
                 r['batchnorm_fb'] / raw_fb]
        print(' '.join(f'{c:>11.2f}' if isinstance(c, float) else f'{c:>11}' for c in cells))


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    bench_kernels.add_timing_arguments(parser)
    parser.set_defaults(repeat=7)
    parser.add_argument('--dtype', default='float32', choices=SUPPORTED_DTYPES)
    parser.add_argument('--shapes', type=bench_kernels.shape_list, default=bench_kernels.SHAPES,
                        help="e.g. '32x64x56x56,8x256x64x64'; default: "
                             + bench_kernels.format_shapes(bench_kernels.SHAPES))
    parser.add_argument('--tables', choices=('both', 'imperative', 'graph'), default='both',
                        help='which of the timing tables (the module docstring)')
    args = parser.parse_args(argv)
    shapes = args.shapes
    bench_kernels.check_groups(parser, args.groups, shapes)
    gn_mxnet.load_library()
    print(machine_header())
    print(f"GroupNorm, {args.dtype}, G={args.groups}, median of {args.repeat} runs (ms); "
          f"ratios are the other's time / ours; kernels: {gn_mxnet.cpu_isa()} build; "
          f"allocator: {os.environ.get('GLIBC_TUNABLES') or 'glibc defaults'}")
    if args.tables in ('both', 'imperative'):
        print_table('imperative (NDArray calls; MXNet allocates every output per call):',
                    shapes, bench_shape, args.groups, args.dtype, args.repeat)
    if args.tables in ('both', 'graph'):
        rows = print_table('bound graph (simple_bind executor; memory planned once and reused):',
                           shapes, bench_shape_graph, args.groups, args.dtype, args.repeat)
        print_raw_table(rows)
    print(f"after the run: {machine_header()}")


if __name__ == '__main__':
    sys.exit(cli.run(main))
