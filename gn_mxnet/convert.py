"""Public entry point: ``python -m gn_mxnet.convert SRC DST ...`` and the weight converters'
functions (defined in gn_mxnet.models.convert)."""
import sys

from .models.convert import (FORMATS, WeightMismatchError, load_weights, main, read_tensors,
                             save_weights, write_tensors)

__all__ = ['FORMATS', 'WeightMismatchError', 'load_weights', 'main', 'read_tensors',
           'save_weights', 'write_tensors']

if __name__ == '__main__':
    sys.exit(main())
