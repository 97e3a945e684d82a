"""The one recipe that compiles operators/ into the operator library (GroupNormalization and
WeightStandardization): source lists, g++ and nvcc flags, the CUDA arch policy and the link step.

setup.py builds the shipped libgn_mxnet.so with library_plan(); tests/test_cuda_build.py and
benchmarks/gpu_check.py build the CUDA kernels alone with cuda_library_plan(), whose compile
lines are library_plan()'s, so what CI compiles is what ships. The dtype and status codes of
the C ABI are read from operators/group_norm_kernels.h here for the Python code that calls it.

Standard library only, and loaded by file path: setup.py runs it before anything is installed
(under pip's build isolation) and gpu_check.py runs it on GPU hosts that have no MXNet.

Environment:
  GN_MXNET_CUDA=1 / 0     force the CUDA kernels into the shipped library / keep them out
                          (default: in when nvcc is found)
  GN_MXNET_CUDA_ARCHS     e.g. "75;80;90" (default: WANTED_CUDA_ARCHS), less those nvcc cannot
                          build, plus PTX of the newest
  GN_MXNET_CXXFLAGS       extra g++ flags, e.g. "-march=native" for a build that stays on this CPU
  NVCC                    the nvcc to use (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)

The CPU kernels are built twice on x86-64, generic and AVX2 + FMA + F16C; the library runs the
AVX2 build where the CPU has all three (GN_MXNET_CPU_ISA=generic at run time forces the generic
build).
"""
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPERATORS = os.path.join(REPO, 'operators')
KERNELS_HEADER = os.path.join(OPERATORS, 'group_norm_kernels.h')
# The shipped library, built into the top of the gn_mxnet package (operator/library.py loads it).
LIBRARY_NAME = 'libgn_mxnet.so'
LIBRARY_EXTENSION = 'gn_mxnet.libgn_mxnet'


class BuildError(RuntimeError):
    """A compile or link failed, or a tool or file it needs is missing."""


# ---- the C ABI's codes ---------------------------------------------------------------------

def header_codes(prefix, header=KERNELS_HEADER):
    """{name: value} of the `<prefix>NAME = value` enumerators of a C header, each name
    lower-cased without the prefix."""
    with open(header) as f:
        text = f.read()
    codes = {m.group(1).lower(): int(m.group(2))
             for m in re.finditer(r'\b%s(\w+)\s*=\s*(\d+)' % re.escape(prefix), text)}
    if not codes:
        raise BuildError('no %s* enumerators in %s' % (prefix, header))
    return codes


# DTYPE_CODES (keyed by the dtype's name as NumPy and PyTorch spell it), STATUS_CODES and
# ACT_CODES (the act_type attribute's values: 'none', 'relu', 'silu').
_HEADER_ENUMS = {'DTYPE_CODES': 'GN_DTYPE_', 'STATUS_CODES': 'GN_STATUS_',
                 'ACT_CODES': 'GN_ACT_'}


def __getattr__(name):
    # Read on first use, not on import: a copy of this module installed without the source
    # tree has no operators/ beside it, and must still import.
    if name in _HEADER_ENUMS:
        globals()[name] = header_codes(_HEADER_ENUMS[name])
        return globals()[name]
    raise AttributeError('module %r has no attribute %r' % (__name__, name))

# ---- g++ -----------------------------------------------------------------------------------

CXX_FLAGS = ('-std=c++17', '-O3', '-fPIC', '-fopenmp', '-Wall', '-Wextra', '-DNDEBUG')
# The kernels are compiled once per instruction set, into namespaces gn::<isa>; the library
# picks one at run time (group_norm_cpu.cc). AVX2 + FMA doubles the vector width of the
# generic x86-64 build, which is what makes the kernels memory-bound rather than compute-bound.
CPU_KERNEL_SOURCES = ('group_norm_cpu_forward.cc', 'group_norm_cpu_backward.cc',
                      'group_norm_cpu_entry.cc', 'weight_standardization_cpu.cc')


# lib_api.cc's message readers, renamed: operators/group_norm_op.cc defines its own.
LIB_API_RENAMES = ('-D_msgSize=mxnet_lib_api_msgSize_unused',
                   '-D_msgGet=mxnet_lib_api_msgGet_unused')


def cxx_flags():
    return [*CXX_FLAGS, *os.environ.get('GN_MXNET_CXXFLAGS', '').split()]


def cpu_isas(machine=None):
    """isa -> extra g++ flags: the generic build always, AVX2 + FMA + F16C on x86-64."""
    isas = {'generic': []}
    if (machine or platform.machine()).lower() in ('x86_64', 'amd64'):
        isas['avx2'] = ['-mavx2', '-mfma', '-mf16c']
    return isas


def cxx_sources(operators=OPERATORS):
    return sorted(f for f in os.listdir(operators) if f.endswith('.cc'))


def cpu_compile_commands(include, lib_api, build_dir, cuda, operators=OPERATORS):
    """g++ lines for operators/*.cc (the CPU kernels once per ISA) and MXNet's lib_api.cc."""
    isas = cpu_isas()
    defines = ['-DGN_MXNET_WITH_CUDA'] if cuda else []
    if 'avx2' in isas:
        defines.append('-DGN_MXNET_WITH_AVX2')
    flags = cxx_flags()
    commands = []
    for source in cxx_sources(operators):
        builds = isas.items() if source in CPU_KERNEL_SOURCES else [(None, [])]
        for isa, isa_flags in builds:
            isa_define = ['-DGN_KERNEL_ISA=%s' % isa] if isa else []
            suffix = '.%s.o' % isa if isa else '.o'
            commands.append(['g++', *flags, *isa_flags, *defines, *isa_define,
                             '-isystem', include, '-I%s' % operators, '-c',
                             os.path.join(operators, source),
                             '-o', os.path.join(build_dir, source + suffix)])
    # lib_api.cc is MXNet's code: its warnings are not ours to fix. Its _msgSize/_msgGet read
    # one unlocked process-wide message list; operators/group_norm_op.cc defines thread-safe
    # ones instead, so lib_api.cc's are renamed out of the way.
    commands.append(['g++', *flags, '-w', *LIB_API_RENAMES, '-I%s' % include, '-c', lib_api,
                     '-o', os.path.join(build_dir, 'lib_api.cc.o')])
    return commands


# ---- nvcc ----------------------------------------------------------------------------------

WANTED_CUDA_ARCHS = (70, 75, 80, 86, 89, 90)
NVCC_FLAGS = ('-O3', '-std=c++17', '-Xcompiler', '-fPIC')
CUDA_LINK_LIBRARIES = ('-lcudart_static', '-lrt', '-ldl', '-lpthread')


def find_nvcc():
    """$NVCC, else nvcc on PATH, else /usr/local/cuda/bin/nvcc; None when there is none."""
    for candidate in (os.environ.get('NVCC'), 'nvcc', '/usr/local/cuda/bin/nvcc'):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def library_nvcc(operators=OPERATORS):
    """The nvcc that compiles CUDA kernels into the shipped library, or None for a CPU-only
    one: GN_MXNET_CUDA=1 demands nvcc, =0 refuses it, unset uses it when it is found."""
    use_cuda = os.environ.get('GN_MXNET_CUDA')
    nvcc = find_nvcc()
    if use_cuda == '1':
        if nvcc is None:
            raise BuildError('GN_MXNET_CUDA=1 but nvcc was not found ($NVCC, PATH, '
                             '/usr/local/cuda/bin/nvcc)')
        return nvcc
    return nvcc if use_cuda is None and cuda_sources(operators) else None


def cuda_sources(operators=OPERATORS):
    return sorted(f for f in os.listdir(operators) if f.endswith('.cu'))


def supported_archs(nvcc):
    listed = subprocess.run([nvcc, '--list-gpu-arch'], capture_output=True, text=True)
    if listed.returncode != 0:
        raise BuildError('%s --list-gpu-arch failed: %s' % (nvcc, listed.stderr.strip()))
    return sorted({int(m) for m in re.findall(r'\bcompute_(\d+)\b', listed.stdout)})


def cuda_archs(nvcc):
    """The archs to build, ascending: GN_MXNET_CUDA_ARCHS ("75;80;90" or "75,80,90") or
    WANTED_CUDA_ARCHS, less those this nvcc cannot build (CUDA 13 starts at sm_75)."""
    listed = os.environ.get('GN_MXNET_CUDA_ARCHS')
    if listed:
        try:
            wanted = [int(a) for a in listed.replace(',', ';').split(';') if a.strip()]
        except ValueError:
            raise BuildError('GN_MXNET_CUDA_ARCHS must list numbers like "75;80;90", got %r'
                             % listed) from None
    else:
        wanted = list(WANTED_CUDA_ARCHS)
    archs = sorted(set(wanted) & set(supported_archs(nvcc)))
    if not archs:
        raise BuildError('nvcc %s supports none of the CUDA archs %s' % (nvcc, wanted))
    return archs


def gpu_archs(nvcc, arch):
    """The archs for one GPU of compute capability `arch` (e.g. 86): that one, or where the GPU
    is newer than this nvcc, the newest below it, whose PTX the driver then compiles."""
    below = [a for a in supported_archs(nvcc) if a <= arch]
    if not below:
        raise BuildError('nvcc %s builds nothing that runs on sm_%d' % (nvcc, arch))
    return [below[-1]]


def ptx_arch(archs):
    """The PTX embedded beside the machine code: the newest arch's, so that GPUs newer than
    every arch built still run (JIT-compiled by the driver)."""
    return max(archs)


def gencode_flags(archs):
    flags = []
    for arch in sorted(archs):
        flags += ['-gencode', 'arch=compute_%d,code=sm_%d' % (arch, arch)]
    ptx = ptx_arch(archs)
    return flags + ['-gencode', 'arch=compute_%d,code=compute_%d' % (ptx, ptx)]


def cuda_compile_commands(nvcc, archs, build_dir, operators=OPERATORS):
    """One nvcc line per operators/*.cu: the same lines for every library built here."""
    gencode = gencode_flags(archs)
    return [[nvcc, *NVCC_FLAGS, *gencode, '-I%s' % operators, '-c',
             os.path.join(operators, source), '-o', os.path.join(build_dir, source + '.o')]
            for source in cuda_sources(operators)]


def cuda_library_dir(nvcc):
    """Where libcudart_static.a is: $CUDA_HOME or $CUDA_PATH, else the -L dirs nvcc itself
    links with (nvcc may be a wrapper script outside its toolkit)."""
    candidates = [os.path.join(os.environ[v], sub) for v in ('CUDA_HOME', 'CUDA_PATH')
                  if os.environ.get(v) for sub in ('lib64', 'lib')]
    with tempfile.TemporaryDirectory() as scratch:
        probe = os.path.join(scratch, 'probe.cu')
        open(probe, 'w').close()
        dryrun = subprocess.run([nvcc, '-dryrun', '-c', probe, '-o', probe + '.o'],
                                capture_output=True, text=True)
    for line in (dryrun.stdout + dryrun.stderr).splitlines():
        if 'LIBRARIES=' in line:
            candidates += [flag.strip('"')[2:] for flag in line.split()
                           if flag.strip('"').startswith('-L')]
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, 'libcudart_static.a')):
            return os.path.normpath(directory)
    raise BuildError('libcudart_static.a not found in %s; set CUDA_HOME' % candidates)


# ---- plans ---------------------------------------------------------------------------------

Plan = namedtuple('Plan', 'compiles link')  # compiles run in parallel, then the link


def link_command(output, objects, openmp, cuda_library=None):
    """cudart goes in statically so that the library loads where only the driver is."""
    # Generic objects first: where both CPU builds emit the same out-of-line template (std::
    # helpers), the linker keeps the first copy, which must run on any x86-64 CPU.
    objects = sorted(objects, key=lambda path: path.endswith('.avx2.o'))
    cuda = ['-L%s' % cuda_library, *CUDA_LINK_LIBRARIES] if cuda_library else []
    # -Bsymbolic: the library's own copies of lib_api.h's functions and its std:: templates
    # serve its calls. libmxnet.so exports copies of them too, which the dynamic linker would
    # otherwise pick once something puts libmxnet.so in the global scope: Horovod's MXNet
    # module is loaded RTLD_GLOBAL, and loading this library after it then died of SIGFPE in
    # its static initialisers (tests/test_horovod.py trains GN nets under Horovod).
    return ['g++', '-shared', '-Wl,-Bsymbolic', *(['-fopenmp'] if openmp else []), '-o', output,
            *objects, *cuda]


def _objects(commands):
    return [command[command.index('-o') + 1] for command in commands]


def library_plan(output, build_dir, include, lib_api, nvcc=None, archs=None):
    """The shipped library: CPU kernels, the MXNet operator (include: MXNet's include dir,
    lib_api: its src/lib_api.cc) and, when nvcc is given, the CUDA kernels for `archs`."""
    compiles = cpu_compile_commands(include, lib_api, build_dir, cuda=nvcc is not None)
    cuda_library = None
    if nvcc is not None:
        compiles += cuda_compile_commands(nvcc, archs, build_dir)
        cuda_library = cuda_library_dir(nvcc)
    return Plan(compiles, link_command(output, _objects(compiles), True, cuda_library))


def cuda_library_plan(output, build_dir, nvcc, archs):
    """The CUDA kernels alone, for calling their C ABI without MXNet: library_plan's nvcc
    lines, linked by its link step less -fopenmp (nothing here uses OpenMP)."""
    compiles = cuda_compile_commands(nvcc, archs, build_dir)
    return Plan(compiles, link_command(output, _objects(compiles), False,
                                       cuda_library_dir(nvcc)))


def _run(command):
    return subprocess.run(command, capture_output=True, text=True)


def execute(plan):
    """Runs a plan; returns what the compilers printed (their warnings), raises BuildError
    with a failing step's line and output."""
    for directory in {os.path.dirname(path) for path in _objects(plan.compiles + [plan.link])}:
        os.makedirs(directory, exist_ok=True)
    log = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for command, done in zip(plan.compiles, pool.map(_run, plan.compiles)):
            log.append(done.stdout + done.stderr)
            if done.returncode != 0:
                raise BuildError('compile failed: %s\n%s' % (' '.join(command), log[-1]))
    done = _run(plan.link)
    log.append(done.stdout + done.stderr)
    if done.returncode != 0:
        raise BuildError('link failed: %s\n%s' % (' '.join(plan.link), log[-1]))
    return ''.join(log)
