"""The benchmark scripts run and print their tables (timings themselves are not asserted)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def table_rows(stdout, first_cell):
    return [line.split() for line in stdout.splitlines() if line.split()[:1] == [first_cell]]


def assert_names_the_machine(lines):
    """A table names the CPU, its cores, MKLDNN and the threads, before and after the run."""
    assert lines[0].startswith('CPU: ') and 'MKLDNN ' in lines[0] and 'OMP_NUM_THREADS=' in lines[0]
    assert lines[-1].startswith('after the run: CPU: ')


def test_bench_ops_prints_both_tables(native_library):
    result = run_benchmark('bench_ops.py', '--shapes', '2x64x8x8', '--repeat', '5')
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert_names_the_machine(lines)
    assert any(line.startswith('imperative') for line in lines)
    assert any(line.startswith('bound graph') for line in lines)
    assert any(line.startswith('bound graph, the raw op') for line in lines)
    rows = table_rows(result.stdout, '2x64x8x8')
    assert len(rows) == 3
    for row in rows[:2]:
        ours, mxnet_gn, ours_fb = float(row[2]), float(row[3]), float(row[9])
        assert ours > 0 and mxnet_gn > 0 and ours_fb > 0


def test_bench_torch_without_torch_says_how_to_get_it(native_library):
    env = {k: v for k, v in os.environ.items() if k != 'GN_MXNET_TORCH_PYTHON'}
    result = run_benchmark('bench_torch.py', timeout=120, env=env)
    assert result.returncode == 2
    assert '--torch-python must name the python of an environment with torch' in result.stderr


def test_bench_kernels_prints_the_fused_forms_and_their_traffic(native_library):
    result = run_benchmark('bench_kernels.py', '--shapes', '2x64x8x8', '--repeat', '5')
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ['shape'])
    assert 'relu/plain fwd' in header and 'fused bwd GB/s' in header
    rows = table_rows(result.stdout, '2x64x8x8')
    assert len(rows) == 1 and len(rows[0]) == 17
    # Times print with 2 decimals (a tiny copy shows 0.00 ms); ratios and rates are positive.
    assert all(float(cell) >= 0 for cell in rows[0][1:])
    assert all(float(cell) > 0 for cell in rows[0][5:])
    assert 'memory-traffic floor of fused/plain: fwd 1.50, bwd 1.67' in lines[-2]
    assert_names_the_machine(lines)


def test_bench_kernels_refuses_a_bad_shape(native_library):
    result = run_benchmark('bench_kernels.py', '--shapes', '2x0x8', timeout=120)
    assert result.returncode == 2 and '--shapes' in result.stderr
