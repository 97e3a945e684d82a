"""Public entry point: the norm factory ``make_norm`` (defined in gn_mxnet.models.norms)."""
from .models.norms import (GROUP_NORMS, NORMS, ChannelsPerGroupNorm, Identity, Norm,
                           make_norm, num_groups_for)

__all__ = ['GROUP_NORMS', 'NORMS', 'ChannelsPerGroupNorm', 'Identity', 'Norm', 'make_norm',
           'num_groups_for']
