"""gn-mxnet: paper-exact, fused Group Normalization for Apache MXNet 1.9.

Layers, bottom to top (each package's docstring says what it owns; docs/design.md §1):
``operator`` → ``models`` → ``training`` → ``detection`` / ``study``; ``utils`` serves them all.
``gluon``, ``norms``, ``convert``, ``sym`` (the Symbol API) and ``onnx`` (ONNX export, the optional
``[onnx]`` extra) are the public entry points the README and docs/api.md show.

Importing gn_mxnet is cheap: nothing (MXNet included) is imported until a name is used.
"""
import importlib

__version__ = '0.1.0'

# public name -> the module that defines it
_NAMES = {
    'load_library': 'operator.library', 'library_path': 'operator.library',
    'cpu_isa': 'operator.library', 'LibraryNotBuiltError': 'operator.library',
    'group_norm': 'operator.front', 'BACKENDS': 'operator.validation',
    'standardize_weight': 'operator.weight_standardization',
}
_SUBPACKAGES = ('operator', 'models', 'training', 'detection', 'study', 'utils',
                'gluon', 'norms', 'convert', 'sym', 'onnx')

__all__ = sorted(_NAMES) + ['gluon']


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module('.' + _NAMES[name], __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module('.' + name, __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_SUBPACKAGES))
