"""The network a training run trains: a gn_mxnet.models name, a given Gluon block, or a Symbol
made a Gluon block; initialised, shaped, cast and hybridized the same way for every job."""
import json

import mxnet as mx
from mxnet import gluon

from ..models import get_model
from ..models.norms import GROUP_NORMS
from ..operator.library import load_library

NO_WD_SUFFIXES = ('gamma', 'beta', 'bias')
# What Gluon's own layers initialise these to (Module-style names of Symbol variables).
SYMBOL_PARAM_INITS = (('gamma', 'ones'), ('beta', 'zeros'), ('bias', 'zeros'),
                      ('moving_mean', 'zeros'), ('moving_var', 'ones'),
                      ('running_mean', 'zeros'), ('running_var', 'ones'))


def symbol_to_block(symbol):
    """A Gluon block computing the logits of a classification Symbol ending in SoftmaxOutput.

    Variables that carry an `__init__` attribute (e.g. zero-initialised last gamma) keep it.
    """
    if json.loads(symbol.tojson())['nodes'][-1]['op'] == 'SoftmaxOutput':
        logits = [c for c in symbol.get_children() if not c.name.endswith('label')]
        if len(logits) != 1:
            raise ValueError("cannot find the logits input of the Symbol's SoftmaxOutput")
        symbol = logits[0]
    block = gluon.SymbolBlock(symbol, mx.sym.var('data'))
    attrs = symbol.attr_dict()
    for name, param in block.collect_params().items():
        init = attrs.get(name, {}).get('__init__')
        if init:
            param.init = mx.init.create(init)
        else:  # Gluon applies the global initializer to every parameter without an init
            for suffix, value in SYMBOL_PARAM_INITS:
                if name.endswith(suffix):
                    param.init = value
                    break
    return block


def make_network(cfg, num_classes, net=None, symbol=None):
    if net is not None and symbol is not None:
        raise ValueError("give a Gluon net or a Symbol, not both")
    if callable(symbol):
        symbol = symbol(num_classes, cfg.data_shape)
    if symbol is not None:
        return symbol_to_block(symbol)
    if net is not None:
        return net
    return get_model(cfg.network, num_classes=num_classes, norm=cfg.norm,
                     num_groups=cfg.num_groups, backend=cfg.gn_backend,
                     last_gamma=cfg.last_gamma, conv=cfg.conv, **cfg.model_kwargs)


def prepare_network(cfg, net, data_shape, contexts):
    """Initialise (MSRA), materialise deferred shapes, cast and hybridize."""
    if cfg.norm in GROUP_NORMS and cfg.gn_backend == 'native':
        load_library()
    init = mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)
    net.collect_params().initialize(init, ctx=contexts)
    if any(p._deferred_init for p in net.collect_params().values()):
        # Shapes from symbolic inference, not from a forward pass: an inference pass lets
        # MKLDNN re-lay weights out in place, and a kvstore then sends or receives the raw
        # bytes of that layout (dist workers started from different weights).
        sample = mx.nd.zeros((1,) + tuple(data_shape), ctx=contexts[0])
        if isinstance(net, gluon.HybridBlock):
            net.infer_shape(sample)
            net.collect_params().initialize(init, ctx=contexts, force_reinit=True)
        else:
            net(sample)
    if cfg.dtype != 'float32':
        net.cast(cfg.dtype)
    if cfg.no_wd:
        for name, param in net.collect_params().items():
            if name.endswith(NO_WD_SUFFIXES):
                param.wd_mult = 0.0
    if cfg.hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net
