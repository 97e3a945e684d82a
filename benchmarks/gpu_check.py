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
    python benchmarks/gpu_check.py --quick --out-dir runs/gpu   # -> runs/gpu/gpu_check.csv
    python benchmarks/gpu_check.py --graphs --out-dir runs/gpu  # no launch overhead
                                                                # -> runs/gpu/gpu_check_graphs.csv
"""
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The checkout, not an install: GPU hosts have none. gn_mxnet.utils needs no MXNet.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cuda_build import build_library, builder, load_library  # noqa: E402
from gn_mxnet.utils import cli  # noqa: E402
from gn_mxnet.utils.tables import write_csv  # noqa: E402
from gpu_check_cases import TOLERANCE, Kernels, check_case, dtype_combos, shape_grid  # noqa: E402
from gpu_check_timing import time_case, timing_grid  # noqa: E402


# What --out-dir receives: one CSV of every check and timing row.
CSV_NAME, GRAPHS_CSV_NAME = "gpu_check", "gpu_check_graphs"


def fmt_shape(shape):
    return "x".join(str(d) for d in shape)


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, for a smoke run")
    parser.add_argument("--out-dir", help="write every check and timing row to OUT_DIR/%s.csv "
                        "(%s.csv with --graphs)" % (CSV_NAME, GRAPHS_CSV_NAME))
    parser.add_argument("--lib", help="use this prebuilt library instead of building one")
    parser.add_argument("--arch", type=cli.positive_int,
                        help="build for this sm only (default: this GPU's)")
    parser.add_argument("--repeat", type=cli.int_range(20), default=25,
                        help="timed samples (>= 20)")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=5,
                        help="untimed runs before the samples")
    parser.add_argument("--no-timing", action="store_true", help="the checks only")
    parser.add_argument("--graphs", action="store_true",
                        help="time CUDA-graph replays (no host launch overhead) for every column")
    args = parser.parse_args(argv)
    with cli.usage_errors(parser):
        if args.out_dir:
            cli.output_folder(args.out_dir, "--out-dir")

    try:
        import torch  # only here: the module is importable where torch is absent
    except ImportError as exc:
        return cli.fail("gpu_check: needs PyTorch with CUDA (%s)" % exc, 2)
    if not torch.cuda.is_available():
        return cli.fail("gpu_check: no CUDA device visible to torch", 2)
    torch.manual_seed(0)
    major, minor = torch.cuda.get_device_capability()
    lib_path = args.lib
    if lib_path is None:
        nvcc = builder.find_nvcc()
        if nvcc is None:
            raise FileNotFoundError("gpu_check: nvcc not found ($NVCC, PATH, /usr/local/cuda/bin)")
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
            args.repeat, " of CUDA-graph replays" if args.graphs else ""))
        print("GB/s and %copy count the least traffic a forward needs (read x, write y once) and"
              " compare it with the copy's")
        print("%-18s %-5s %-8s %8s %8s %6s %8s %8s %6s %8s %6s %7s %6s" % (
            "shape", "lay", "dtype", "fwd", "torch", "ratio", "fwd+bwd", "torch", "ratio",
            "copy", "/copy", "GB/s", "%copy"))
        for shape, G in timing_grid(args.quick):
            for layout in ("nchw", "nhwc"):
                for dtype in ("float32", "float16"):
                    t = time_case(torch, kernels, shape, G, layout, dtype, args.repeat,
                                  args.warmup, args.graphs)
                    print("%-18s %-5s %-8s %8.4f %8.4f %6.2f %8.4f %8.4f %6.2f %8.4f %6.2f %7.0f %6.1f" % (
                        fmt_shape(shape), layout, dtype, t["ours_fwd"], t["torch_fwd"],
                        t["fwd_vs_torch"], t["ours_fwd_bwd"], t["torch_fwd_bwd"],
                        t["fwd_bwd_vs_torch"], t["copy"], t["fwd_vs_copy"], t["fwd_GBps"],
                        t["fwd_bw_pct_of_copy"]), flush=True)
                    rows.append(dict(kind="time", shape=fmt_shape(shape), layout=layout, groups=G,
                                     dtype=dtype, param_dtype=dtype, **t))

    if args.out_dir:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        os.makedirs(args.out_dir, exist_ok=True)
        path = os.path.join(args.out_dir, (GRAPHS_CSV_NAME if args.graphs else CSV_NAME) + ".csv")
        write_csv(path, rows, fields, fill_missing=True)
        print("\nwrote %s" % path)
    checks = sum(r["kind"] == "check" for r in rows)
    print("\n%d of %d checks failed" % (failures, checks))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
