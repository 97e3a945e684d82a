"""Correctness and speed of the CUDA GroupNorm kernels against PyTorch, without MXNet.

For a GPU host with Python, PyTorch and nvcc: builds operators/*.cu into a shared library with
nvcc, calls the extern "C" gn_cuda_* entries through ctypes on torch CUDA tensors, and

* checks y, mean, rstd, dx, dgamma, dbeta against torch.nn.functional.group_norm + autograd
  computed in float64 from the same inputs (channels-last tensors are compared through the
  permuted view), for float32 (rel err <= 1e-5), float16 with float16 or float32 params (<= 1e-2)
  and float64 (<= 1e-10), plus bitwise repeatability of a second run;
* times forward and forward+backward (CUDA events, median of >= 20 samples after warm-up) and
  prints ratios to torch's GroupNorm and to a device-to-device copy of x.

Exits non-zero when any check fails.

    python benchmarks/gpu_check.py                 # full grid
    python benchmarks/gpu_check.py --quick --out results.csv
    python benchmarks/gpu_check.py --graphs --out results_graphs.csv   # no launch overhead
"""
import argparse
import csv
import ctypes
import math
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_build import build_library, builder, load_library  # noqa: E402

DTYPE_CODES = builder.DTYPE_CODES  # operators/group_norm_kernels.h's, by torch's dtype names
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "float64": 1e-10}
EPS = 1e-5
DEVICE = "cuda"  # a CPU dry run of the harness logic swaps this and the kernels


# ---- the cases ---------------------------------------------------------------------------

RESNET_STAGES = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))


X_STATS = (2.0, 0.5)  # x = randn * 2 + 0.5 unless a case says otherwise
# Where rounding a float32 mean would show at 1e-5 (README, "Precision"): near-constant groups
# (var << eps, rstd ~ 316) and |mean| >> std, including groups split over many blocks.
PRECISION_CASES = [
    ((2, 32, 64, 8), 8, "near-constant", (1e-3, 3.0)),
    ((3, 4, 1, 2), 2, "near-constant, 2 per group", (1e-3, 3.0)),
    ((1, 8, 5000, 2), 2, "near-constant, split", (1e-3, 3.0)),
    ((2, 8, 16, 16), 2, "|mean| >> std", (2.0, 1000.0)),
    ((1, 8, 5000, 2), 2, "|mean| >> std, split", (2.0, 1000.0)),
]


def shape_grid(quick):
    """(shape in channels-first order, groups, tag, (x scale, x offset)); each runs
    channels-first and channels-last."""
    odd = [
        ((4, 64, 9, 11), 1, "G=1 LayerNorm, S=99"),
        ((3, 32, 5, 7), 32, "G=C InstanceNorm"),
        ((16, 96), 8, "2-D (N,C)"),
        ((8, 16), 16, "2-D, G=C: one element per group"),
        ((2, 24, 4, 6, 5), 6, "5-D"),
        ((5, 30, 13, 3), 5, "C=30, S=39"),
        ((2, 27, 7, 7), 3, "odd C=27"),
        ((1, 12, 3001), 4, "3-D, prime S, split groups"),
        ((1, 8, 70000), 2, "3-D long rows, split"),
    ]
    grid = [case + (X_STATS,) for case in odd] + PRECISION_CASES
    batches = (2,) if quick else (2, 32, 128)
    for n in batches:
        for c, h, w in RESNET_STAGES:
            grid.append(((n, c, h, w), 32, "ResNet-50", X_STATS))
    grid.append(((8, 512, 64, 64), 32, "diffusion", X_STATS))
    return grid


def timing_grid(quick):
    batches = (2, 32) if quick else (2, 32, 128)
    out = [((n, c, h, w), 32) for n in batches for c, h, w in RESNET_STAGES]
    out.append(((8, 512, 64, 64), 32))
    return out


def dtype_combos(shape):
    combos = [("float32", "float32"), ("float16", "float16"), ("float16", "float32"),
              ("float64", "float64")]
    # float64 on the largest tensors only costs time and host memory on the reference.
    if math.prod(shape) > 40_000_000:
        combos = combos[:3]
    return combos


# ---- one call through the C ABI ----------------------------------------------------------

class Kernels:
    def __init__(self, lib, torch):
        self.lib, self.torch = lib, torch

    def _stream(self):
        return ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)

    def workspaces(self, N, C, S, G, cl):
        t = self.torch
        fwd = self.lib.gn_cuda_forward_workspace_bytes(N, C, S, G, cl)
        bwd = self.lib.gn_cuda_backward_workspace_bytes(N, C, S, G, cl)
        return (t.empty(max(fwd, 1), dtype=t.uint8, device=DEVICE),
                t.empty(max(bwd, 1), dtype=t.uint8, device=DEVICE))

    def forward(self, x, gamma, beta, y, mean, rstd, dims, ws):
        N, C, S, G, cl = dims
        status = self.lib.gn_cuda_forward(
            DTYPE_CODES[dtype_name(x)], DTYPE_CODES[dtype_name(gamma)], x.data_ptr(),
            gamma.data_ptr(), beta.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
            N, C, S, G, cl, EPS, ws.data_ptr(), self._stream())
        if status != 0:
            raise RuntimeError("gn_cuda_forward returned %d" % status)

    def backward(self, dy, x, gamma, mean, rstd, dx, dgamma, dbeta, dims, ws):
        N, C, S, G, cl = dims
        status = self.lib.gn_cuda_backward(
            DTYPE_CODES[dtype_name(x)], DTYPE_CODES[dtype_name(gamma)], dy.data_ptr(),
            x.data_ptr(), gamma.data_ptr(), mean.data_ptr(), rstd.data_ptr(), dx.data_ptr(),
            dgamma.data_ptr(), dbeta.data_ptr(), N, C, S, G, cl, ws.data_ptr(), self._stream())
        if status != 0:
            raise RuntimeError("gn_cuda_backward returned %d" % status)


def dtype_name(tensor):
    return str(tensor.dtype).replace("torch.", "")


def to_channels_first(t, channels_last):
    return t.movedim(-1, 1) if channels_last and t.dim() > 2 else t


def make_inputs(torch, shape, layout, dtype, param_dtype, misaligned=False, x_stats=X_STATS):
    """x, dy in the kernel's memory layout; gamma, beta (C,). Mean offset exercises centering."""
    dt, pdt = getattr(torch, dtype), getattr(torch, param_dtype)
    stored = (shape[0],) + tuple(shape[2:]) + (shape[1],) if layout == "nhwc" else tuple(shape)
    numel = math.prod(stored)

    def tensor(scale, offset):
        if misaligned:  # one element past a 256-byte boundary: the kernels' scalar paths
            buf = torch.empty(numel + 1, dtype=dt, device=DEVICE)
            t = buf[1:].view(stored)
        else:
            t = torch.empty(stored, dtype=dt, device=DEVICE)
        t.copy_(torch.randn(stored, device=DEVICE, dtype=torch.float64) * scale + offset)
        return t

    x, dy = tensor(*x_stats), tensor(1.0, 0.0)
    gamma = (torch.randn(shape[1], device=DEVICE, dtype=torch.float64) * 0.5 + 1.0).to(pdt)
    beta = torch.randn(shape[1], device=DEVICE, dtype=torch.float64).to(pdt)
    return x, dy, gamma, beta


def dims_of(shape, layout, G):
    N, C = shape[0], shape[1]
    return (N, C, math.prod(shape[2:]), G, 1 if layout == "nhwc" else 0)


def rel_err(ours, ref, scale=None):
    ours, ref = ours.double(), ref.double()
    denom = ref.abs().max().item() if ref.numel() else 0.0
    if scale is not None:
        denom = max(denom, scale)
    diff = (ours - ref).abs().max().item() if ref.numel() else 0.0
    if diff == 0.0:
        return 0.0
    return diff / denom if denom > 0 else math.inf


def check_case(torch, kernels, shape, G, layout, dtype, param_dtype, misaligned,
               x_stats=X_STATS):
    F = torch.nn.functional
    x, dy, gamma, beta = make_inputs(torch, shape, layout, dtype, param_dtype, misaligned,
                                     x_stats)
    dims = dims_of(shape, layout, G)
    N, C, S = dims[0], dims[1], dims[2]
    acc = torch.float64 if dtype == "float64" else torch.float32
    ws_f, ws_b = kernels.workspaces(*dims)

    def run_once():
        y = torch.empty_like(x)
        mean = torch.empty(N * G, dtype=acc, device=DEVICE)
        rstd = torch.empty(N * G, dtype=acc, device=DEVICE)
        dx = torch.empty_like(x)
        dgamma, dbeta = torch.empty_like(gamma), torch.empty_like(gamma)
        kernels.forward(x, gamma, beta, y, mean, rstd, dims, ws_f)
        kernels.backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, dims, ws_b)
        return y, mean, rstd, dx, dgamma, dbeta

    outs = run_once()
    again = run_once()
    torch.cuda.synchronize()
    repeatable = all(torch.equal(a, b) for a, b in zip(outs, again))
    y, mean, rstd, dx, dgamma, dbeta = outs

    cl = layout == "nhwc"
    xr = to_channels_first(x, cl).double().requires_grad_()
    gr = gamma.double().requires_grad_()
    br = beta.double().requires_grad_()
    dyr = to_channels_first(dy, cl).double()
    yr = F.group_norm(xr, G, gr, br, EPS)
    dxr, dgr, dbr = torch.autograd.grad(yr, (xr, gr, br), dyr)
    with torch.no_grad():
        groups = xr.reshape(N, G, -1)
        mean_r = groups.mean(-1)
        rstd_r = 1.0 / torch.sqrt(((groups - mean_r[..., None]) ** 2).mean(-1) + EPS)
        # dx, dgamma, dbeta are judged against the size of the terms they are computed from, so
        # that a result that cancels to ~0 (e.g. one element per group) is not divided by ~0:
        # dx = rstd*gamma*dy + ..., dgamma ~ sqrt(sum dy^2) when xhat ~ 1.
        bcast = (N, C) + (1,) * (len(shape) - 2)
        scale_c = (rstd_r.repeat_interleave(C // G, 1).reshape(bcast)
                   * gr.detach().reshape((1, C) + (1,) * (len(shape) - 2)))
        dx_terms = (scale_c * dyr).abs().max().item()
        param_terms = dyr.pow(2).transpose(0, 1).reshape(C, -1).sum(1).sqrt().max().item()

    errs = {
        "y": rel_err(to_channels_first(y, cl), yr.detach()),
        "mean": rel_err(mean.view(N, G), mean_r),
        "rstd": rel_err(rstd.view(N, G), rstd_r),
        "dx": rel_err(to_channels_first(dx, cl), dxr, scale=dx_terms),
        "dgamma": rel_err(dgamma, dgr, scale=param_terms),
        "dbeta": rel_err(dbeta, dbr, scale=param_terms),
    }
    tol = TOLERANCE[dtype]
    passed = repeatable and all(e <= tol for e in errs.values())
    return errs, tol, repeatable, passed


# ---- timing ------------------------------------------------------------------------------

def time_ms(torch, fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    single = max(start.elapsed_time(end), 1e-3)
    inner = max(1, min(50, int(math.ceil(0.2 / single))))  # >= ~0.2 ms per sample
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples)


def graphed(torch, fn):
    """fn captured in a CUDA graph, so that timings leave out host launch overhead; None when
    capture fails (then the caller times fn eagerly)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        return graph.replay
    except Exception as exc:  # noqa: BLE001 - any capture problem means: time it eagerly
        print("  (CUDA graph capture failed, timing eagerly: %s)" % exc, flush=True)
        torch.cuda.synchronize()
        return None


def time_case(torch, kernels, shape, G, layout, dtype, repeats, warmup, graphs=False):
    F = torch.nn.functional
    x, dy, gamma, beta = make_inputs(torch, shape, layout, dtype, dtype)
    dims = dims_of(shape, layout, G)
    N = dims[0]
    acc = torch.float64 if dtype == "float64" else torch.float32
    ws_f, ws_b = kernels.workspaces(*dims)
    y, dx = torch.empty_like(x), torch.empty_like(x)
    mean = torch.empty(N * G, dtype=acc, device=DEVICE)
    rstd = torch.empty_like(mean)
    dgamma, dbeta = torch.empty_like(gamma), torch.empty_like(gamma)
    copy_dst = torch.empty_like(x)
    cl = layout == "nhwc"
    xt = to_channels_first(x, cl).detach().requires_grad_()
    gt, bt = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    dyt = to_channels_first(dy, cl)

    def ours_fwd():
        kernels.forward(x, gamma, beta, y, mean, rstd, dims, ws_f)

    def ours_fwd_bwd():
        kernels.forward(x, gamma, beta, y, mean, rstd, dims, ws_f)
        kernels.backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, dims, ws_b)

    def torch_fwd():
        with torch.no_grad():
            F.group_norm(xt, G, gt, bt, EPS)

    def torch_fwd_bwd():
        out = F.group_norm(xt, G, gt, bt, EPS)
        torch.autograd.grad(out, (xt, gt, bt), dyt)

    t = {"graphs": graphs}
    for name, fn in (("ours_fwd", ours_fwd), ("ours_fwd_bwd", ours_fwd_bwd),
                     ("torch_fwd", torch_fwd), ("torch_fwd_bwd", torch_fwd_bwd),
                     ("copy", lambda: copy_dst.copy_(x))):
        replay = graphed(torch, fn) if graphs else None
        t["graphs"] = t["graphs"] and replay is not None  # True only if every column was
        t[name] = time_ms(torch, replay or fn, repeats, warmup)
    moved = 2 * x.numel() * x.element_size()  # forward reads x and writes y at least once
    t["fwd_vs_torch"] = t["ours_fwd"] / t["torch_fwd"]
    t["fwd_bwd_vs_torch"] = t["ours_fwd_bwd"] / t["torch_fwd_bwd"]
    t["fwd_vs_copy"] = t["ours_fwd"] / t["copy"]
    t["fwd_GBps"] = moved / (t["ours_fwd"] * 1e-3) / 1e9
    t["fwd_bw_pct_of_copy"] = 100.0 * t["copy"] / t["ours_fwd"]
    return t


# ---- driver ------------------------------------------------------------------------------

def fmt_shape(shape):
    return "x".join(str(d) for d in shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, for a smoke run")
    parser.add_argument("--out", help="write every check and timing row to this CSV")
    parser.add_argument("--lib", help="use this prebuilt library instead of building one")
    parser.add_argument("--arch", type=int, help="build for this sm only (default: this GPU's)")
    parser.add_argument("--repeats", type=int, default=25, help="timed samples (>= 20)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--graphs", action="store_true",
                        help="time CUDA-graph replays (no host launch overhead) for every column")
    args = parser.parse_args(argv)
    if args.repeats < 20:
        parser.error("--repeats must be >= 20")

    try:
        import torch  # only here: the module is importable where torch is absent
    except ImportError as exc:
        print("gpu_check: needs PyTorch with CUDA (%s)" % exc, file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    major, minor = torch.cuda.get_device_capability()
    lib_path = args.lib
    if lib_path is None:
        nvcc = builder.find_nvcc()
        if nvcc is None:
            raise SystemExit("gpu_check: nvcc not found ($NVCC, PATH, /usr/local/cuda/bin)")
        archs = builder.gpu_archs(nvcc, args.arch or major * 10 + minor)
        lib_path = os.path.join(tempfile.mkdtemp(prefix="gn_cuda_"), "libgn_cuda.so")
        print("building %s: %s" % (lib_path, " ".join(builder.gencode_flags(archs))), flush=True)
        build_library(lib_path, archs, nvcc=nvcc)
    kernels = Kernels(load_library(lib_path), torch)
    print("device: %s (sm_%d%d), torch %s" % (torch.cuda.get_device_name(), major, minor,
                                             torch.__version__))

    rows, failures = [], 0
    print("\n%-22s %-5s %4s %-8s %-7s %4s %9s %9s %9s %9s %9s %9s %-4s" % (
        "shape (N,C,...)", "lay", "G", "dtype", "param", "mis", "y", "mean", "rstd", "dx",
        "dgamma", "dbeta", "ok"))
    for shape, G, tag, x_stats in shape_grid(args.quick):
        small = math.prod(shape) < 1_000_000
        for layout in ("nchw", "nhwc"):
            for dtype, param_dtype in dtype_combos(shape):
                for misaligned in ((False, True) if small else (False,)):
                    try:
                        errs, tol, repeatable, ok = check_case(
                            torch, kernels, shape, G, layout, dtype, param_dtype, misaligned,
                            x_stats)
                    except RuntimeError as exc:
                        errs, tol, repeatable, ok = {}, TOLERANCE[dtype], False, False
                        print("ERROR %s: %s" % (fmt_shape(shape), exc))
                    failures += not ok
                    print("%-22s %-5s %4d %-8s %-7s %4s %s %-4s%s" % (
                        fmt_shape(shape), layout, G, dtype, param_dtype, "yes" if misaligned else "",
                        " ".join("%9.2e" % errs.get(k, math.nan)
                                 for k in ("y", "mean", "rstd", "dx", "dgamma", "dbeta")),
                        "ok" if ok else "FAIL", "" if repeatable else "  (not repeatable)"),
                        flush=True)
                    rows.append(dict(kind="check", shape=fmt_shape(shape), layout=layout, groups=G,
                                     dtype=dtype, param_dtype=param_dtype, misaligned=misaligned,
                                     note=tag, tol=tol, repeatable=repeatable, passed=ok,
                                     **{"err_" + k: v for k, v in errs.items()}))

    if not args.no_timing:
        print("\nms = median of %d CUDA-event samples%s; ratios < 1 mean ours is faster" % (
            args.repeats, " of CUDA-graph replays" if args.graphs else ""))
        print("GB/s and %copy count the least traffic a forward needs (read x, write y once) and"
              " compare it with the copy's")
        print("%-18s %-5s %-8s %8s %8s %6s %8s %8s %6s %8s %6s %7s %6s" % (
            "shape", "lay", "dtype", "fwd", "torch", "ratio", "fwd+bwd", "torch", "ratio",
            "copy", "/copy", "GB/s", "%copy"))
        for shape, G in timing_grid(args.quick):
            for layout in ("nchw", "nhwc"):
                for dtype in ("float32", "float16"):
                    t = time_case(torch, kernels, shape, G, layout, dtype, args.repeats,
                                  args.warmup, args.graphs)
                    print("%-18s %-5s %-8s %8.4f %8.4f %6.2f %8.4f %8.4f %6.2f %8.4f %6.2f %7.0f %6.1f" % (
                        fmt_shape(shape), layout, dtype, t["ours_fwd"], t["torch_fwd"],
                        t["fwd_vs_torch"], t["ours_fwd_bwd"], t["torch_fwd_bwd"],
                        t["fwd_bwd_vs_torch"], t["copy"], t["fwd_vs_copy"], t["fwd_GBps"],
                        t["fwd_bw_pct_of_copy"]), flush=True)
                    rows.append(dict(kind="time", shape=fmt_shape(shape), layout=layout, groups=G,
                                     dtype=dtype, param_dtype=dtype, **t))

    if args.out:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        print("\nwrote %s" % args.out)
    checks = sum(r["kind"] == "check" for r in rows)
    print("\n%d of %d checks failed" % (failures, checks))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
