"""Builds the GroupNormalization operator library into the gn_mxnet package.

The library compiles operators/*.cc (and operators/*.cu when CUDA is enabled) together with the
*installed* mxnet's src/lib_api.cc against its include/mxnet/lib_api.h.

The sources, flags, CUDA archs and link step are gn_mxnet/operator/build.py's (which also builds
the stand-alone CUDA library the tests compile), and so are its environment switches
(GN_MXNET_CUDA, GN_MXNET_CUDA_ARCHS, GN_MXNET_CXXFLAGS, NVCC); only what is setuptools' or
mxnet's is here. GN_MXNET_MXNET_DIST names the mxnet requirement to declare, e.g.
"mxnet-cu112==1.9.1".
"""
import importlib.metadata
import importlib.util
import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def load_builder():
    """gn_mxnet/operator/build.py, by path: nothing of gn_mxnet is installed yet, and importing
    the package would import mxnet."""
    path = os.path.join(ROOT, 'gn_mxnet', 'operator', 'build.py')
    spec = importlib.util.spec_from_file_location('gn_mxnet_operator_build', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = load_builder()
LIBRARY = builder.LIBRARY_NAME


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


def library_plan(output, build_temp):
    """What build_ext runs: the builder's plan for the shipped library, against the installed
    mxnet, with the CUDA kernels when the builder's switches say so."""
    include, lib_api = mxnet_sources()
    nvcc = builder.library_nvcc()
    archs = builder.cuda_archs(nvcc) if nvcc else None
    return builder.library_plan(output, os.path.join(build_temp, 'operators'), include, lib_api,
                                nvcc, archs)


class BuildOperatorLibrary(build_ext):
    """Compiles the operator library with g++ (and nvcc) instead of a Python extension."""

    def get_ext_filename(self, ext_name):
        return os.path.join(*ext_name.split('.')[:-1], LIBRARY)

    def build_extension(self, ext):
        try:
            plan = library_plan(self.get_ext_fullpath(ext.name), self.build_temp)
            cuda = any(command[0] != 'g++' for command in plan.compiles)
            print(f"gn-mxnet: building {LIBRARY} ({'CPU + CUDA' if cuda else 'CPU only'})",
                  flush=True)
            builder.execute(plan)
        except builder.BuildError as exc:
            sys.exit(f"gn-mxnet: {exc}")


# Versions that install beside numpy < 1.24 on Python 3.11.
ONNX_REQUIREMENTS = ['onnx==1.16.2', 'onnxruntime==1.32.0']
# Horovod's runtime dependencies (horovodrun, horovod.mxnet), at the releases its tests ran with.
# Horovod itself is built against the installed mxnet by tools/install_horovod.sh, which a pip
# extra cannot do (no build isolation, build switches in the environment).
HOROVOD_REQUIREMENTS = ['cloudpickle==3.1.3', 'psutil==7.2.2', 'pyyaml==6.0.4', 'packaging==26.4']
# The documentation site (mkdocs.yml): the releases tests/test_docs.py builds it with.
DOCS_REQUIREMENTS = ['mkdocs==1.6.1', 'mkdocs-material==9.8.2', 'mkdocstrings[python]==1.0.8',
                     'mkdocstrings-python==2.0.11']


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
    ext_modules=[Extension(builder.LIBRARY_EXTENSION, sources=[])],
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
    # onnx: gn_mxnet.onnx (export). The releases the export tests ran with; both install beside
    # numpy<1.24 on Python 3.11. onnx >= 1.16 has GroupNormalization-21, and MXNet 1.9.1's
    # exporter needs the (deprecated) onnx.mapping module that 1.16 still has.
    # The tests run the ONNX export through onnxruntime, so the test extra includes it; they
    # also build the documentation site in strict mode (tests/test_docs.py), so it has docs too,
    # and start Horovod jobs (tests/test_horovod.py), so it has horovod's runtime too.
    extras_require={'test': ['pytest', 'hypothesis', *ONNX_REQUIREMENTS, *DOCS_REQUIREMENTS,
                             *HOROVOD_REQUIREMENTS],
                    'onnx': ONNX_REQUIREMENTS,
                    'docs': DOCS_REQUIREMENTS,
                    'horovod': HOROVOD_REQUIREMENTS},
    zip_safe=False,
)
