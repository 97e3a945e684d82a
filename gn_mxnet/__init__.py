"""gn-mxnet: paper-exact, fused Group Normalization for Apache MXNet 1.9."""
from ._library import LibraryNotBuiltError, cpu_isa, library_path, load_library
from .ops import BACKENDS, group_norm
from . import gluon

__all__ = ['BACKENDS', 'LibraryNotBuiltError', 'cpu_isa', 'group_norm', 'gluon',
           'library_path', 'load_library']
__version__ = '0.1.0'
