"""Builds the GroupNormalization operator library into the gn_mxnet package.

The library compiles operators/*.cc (and operators/*.cu when CUDA is enabled) together with the
*installed* mxnet's src/lib_api.cc against its include/mxnet/lib_api.h.

Environment:
  GN_MXNET_CUDA=1 / 0     force the CUDA build on / off (default: on when nvcc is found)
  GN_MXNET_CUDA_ARCHS     e.g. "75;80;90" (default: 70 75 80 86 89 90, those nvcc supports)
  GN_MXNET_MXNET_DIST     the mxnet requirement to declare, e.g. "mxnet-cu112==1.9.1"
  GN_MXNET_CXXFLAGS       extra g++ flags, e.g. "-march=native" for a build that stays on this CPU

The CPU kernels are built twice on x86-64, generic and AVX2 + FMA + F16C; the library runs the
AVX2 build where the CPU has all three. GN_MXNET_CPU_ISA=generic at run time forces the generic
build.
"""
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
OPERATORS = os.path.join(ROOT, 'operators')
LIBRARY = 'libgn_mxnet.so'
WANTED_CUDA_ARCHS = ('70', '75', '80', '86', '89', '90')
CXX_FLAGS = ['-std=c++17', '-O3', '-fPIC', '-fopenmp', '-Wall', '-Wextra', '-DNDEBUG',
             *os.environ.get('GN_MXNET_CXXFLAGS', '').split()]
# The kernels are compiled once per instruction set, into namespaces gn::<isa>; the library
# picks one at run time (group_norm_cpu.cc). AVX2 + FMA doubles the vector width of the
# generic x86-64 build, which is what makes the kernels memory-bound rather than compute-bound.
CPU_KERNEL_SOURCES = ('group_norm_cpu_forward.cc', 'group_norm_cpu_backward.cc',
                      'group_norm_cpu_entry.cc')


def cpu_isas():
    """isa -> extra g++ flags: the generic build always, AVX2 + FMA + F16C on x86-64."""
    isas = {'generic': []}
    if platform.machine().lower() in ('x86_64', 'amd64'):
        isas['avx2'] = ['-mavx2', '-mfma', '-mf16c']
    return isas


def mxnet_sources():
    """(include dir, lib_api.cc) of the mxnet that is installed (or in the build env)."""
    spec = importlib.util.find_spec('mxnet')
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gn-mxnet: mxnet is not installed; install mxnet==1.9.1 (or mxnet-cuXXX==1.9.1) "
                 "first, or let pip's build isolation provide it")
    package_dir = list(spec.submodule_search_locations)[0]
    include = os.path.join(package_dir, 'include')
    lib_api = os.path.join(package_dir, 'src', 'lib_api.cc')
    for path in (os.path.join(include, 'mxnet', 'lib_api.h'), lib_api):
        if not os.path.isfile(path):
            sys.exit(f"gn-mxnet: {path} is missing from the installed mxnet; need mxnet 1.9.1")
    return include, lib_api


def find_nvcc():
    nvcc = shutil.which('nvcc')
    if nvcc is None and os.path.isfile('/usr/local/cuda/bin/nvcc'):
        nvcc = '/usr/local/cuda/bin/nvcc'
    return nvcc


def cuda_library_dir(nvcc):
    """Where libcudart_static.a is: $CUDA_HOME, else the -L dirs nvcc itself links with (nvcc
    may be a wrapper script outside its toolkit)."""
    candidates = [os.path.join(os.environ[v], sub) for v in ('CUDA_HOME', 'CUDA_PATH')
                  if os.environ.get(v) for sub in ('lib64', 'lib')]
    with tempfile.TemporaryDirectory() as scratch:
        probe = os.path.join(scratch, 'probe.cu')
        open(probe, 'w').close()
        dryrun = subprocess.run([nvcc, '-dryrun', '-c', probe, '-o', probe + '.o'],
                                capture_output=True, text=True)
    for line in (dryrun.stdout + dryrun.stderr).splitlines():
        if 'LIBRARIES=' in line:
            candidates += [flag.strip('"')[2:] for flag in line.split() if flag.strip('"').startswith('-L')]
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, 'libcudart_static.a')):
            return os.path.normpath(directory)
    sys.exit(f"gn-mxnet: libcudart_static.a not found in {candidates}; set CUDA_HOME")


def cuda_archs(nvcc):
    wanted = os.environ.get('GN_MXNET_CUDA_ARCHS')
    wanted = wanted.replace(',', ';').split(';') if wanted else WANTED_CUDA_ARCHS
    listed = subprocess.run([nvcc, '--list-gpu-arch'], capture_output=True, text=True).stdout
    supported = {line.strip().split('_')[-1] for line in listed.split()}
    archs = [a for a in wanted if a in supported]
    if not archs:
        sys.exit(f"gn-mxnet: nvcc supports none of the CUDA archs {wanted}")
    return archs


class BuildOperatorLibrary(build_ext):
    """Compiles the operator library with g++ (and nvcc) instead of a Python extension."""

    def get_ext_filename(self, ext_name):
        return os.path.join(*ext_name.split('.')[:-1], LIBRARY)

    def build_extension(self, ext):
        include, lib_api = mxnet_sources()
        use_cuda = os.environ.get('GN_MXNET_CUDA')
        nvcc = find_nvcc()
        cu_sources = sorted(f for f in os.listdir(OPERATORS) if f.endswith('.cu'))
        cuda = (use_cuda == '1') or (use_cuda is None and nvcc is not None and bool(cu_sources))
        if cuda and nvcc is None:
            sys.exit("gn-mxnet: GN_MXNET_CUDA=1 but nvcc was not found")
        build_dir = os.path.join(self.build_temp, 'operators')
        os.makedirs(build_dir, exist_ok=True)
        defines = ['-DGN_MXNET_WITH_CUDA'] if cuda else []
        jobs = []
        isas = cpu_isas()
        if 'avx2' in isas:
            defines.append('-DGN_MXNET_WITH_AVX2')
        for source in sorted(f for f in os.listdir(OPERATORS) if f.endswith('.cc')):
            builds = isas.items() if source in CPU_KERNEL_SOURCES else [(None, [])]
            for isa, isa_flags in builds:
                isa_define = [f'-DGN_KERNEL_ISA={isa}'] if isa else []
                suffix = f'.{isa}.o' if isa else '.o'
                jobs.append(['g++', *CXX_FLAGS, *isa_flags, *defines, *isa_define,
                             '-isystem', include, f'-I{OPERATORS}', '-c',
                             os.path.join(OPERATORS, source),
                             '-o', os.path.join(build_dir, source + suffix)])
        jobs.append(['g++', *CXX_FLAGS, '-w', f'-I{include}', '-c', lib_api,
                     '-o', os.path.join(build_dir, 'lib_api.cc.o')])
        link_extra = []
        if cuda:
            gencode = []
            archs = cuda_archs(nvcc)
            for arch in archs:
                gencode += ['-gencode', f'arch=compute_{arch},code=sm_{arch}']
            gencode += ['-gencode', f'arch=compute_{archs[-1]},code=compute_{archs[-1]}']
            for source in cu_sources:
                jobs.append([nvcc, '-O3', '-std=c++17', '-Xcompiler', '-fPIC', *gencode,
                             f'-I{OPERATORS}', '-c', os.path.join(OPERATORS, source),
                             '-o', os.path.join(build_dir, source + '.o')])
            link_extra = [f'-L{cuda_library_dir(nvcc)}', '-lcudart_static', '-lrt', '-ldl',
                          '-lpthread']
        print(f"gn-mxnet: building {LIBRARY} ({'CPU + CUDA' if cuda else 'CPU only'})",
              flush=True)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for job, result in zip(jobs, pool.map(self._compile, jobs)):
                if result.returncode != 0:
                    sys.stderr.write(result.stdout + result.stderr)
                    sys.exit(f"gn-mxnet: compile failed: {' '.join(job)}")
        # Generic objects first: where both builds emit the same out-of-line template (std::
        # helpers), the linker keeps the first copy, which must run on any x86-64 CPU.
        objects = sorted((job[job.index('-o') + 1] for job in jobs),
                         key=lambda path: path.endswith('.avx2.o'))
        output = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        self._run(['g++', '-shared', '-fopenmp', '-o', output, *objects, *link_extra])

    @staticmethod
    def _compile(command):
        return subprocess.run(command, capture_output=True, text=True)

    def _run(self, command):
        result = self._compile(command)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            sys.exit(f"gn-mxnet: link failed: {' '.join(command)}")


def mxnet_requirement():
    """mxnet==1.9.1, or the installed CUDA build of it (mxnet-cuXXX satisfies the pin too)."""
    if os.environ.get('GN_MXNET_MXNET_DIST'):
        return os.environ['GN_MXNET_MXNET_DIST']
    for dist in importlib.metadata.distributions():
        name = (dist.metadata['Name'] or '').lower()
        if name.startswith('mxnet-cu') and dist.version == '1.9.1':
            return f'{name}==1.9.1'
    return 'mxnet==1.9.1'


setup(
    name='gn-mxnet',
    version='0.1.0',
    description='Paper-exact, fused Group Normalization for Apache MXNet 1.9',
    python_requires='>=3.8,<3.12',
    packages=find_packages(include=['gn_mxnet', 'gn_mxnet.*', 'symbols']),
    ext_modules=[Extension('gn_mxnet.libgn_mxnet', sources=[])],
    cmdclass={'build_ext': BuildOperatorLibrary},
    install_requires=[
        mxnet_requirement(),
        'numpy<1.24',
        'gluoncv==0.10.5.post0',
        'mlxtend==0.23.1',
        'tqdm',
        'pycocotools',
        # .safetensors weights, NumPy API only: 0.7.0 is the last release whose numpy extra
        # accepts numpy < 1.24.
        'safetensors==0.7.0',
        # The last releases that accept numpy < 1.24. Unpinned, pip fetches each newer one in
        # turn (opencv-python 5.0 down to 4.12 for gluoncv, ~70 MB each), reads in its metadata
        # that it needs a newer numpy, and backtracks; capped, its first candidate fits.
        'opencv-python==4.11.0.86',
        'matplotlib<3.11',
        'contourpy<1.3.3',
        'pandas<3',
        'scipy<1.16',
        'scikit-learn<1.8',
    ],
    extras_require={'test': ['pytest', 'hypothesis']},
    zip_safe=False,
)
