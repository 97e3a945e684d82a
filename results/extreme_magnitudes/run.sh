#!/bin/sh
# Times the CPU kernels before (commit e05de51, main before the magnitude fix) and after (this
# checkout), alternately in one run: builds both CPU-only into a temp dir with the shipped
# recipe (gn_mxnet/operator/build.py), then runs compare_kernels.py with the default threads
# (compare_kernels.txt) and with one (compare_kernels_1thread.txt).
set -e
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/old"
git -C "$repo" archive e05de51 operators | tar -x -C "$work/old"
build() {  # build <operators dir> <output .so>
  python - "$1" "$2" "$work/build_$(basename "$2")" <<'PY'
import importlib.util, os, sys
import mxnet
spec = importlib.util.spec_from_file_location('b', os.path.join(os.environ['REPO'], 'gn_mxnet',
                                                                  'operator', 'build.py'))
b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
ops, out, build_dir = sys.argv[1:4]
pkg = os.path.dirname(mxnet.__file__)
compiles = b.cpu_compile_commands(os.path.join(pkg, 'include'),
                                  os.path.join(pkg, 'src', 'lib_api.cc'), build_dir, cuda=False,
                                  operators=ops)
b.execute(b.Plan(compiles, b.link_command(out, b._objects(compiles), True)))
PY
}
export REPO="$repo"
build "$work/old/operators" "$work/old.so"
build "$repo/operators" "$work/new.so"
cd "$repo"
python "$here/compare_kernels.py" "$work/old.so" "$work/new.so" | tee "$here/compare_kernels.txt"
# One thread each: far less sensitive to other processes on a shared 2-core machine.
OMP_NUM_THREADS=1 python "$here/compare_kernels.py" "$work/old.so" "$work/new.so" 31 \
  | tee "$here/compare_kernels_1thread.txt"
