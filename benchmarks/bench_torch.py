"""Our CPU kernels vs PyTorch's CPU GroupNorm (torch.nn.functional.group_norm), side by side
in one run, on the ResNet-50 shapes of docs/design.md §8 (fp32, G=32, same thread count).

torch cannot share this project's environment (gluoncv refuses torch >= 2), so it runs in a
separate Python given by --torch-python, in subprocesses, timed the same way: median after
two warm-up calls. Ours is timed through the C ABI on preallocated buffers (bench_kernels.py).
torch allocates its outputs per call; it runs twice: with glibc's defaults, as in use (buffers
over glibc's 32 MB mmap threshold page-fault on every call), and with freed memory kept
(KEEP_FREED_MEMORY), which leaves its kernels' own time: the ratios are against that run.
It also prints the float32 forward error of both against float64 on inputs where rounding a
float32 mean shows (near-constant groups, |mean| >> std).
Set up a torch environment with:  python3.11 -m venv /tmp/torchenv &&
/tmp/torchenv/bin/pip install torch numpy
"""
import json
import os
import subprocess
import sys

import numpy as np

import bench_kernels
import gn_mxnet
from gn_mxnet.utils import cli
from gn_mxnet.training.step_profile import machine_header

KEEP_FREED_MEMORY = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296'

TORCH_TIMER = r'''
import json, sys, time
import torch
import torch.nn.functional as F
shape, groups, repeat, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)

def median_ms(fn):
    fn(); fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter(); fn(); times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]

x, dy = torch.randn(shape), torch.randn(shape)
weight = torch.randn(shape[1], requires_grad=True)
bias = torch.randn(shape[1], requires_grad=True)
with torch.no_grad():
    forward = median_ms(lambda: F.group_norm(x, groups, weight, bias))
x.requires_grad_()

def forward_backward():
    y = F.group_norm(x, groups, weight, bias)
    torch.autograd.grad(y, (x, weight, bias), dy)  # fresh gradients, no accumulation

print(json.dumps({'fwd': forward, 'fwd_bwd': median_ms(forward_backward),
                  'version': torch.__version__}))
'''


PRECISION_CASES = (((3, 2), 1, 3.0, 1e-3), ((4, 16, 30), 2, 3.0, 1e-3),
                   ((2, 8, 16, 16), 2, 1000.0, 2.0))

TORCH_ERRORS = r'''
import json, sys
import numpy as np, torch
import torch.nn.functional as F
errors = []
for shape, groups, offset, spread in json.loads(sys.argv[1]):
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * spread + offset).astype('f4')
    w, b = rng.randn(shape[1]).astype('f4'), rng.randn(shape[1]).astype('f4')
    def run(dtype):
        as_tensor = lambda a: torch.tensor(a, dtype=dtype)
        return F.group_norm(as_tensor(x), groups, as_tensor(w), as_tensor(b)).numpy()
    y32, y64 = run(torch.float32), run(torch.float64)
    errors.append(float(np.abs(y32 - y64).max() / np.abs(y64).max()))
print(json.dumps(errors))
'''


def our_forward_error(lib, shape, groups, offset, spread):
    """Relative error of our float32 forward against the same kernels in float64."""
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * spread + offset).astype('f4')
    w, b = rng.randn(shape[1]).astype('f4'), rng.randn(shape[1]).astype('f4')
    N, C, S = shape[0], shape[1], int(np.prod(shape[2:]))
    outputs = {}
    for dtype, code in ((np.float32, 0), (np.float64, 1)):
        xs, ws, bs = (np.ascontiguousarray(a, dtype=dtype) for a in (x, w, b))
        y, stats = np.empty_like(xs), np.empty((2, N, groups), dtype)
        workspace = np.empty(max(1, lib.gn_cpu_forward_workspace_bytes(N, C, S, groups, 0)),
                             np.uint8)
        status = lib.gn_cpu_forward(code, code, xs.ctypes.data, ws.ctypes.data, bs.ctypes.data,
                                    None, y.ctypes.data, stats[0].ctypes.data,
                                    stats[1].ctypes.data, N, C, S, groups, 0,
                                    bench_kernels.ACT_CODES['none'], 1e-5,
                                    workspace.ctypes.data)
        assert status == 0, status
        outputs[code] = y.astype(np.float64)
    return float(np.abs(outputs[0] - outputs[1]).max() / np.abs(outputs[1]).max())


def time_torch(python, shape, groups, repeat, threads, tunables=None):
    env = dict(os.environ, GLIBC_TUNABLES=tunables) if tunables else None
    arguments = json.dumps([shape, groups, repeat, threads])
    result = subprocess.run([python, '-c', TORCH_TIMER, arguments], capture_output=True,
                            text=True, timeout=600, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the torch timer failed in {python}: {last_line(result.stderr)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def last_line(text):
    """What a failed child says last (a traceback's last line is its exception)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else 'no output'


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument('--torch-python', default=os.environ.get('GN_MXNET_TORCH_PYTHON'),
                        help='python of an environment with torch (or GN_MXNET_TORCH_PYTHON)')
    bench_kernels.add_timing_arguments(parser)
    args = parser.parse_args(argv)
    bench_kernels.check_groups(parser, args.groups, bench_kernels.SHAPES)
    if not args.torch_python or not os.path.isfile(args.torch_python):
        parser.error('--torch-python must name the python of an environment with torch, '
                     'e.g. /tmp/torchenv/bin/python (see the set-up line above)')
    threads = int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count() or 1)
    print(machine_header())
    lib = bench_kernels.load_kernels()
    rows = []
    for shape in bench_kernels.SHAPES:
        ours, _ = bench_kernels.bench(lib, shape, args.groups, 0, args.repeat)
        fwd, both = ours['fwd'], ours['fwd+bwd']
        as_used = time_torch(args.torch_python, list(shape), args.groups, args.repeat, threads)
        kept = time_torch(args.torch_python, list(shape), args.groups, args.repeat, threads,
                          KEEP_FREED_MEMORY)
        rows.append((shape, fwd, as_used['fwd'], kept['fwd'], both, as_used['fwd_bwd'],
                     kept['fwd_bwd']))
        version = kept['version']
    print(f"GroupNorm CPU, float32, NCHW, G={args.groups}, {threads} threads, median of "
          f"{args.repeat} (ms): ours ({gn_mxnet.cpu_isa()} build) vs torch {version}")
    print("torch: glibc defaults; torch*: freed memory kept (its kernels' own time); "
          "ratios: torch* / ours")
    header = ('shape', 'ours fwd', 'torch fwd', 'torch* fwd', 'torch*/ours', 'ours f+b',
              'torch f+b', 'torch* f+b', 'torch*/ours')
    print(' '.join(f'{h:>12}' for h in header))
    for shape, fwd, torch_fwd, kept_fwd, both, torch_both, kept_both in rows:
        cells = ['x'.join(map(str, shape)), fwd, torch_fwd, kept_fwd, kept_fwd / fwd, both,
                 torch_both, kept_both, kept_both / both]
        print(' '.join(f'{c:>12.2f}' if isinstance(c, float) else f'{c:>12}' for c in cells))
    result = subprocess.run([args.torch_python, '-c', TORCH_ERRORS, json.dumps(PRECISION_CASES)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the torch precision check failed: {last_line(result.stderr)}")
    torch_errors = json.loads(result.stdout.strip().splitlines()[-1])
    print("float32 forward, max |y - y_float64| / max |y_float64| (each against itself in float64)")
    print(' '.join(f'{h:>16}' for h in ('shape', 'groups', 'mean, std', 'ours', 'torch')))
    for (shape, groups, offset, spread), torch_error in zip(PRECISION_CASES, torch_errors):
        ours = our_forward_error(lib, shape, groups, offset, spread)
        print(f"{'x'.join(map(str, shape)):>16} {groups:>16} {f'{offset:g}, {spread:g}':>16} "
              f"{ours:>16.1e} {torch_error:>16.1e}")
    print(f"after the run: {machine_header()}")


if __name__ == '__main__':
    sys.exit(cli.run(main))
