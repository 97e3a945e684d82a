"""The timing half of benchmarks/gpu_check.py: forward and forward+backward of the CUDA kernels
and of torch's GroupNorm, and a copy of x, in CUDA events (optionally CUDA-graph replays)."""
import math
import statistics

from gpu_check_cases import EPS, RESNET_STAGES, dims_of, make_inputs, to_channels_first


def timing_grid(quick):
    batches = (2, 32) if quick else (2, 32, 128)
    out = [((n, c, h, w), 32) for n in batches for c, h, w in RESNET_STAGES]
    out.append(((8, 512, 64, 64), 32))
    return out


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
    mean = torch.empty(N * G, dtype=acc, device=x.device)
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
