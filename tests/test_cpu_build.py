"""The CPU kernels' two builds (generic x86-64 and AVX2 + FMA + F16C, setup.py): each is correct,
the choice between them works, and no AVX instruction leaks outside the AVX2 build (which
would crash the generic build on an older CPU)."""
import os
import platform
import shutil
import subprocess
import sys

import pytest

import gn_mxnet

TESTS = os.path.dirname(os.path.abspath(__file__))
X86 = platform.machine().lower() in ('x86_64', 'amd64')


def run_python(code, **env):
    return subprocess.run([sys.executable, '-c', code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)


def test_isa_choice_follows_cpu_and_environment(native_library):
    code = 'import gn_mxnet; print(gn_mxnet.cpu_isa())'
    forced = run_python(code, GN_MXNET_CPU_ISA='generic')
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == 'generic'
    flags = open('/proc/cpuinfo').read().split() if os.path.exists('/proc/cpuinfo') else []
    wanted = {'avx2', 'fma', 'f16c'}
    expected = 'avx2' if X86 and wanted <= set(flags) else 'generic'
    assert gn_mxnet.cpu_isa() == expected


def test_unknown_isa_choice_is_refused():
    result = run_python('import gn_mxnet; gn_mxnet.load_library()', GN_MXNET_CPU_ISA='avx512')
    assert result.returncode != 0
    assert "GN_MXNET_CPU_ISA must be one of auto, generic, got 'avx512'" in result.stderr


def test_generic_build_matches_reference(native_library):
    """The native checks of test_group_norm.py, rerun on the generic build."""
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         os.path.join(TESTS, 'test_group_norm.py'),
         '-k', 'native and (grid or large or mean_rounding or float16 or hypothesis)'],
        env=dict(os.environ, GN_MXNET_CPU_ISA='generic'), capture_output=True, text=True,
        timeout=600, cwd=os.path.dirname(TESTS))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert ' passed' in result.stdout and ' failed' not in result.stdout


@pytest.mark.skipif(not X86 or shutil.which('objdump') is None, reason='x86-64 with objdump')
def test_avx_instructions_stay_in_the_avx2_build(native_library):
    listing = subprocess.run(['objdump', '-d', '--no-show-raw-insn', '-C',
                              gn_mxnet.library_path()],
                             capture_output=True, text=True, check=True).stdout
    function, offenders, avx2_functions = None, set(), 0
    for line in listing.splitlines():
        if line.endswith('>:'):
            function = line
            avx2_functions += 'gn::avx2::' in line
        elif '\tv' in line and function and 'gn::avx2::' not in function:
            offenders.add(function)  # VEX-encoded (AVX) instruction outside gn::avx2
    assert avx2_functions > 0, 'the library has no AVX2 build'
    assert not offenders, sorted(offenders)[:10]
