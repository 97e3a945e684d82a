"""gn_mxnet/operator/build.py is the only recipe: setup.py ships what the CUDA tests and
gpu_check.py compile, no other file restates its flags, arch list or the C ABI's codes, and it
loads where nothing but the standard library is (pip's build isolation, GPU hosts without
MXNet)."""
import os
import re
import subprocess
import sys

import pytest
import setuptools

from build_modules import NVCC, REPO, builder, ci_arch, cuda_build, load_by_path, needs_nvcc

SOURCE_DIRS = ("operators", "tests", "benchmarks", "gn_mxnet", "symbols", "train")
SOURCE_ENDINGS = (".py", ".h", ".cc", ".cu", ".cuh")
HERE = os.path.abspath(__file__)


def _sources(*skip):
    """The repository's source files (setup.py and those under SOURCE_DIRS), less `skip`."""
    paths = [os.path.join(REPO, "setup.py")]
    for top in SOURCE_DIRS:
        for folder, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            paths += [os.path.join(folder, f) for f in files if f.endswith(SOURCE_ENDINGS)]
    skip = {os.path.abspath(p) for p in skip}
    return [p for p in sorted(paths) if os.path.abspath(p) not in skip]


def _load_setup_py(monkeypatch):
    """setup.py as a module, with setuptools.setup() recording its arguments instead."""
    recorded = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: recorded.update(kwargs))
    module = load_by_path(os.path.join(REPO, "setup.py"), "gn_mxnet_setup_py")
    return module, recorded


def _files_by_name(command):
    """The command with its objects and libraries cut to their file names: the build dirs
    differ from one use to the next."""
    return [os.path.basename(a) if a.endswith((".o", ".so")) else a for a in command]


def _split_gencode(command):
    """(the command less its -gencode pairs, those pairs)."""
    rest, gencode = [], []
    for i, arg in enumerate(command):
        (gencode if arg == "-gencode" or command[i - 1] == "-gencode" else rest).append(arg)
    return rest, gencode


def test_setup_py_builds_with_the_builder_and_installs_symbols(monkeypatch):
    setup_py, recorded = _load_setup_py(monkeypatch)
    assert recorded["cmdclass"]["build_ext"] is setup_py.BuildOperatorLibrary
    assert os.path.samefile(setup_py.builder.__file__, builder.__file__)
    assert {"gn_mxnet", "symbols"} <= set(recorded["packages"])


@needs_nvcc
def test_cuda_tests_compile_what_setup_py_ships(monkeypatch, tmp_path):
    setup_py, _ = _load_setup_py(monkeypatch)
    monkeypatch.setenv("GN_MXNET_CUDA", "1")
    shipped_output = str(tmp_path / "gn_mxnet" / "libgn_mxnet.so")
    shipped = setup_py.library_plan(shipped_output, str(tmp_path / "build"))
    shipped_nvcc = [c for c in shipped.compiles if c[0] == NVCC]
    assert len(shipped_nvcc) == len(builder.cuda_sources()) > 0

    plans = []
    monkeypatch.setattr(builder, "execute", lambda plan: plans.append(plan) or "")
    archs = builder.cuda_archs(NVCC)
    tested_output = str(tmp_path / "libgn_cuda.so")
    cuda_build.build_library(tested_output, archs, nvcc=NVCC)  # the slow all-arch test's build
    cuda_build.build_library(tested_output, [ci_arch()], nvcc=NVCC)  # the CI build's
    tested, ci = plans

    assert ([_files_by_name(c) for c in tested.compiles]
            == [_files_by_name(c) for c in shipped_nvcc])
    # The CI build differs in its archs alone.
    assert len(ci.compiles) == len(shipped_nvcc)
    for ci_line, shipped_line in zip(ci.compiles, shipped_nvcc):
        (ci_rest, ci_gencode), (shipped_rest, _) = map(_split_gencode, (ci_line, shipped_line))
        assert _files_by_name(ci_rest) == _files_by_name(shipped_rest)
        assert ci_gencode == builder.gencode_flags([ci_arch()])
    # Linked like the shipped library, less its CPU objects and their OpenMP.
    cpu_objects = [c[c.index("-o") + 1] for c in shipped.compiles if c[0] != NVCC]
    expected = [tested_output if a == shipped_output else a for a in shipped.link
                if a not in cpu_objects and a != "-fopenmp"]
    assert _files_by_name(tested.link) == _files_by_name(expected)


def test_no_file_but_the_builder_spells_out_a_build_flag():
    flags = re.compile(r"-gencode|-Xcompiler|-mavx2|-lcudart_static|--list-gpu-arch|"
                       r"GN_KERNEL_ISA=|\b70\D{1,4}75\D{1,4}80\b")
    offenders = []
    for path in _sources(builder.__file__, HERE):
        if path.endswith(".py"):
            with open(path) as f:
                offenders += ["%s:%d" % (os.path.relpath(path, REPO), n)
                              for n, line in enumerate(f, 1) if flags.search(line)]
    assert not offenders, offenders


def test_dtype_and_status_codes_live_in_the_kernels_header():
    assert set(builder.DTYPE_CODES) == {"float32", "float64", "float16"}
    assert set(builder.STATUS_CODES) == {"ok", "bad_dtype", "bad_shape", "device_error",
                                         "bad_argument"}
    for codes in (builder.DTYPE_CODES, builder.STATUS_CODES):
        assert len(set(codes.values())) == len(codes)
    # A dtype name given a number: `kFloat32 = 0`, `FLOAT16 = 2`, `"float64": 1`.
    restated = re.compile(r"(?i)float(16|32|64)\b[\"']?\s*[:=]\s*\d+\b(?![.\de])")
    offenders = []
    for path in _sources(builder.KERNELS_HEADER, HERE):
        with open(path, errors="replace") as f:
            offenders += ["%s:%d" % (os.path.relpath(path, REPO), n)
                          for n, line in enumerate(f, 1) if restated.search(line)]
    assert not offenders, offenders


def test_builder_loads_with_the_standard_library_alone():
    code = ("import importlib.util, sys\n"
            "before = set(sys.modules)\n"
            "spec = importlib.util.spec_from_file_location('b', sys.argv[1])\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print(sorted(m for m in set(sys.modules) - before\n"
            "             if m.split('.')[0] not in sys.stdlib_module_names))\n")
    done = subprocess.run([sys.executable, "-I", "-c", code, builder.__file__],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# gpu_check.py as a GPU host without MXNet runs it: mxnet and gluoncv missing (and here torch);
# gn_mxnet comes from the checkout, and what gpu_check takes of it (utils) needs neither.
WITHOUT_MXNET = """
import runpy, sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mxnet', 'gluoncv', 'torch'):
            raise ModuleNotFoundError('No module named %r' % name)
sys.meta_path.insert(0, Missing())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.parametrize("argv,rc,expected", [
    (["--help"], 0, "usage: gpu_check.py"),
    (["--quick"], 2, "gpu_check: needs PyTorch with CUDA"),
])
def test_gpu_check_starts_without_mxnet(argv, rc, expected):
    script = os.path.join(REPO, "benchmarks", "gpu_check.py")
    done = subprocess.run([sys.executable, "-c", WITHOUT_MXNET, script, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == rc, done.stderr
    assert expected in done.stdout + done.stderr
