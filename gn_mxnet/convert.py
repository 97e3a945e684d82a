"""Public entry point: ``python -m gn_mxnet.convert SRC DST ...`` and the weight converters'
functions (defined in gn_mxnet.models.convert and gn_mxnet.models.weight_files)."""
import sys

from .models.convert import (FORMATS, UnsafePickleError, WeightFileError, WeightMismatchError,
                             load_weights, main, read_tensors, save_weights, write_tensors)
from .utils import cli

__all__ = ['FORMATS', 'UnsafePickleError', 'WeightFileError', 'WeightMismatchError',
           'load_weights', 'main', 'read_tensors', 'save_weights', 'write_tensors']

if __name__ == '__main__':
    sys.exit(cli.run(main))
