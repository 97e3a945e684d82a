"""Our CPU kernels vs PyTorch's CPU GroupNorm (torch.nn.functional.group_norm), side by side
in one run, on the ResNet-50 shapes of DESIGN §8 (fp32, G=32, same thread count).

torch cannot share this project's environment (gluoncv refuses torch >= 2), so it runs in a
separate Python given by --torch-python, in subprocesses, timed the same way: median after
two warm-up calls. Ours is timed through the C ABI on preallocated buffers (bench_kernels.py).
torch allocates its outputs per call; it runs twice: with glibc's defaults, as in use (buffers
over glibc's 32 MB mmap threshold page-fault on every call), and with freed memory kept
(KEEP_FREED_MEMORY), which leaves its kernels' own time: the ratios are against that run.
Set up a torch environment with:  python3.11 -m venv /tmp/torchenv &&
/tmp/torchenv/bin/pip install torch numpy
"""
import argparse
import json
import os
import subprocess
import sys

import bench_kernels
import gn_mxnet

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


def time_torch(python, shape, groups, repeat, threads, tunables=None):
    env = dict(os.environ, GLIBC_TUNABLES=tunables) if tunables else None
    arguments = json.dumps([shape, groups, repeat, threads])
    result = subprocess.run([python, '-c', TORCH_TIMER, arguments], capture_output=True,
                            text=True, timeout=600, env=env)
    if result.returncode != 0:
        sys.exit(f"bench_torch: the torch timer failed in {python}:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--torch-python', default=os.environ.get('GN_MXNET_TORCH_PYTHON'),
                        help='python of an environment with torch (or GN_MXNET_TORCH_PYTHON)')
    parser.add_argument('--groups', type=int, default=32)
    parser.add_argument('--repeat', type=int, default=15, help='timed runs per cell (>= 5)')
    args = parser.parse_args()
    if not args.torch_python or not os.path.isfile(args.torch_python):
        parser.error('--torch-python must name the python of an environment with torch, '
                     'e.g. /tmp/torchenv/bin/python (see the set-up line above)')
    threads = int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count() or 1)
    lib = bench_kernels.load_kernels()
    rows = []
    for shape in bench_kernels.SHAPES:
        _, fwd, _, both = bench_kernels.bench(lib, shape, args.groups, 0, args.repeat)
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


if __name__ == '__main__':
    main()
