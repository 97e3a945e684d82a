"""The package's architecture, checked: layers import only downwards and never in a cycle,
`import gn_mxnet` stays cheap, every fact has one home, files stay short, and code cites only
the repository's own design document (docs/design.md)."""
import ast
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'gn_mxnet')

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS = {'utils': 0, 'operator': 1, 'models': 2, 'training': 3, 'detection': 4, 'study': 4}
# Public entry points kept where the README shows them; no layer imports them.
FACADES = {'gn_mxnet', 'gn_mxnet.gluon', 'gn_mxnet.norms', 'gn_mxnet.convert', 'gn_mxnet.sym',
           'gn_mxnet.onnx', 'gn_mxnet.migrate'}
SOURCE_DIRS = ('gn_mxnet', 'symbols', 'train', 'benchmarks', 'tests', 'operators')
SOURCE_ENDINGS = ('.py', '.cc', '.cu', '.cuh', '.h')
MAX_LINES = 400


def _modules():
    """{dotted module name: file path} of every module in gn_mxnet."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == '__init__':
                    parts = parts[:-1]
                found['.'.join(parts)] = path
    return found


def _imports(module, path, known):
    """gn_mxnet modules that `module` imports anywhere in its file (lazy imports included)."""
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            names = [base] + [f'{base}.{alias.name}' for alias in node.names]
        else:
            continue
        targets.update(name for name in names if name in known)
    targets.discard(module)
    return targets


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module):
    parts = module.split('.')
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycles():
    graph = _graph()
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 'open':
                cycle = stack[stack.index(target):] + [target]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_layers_import_only_downwards():
    wrong = []
    for module, targets in _graph().items():
        layer = _layer(module)
        if layer is None:
            continue
        for target in targets:
            if target in FACADES:
                wrong.append(f'{module} imports the public entry point {target}')
            elif _layer(target) is not None and LAYERS[_layer(target)] > LAYERS[layer]:
                wrong.append(f'{module} ({layer}) imports {target} ({_layer(target)})')
            elif (_layer(target) != layer and LAYERS.get(_layer(target)) == LAYERS[layer]):
                wrong.append(f'{module} imports its sibling layer {target}')
    assert not wrong, '\n'.join(sorted(wrong))


def test_every_module_belongs_to_a_layer_or_is_an_entry_point():
    stray = [m for m in _modules() if _layer(m) is None and m not in FACADES]
    assert not stray, f'modules outside every layer: {stray}'


@pytest.mark.parametrize('layer', sorted(LAYERS))
def test_each_layer_says_what_it_owns(layer):
    init = os.path.join(PACKAGE, layer, '__init__.py')
    docstring = ast.get_docstring(ast.parse(open(init).read()))
    assert docstring and len(docstring.split()) >= 8, f'{init} has no docstring of its own'


def _run_python(code, **kwargs):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, **kwargs)


def test_importing_gn_mxnet_imports_no_mxnet():
    done = _run_python('import sys, gn_mxnet\n'
                       'heavy = [m for m in ("mxnet", "gluoncv", "numpy") if m in sys.modules]\n'
                       'assert not heavy, heavy\n'
                       'print(gn_mxnet.__version__)')
    assert done.returncode == 0, done.stderr


def test_public_names_resolve_lazily():
    done = _run_python('import gn_mxnet\n'
                       'from gn_mxnet.gluon import GroupNorm\n'
                       'from gn_mxnet.norms import make_norm\n'
                       'from gn_mxnet.models import get_model\n'
                       'from symbols.resnet import get_symbol\n'
                       'assert callable(gn_mxnet.group_norm) and callable(gn_mxnet.load_library)\n'
                       'assert gn_mxnet.gluon.GroupNorm is GroupNorm\n'
                       'from gn_mxnet.sym import GroupNorm as SymbolGroupNorm\n'
                       'assert gn_mxnet.sym.GroupNorm is SymbolGroupNorm\n'
                       'assert gn_mxnet.BACKENDS == ("native", "custom", "ops")\n'
                       'assert "group_norm" in dir(gn_mxnet)\n'
                       'try:\n    gn_mxnet.no_such_name\nexcept AttributeError:\n    pass\n'
                       'else:\n    raise SystemExit("a missing name did not raise")')
    assert done.returncode == 0, done.stderr


def _tracked_sources():
    for top in SOURCE_DIRS:
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            if '__pycache__' in folder or '.venv' in folder:
                continue
            for name in files:
                if name.endswith(SOURCE_ENDINGS):
                    yield os.path.join(folder, name)
    yield os.path.join(REPO, 'setup.py')


def test_source_files_stay_short():
    long_files = {os.path.relpath(p, REPO): n for p in _tracked_sources()
                  if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert not long_files, f'files over {MAX_LINES} lines: {long_files}'


# Each fact's literal and the one module allowed to spell it out.
_ONE_HOME = {
    "('native', 'custom', 'ops')": 'gn_mxnet/operator/validation.py',
    "('bn', 'gn', 'ln', 'in'": 'gn_mxnet/models/norms.py',
    "('gn', 'ln', 'in')": 'gn_mxnet/models/norms.py',
    "('step', 'cosine')": 'gn_mxnet/training/schedule.py',
    'csv.DictWriter': 'gn_mxnet/utils/tables.py',
    'from tqdm import': 'gn_mxnet/utils/progress.py',
    'os.replace(': 'gn_mxnet/utils/files.py',
}


@pytest.mark.parametrize('literal', sorted(_ONE_HOME))
def test_each_fact_has_one_home(literal):
    homes = sorted(os.path.relpath(p, REPO) for p in _tracked_sources()
                   if p.endswith('.py') and literal in open(p).read()
                   and not p.endswith('test_architecture.py'))
    assert homes == [_ONE_HOME[literal]], f'{literal} is spelled out in {homes}'


def test_code_cites_only_the_repository_design_doc():
    design = open(os.path.join(REPO, 'docs', 'design.md')).read()
    sections = set(re.findall(r'^## (\d+)\.', design, flags=re.M))
    outside, dangling = [], []
    for path in list(_tracked_sources()) + [os.path.join(REPO, 'README.md')]:
        if path.endswith('test_architecture.py'):
            continue
        text = open(path).read()
        rel = os.path.relpath(path, REPO)
        if 'DESIGN §' in text:
            outside.append(rel)
        dangling += [f'{rel}: §{n}' for n in re.findall(r'docs/design\.md §(\d+)', text)
                     if n not in sections]
    assert not outside, f'cite "DESIGN §", a file outside the repository: {outside}'
    assert not dangling, f'cite sections docs/design.md lacks: {dangling}'
