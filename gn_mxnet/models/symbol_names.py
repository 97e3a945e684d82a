"""The naming rule that ties a Gluon net to its Symbol twin in ``symbols/``.

A Gluon parameter's structural name (what ``save_parameters`` writes, e.g.
``layer1.0.bn1.gamma``) becomes the Symbol variable name with dots turned into underscores
(``layer1_0_bn1_gamma``). BatchNorm's running statistics are auxiliary states in a Symbol and
are called ``moving_*`` there (``layer1_0_bn1_moving_mean``). The Symbol builders name their
layers by this rule, so weights move between the two fronts without a table.
"""
import mxnet as mx

_AUX_RENAMES = (('running_mean', 'moving_mean'), ('running_var', 'moving_var'))


def symbol_name(structural_name):
    """('arg' | 'aux', Symbol variable name) for a Gluon structural parameter name."""
    name = structural_name.replace('.', '_')
    for gluon_suffix, symbol_suffix in _AUX_RENAMES:
        if structural_name.endswith('.' + gluon_suffix):
            return 'aux', name[:-len(gluon_suffix)] + symbol_suffix
    return 'arg', name


def to_symbol_params(net):
    """(arg_params, aux_params) dicts of NDArrays for the Symbol twin of Gluon ``net``."""
    params = {'arg': {}, 'aux': {}}
    for structural, param in net._collect_params_with_prefix().items():
        kind, name = symbol_name(structural)
        params[kind][name] = param.data().copy()
    return params['arg'], params['aux']


def from_symbol_params(net, arg_params, aux_params, ctx=None):
    """Load a Symbol twin's (arg_params, aux_params) into Gluon ``net``; every name must match."""
    available = dict(arg_params)
    available.update(aux_params)
    wanted = {}
    for structural in net._collect_params_with_prefix():
        wanted[symbol_name(structural)[1]] = structural
    missing = sorted(set(wanted) - set(available))
    extra = sorted(set(available) - set(wanted))
    if missing or extra:
        raise ValueError("Symbol params do not match the Gluon net: missing %s; unexpected %s"
                         % (missing or 'none', extra or 'none'))
    structural_params = net._collect_params_with_prefix()
    ctx = ctx or mx.cpu()
    for name, structural in wanted.items():
        structural_params[structural]._load_init(available[name], ctx)
