"""The correctness half of benchmarks/gpu_check.py: the grid of cases, one call of the CUDA
kernels through their C ABI on torch tensors, and the comparison with torch in float64."""
import ctypes
import math

from cuda_build import builder

DTYPE_CODES = builder.DTYPE_CODES  # operators/group_norm_kernels.h's, by torch's dtype names
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "float64": 1e-10}
EPS = 1e-5
ACT_NONE = builder.ACT_CODES['none']
DEVICE = "cuda"  # a CPU dry run of the harness logic swaps this and the kernels

# ---- the cases ---------------------------------------------------------------------------

RESNET_STAGES = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))


X_STATS = (2.0, 0.5)  # x = randn * 2 + 0.5 unless a case says otherwise
# Where rounding a float32 mean would show at 1e-5 (docs/user_guide.md, "Precision"): near-constant groups
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
            gamma.data_ptr(), beta.data_ptr(), None, y.data_ptr(), mean.data_ptr(),
            rstd.data_ptr(), N, C, S, G, cl, ACT_NONE, EPS, ws.data_ptr(), self._stream())
        if status != 0:
            raise RuntimeError("gn_cuda_forward returned %d" % status)

    def backward(self, dy, x, gamma, mean, rstd, dx, dgamma, dbeta, dims, ws):
        N, C, S, G, cl = dims
        status = self.lib.gn_cuda_backward(
            DTYPE_CODES[dtype_name(x)], DTYPE_CODES[dtype_name(gamma)], dy.data_ptr(),
            x.data_ptr(), gamma.data_ptr(), None, None, mean.data_ptr(), rstd.data_ptr(),
            dx.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr(), None, N, C, S, G, cl, ACT_NONE,
            ws.data_ptr(), self._stream())
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
