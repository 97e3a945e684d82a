"""ONNX export of GroupNorm: translations for MXNet's exporter (mx.onnx, MXNet 1.9.1) and
`export_model`, MXNet's `export_model` with a choice of GroupNorm form.

Importing this module registers, with `MXNetGraph.register`, a translation for the compiled op
`GroupNormalization` (outputs y, mean, rstd) and one for `Custom` nodes whose op_type is the
custom backend's; from then on `mx.onnx.export_model` handles every backend (the stock-op
translations the 'ops' backend needs are repaired in `onnx_stock_ops`).

Two forms of the same maths (docs/design.md §2):
- 'instance_norm' (default, any opset >= 12, runs in onnxruntime): x viewed as (N, C, S) →
  Reshape (N, G, D·S) → InstanceNormalization (scale 1, bias 0 over the G "channels") →
  Reshape (N, C, S) → per-channel Mul/Add → back to x's shape. Channels-last transposes the
  (N, S, C) view. Shapes come from Shape(x) and Shape(gamma) at run time, so the graph does
  not depend on the rank or on fixed input shapes.
- 'onnx': ONNX's own GroupNormalization of opset 21 (per-channel scale and bias), for runtimes
  that fuse it; onnx's checker and reference evaluator accept it, and onnxruntime 1.32 runs it
  (tests/test_onnx.py).
"""
import contextlib
import contextvars

import numpy as np

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError as error:  # the extra is optional: say how to get it
    raise ImportError("ONNX export needs onnx and onnxruntime: pip install -e \".[onnx]\" "
                      "in the gn-mxnet checkout") from error
import mxnet as mx
from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import (
    create_tensor, get_input_dtypes, get_inputs)

from . import onnx_stock_ops
from .custom_op import OP_TYPE
from .op_inputs import OP_NAME
from .validation import parse_has_residual, parse_ws_attrs
from .weight_standardization import OP_NAME as WS_OP_NAME

GROUP_NORM_FORMS = ('instance_norm', 'onnx')
"""How ONNX export writes GroupNorm (`group_norm=`): 'instance_norm' (the default: Reshape,
InstanceNormalization, Reshape, per-channel Mul/Add; opset 12 on) or 'onnx' (ONNX's own
GroupNormalization-21)."""
ONNX_GROUP_NORM_OPSET = 21
_form = contextvars.ContextVar('gn_mxnet_onnx_group_norm_form', default='instance_norm')


@contextlib.contextmanager
def group_norm_form(form):
    """Within the block, mx.onnx.export_model writes GroupNorm in `form` (GROUP_NORM_FORMS)."""
    if form not in GROUP_NORM_FORMS:
        raise ValueError(f"group_norm must be one of {', '.join(GROUP_NORM_FORMS)}, "
                         f"got {form!r}")
    token = _form.set(form)
    try:
        yield
    finally:
        _form.reset(token)


def onnx_group_norm_available():
    """Whether the installed onnx knows GroupNormalization-21 (onnx >= 1.16)."""
    try:
        return onnx.defs.get_schema('GroupNormalization', ONNX_GROUP_NORM_OPSET).since_version \
            == ONNX_GROUP_NORM_OPSET
    except onnx.defs.SchemaError:
        return False


def _float_constant(initializer, name, values, dtype):
    # Not MXNet's create_tensor: for float16 it passes the values' uint16 bit patterns to
    # onnx.helper.make_tensor, which onnx >= 1.13 converts once more (1.0 became 15360).
    initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))


def _accumulation_dtype(dtype):
    # The op's statistics are float32 for float16 data (docs/design.md §3).
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _group_norm_nodes(name, inputs, attrs, dtype, kwargs, y_name, stat_names=()):
    """ONNX nodes computing y (named y_name) and, when stat_names are given, mean and rstd of
    shape (N, G), from MXNet attrs {num_groups, eps, axis} (strings, eps/axis optional)."""
    make = helper.make_node
    x, gamma, beta = inputs
    groups = int(attrs['num_groups'])
    eps = float(attrs.get('eps', 1e-5))
    channels_first = int(attrs.get('axis', 1)) == 1
    init = kwargs['initializer']
    form = _form.get()
    if form == 'onnx' and kwargs.get('opset_version', 12) < ONNX_GROUP_NORM_OPSET:
        raise ValueError(f"group_norm='onnx' writes GroupNormalization-{ONNX_GROUP_NORM_OPSET}: "
                         f"the installed onnx exports opset {kwargs.get('opset_version')}")
    n = name + '_gn_'  # every intermediate name starts so; none looks like an output ("name0")
    create_tensor([0, groups, -1], n + 'grouped_shape', init)
    create_tensor([0], n + 'keep', init)
    create_tensor([-1], n + 'infer', init)
    create_tensor([-1, 1], n + 'column', init)
    nodes = [make('Shape', [x], [n + 'x_shape']),
             make('Shape', [gamma], [n + 'channels'])]
    if channels_first:
        view = x  # (N, C, S...): any rank; the (N, G, D*S) reshape flattens S
    else:
        # (N, S..., C) → (N, S, C) → (N, C, S): the transpose needs a known rank, so flatten S.
        nodes += [make('Concat', [n + 'keep', n + 'infer', n + 'channels'], [n + 'nsc_shape'],
                       axis=0),
                  make('Reshape', [x, n + 'nsc_shape'], [n + 'nsc']),
                  make('Transpose', [n + 'nsc'], [n + 'view'], perm=[0, 2, 1])]
        view = n + 'view'
    if form != 'onnx' or stat_names:
        nodes.append(make('Reshape', [view, n + 'grouped_shape'], [n + 'grouped']))
    if form == 'onnx':
        nodes.append(make('GroupNormalization', [view, gamma, beta], [n + 'affine'],
                          num_groups=groups, epsilon=eps))
    else:
        _float_constant(init, n + 'ones', [1] * groups, dtype)
        _float_constant(init, n + 'zeros', [0] * groups, dtype)
        nodes += [
            make('InstanceNormalization', [n + 'grouped', n + 'ones', n + 'zeros'],
                 [n + 'normalized'], epsilon=eps),
            make('Concat', [n + 'keep', n + 'channels', n + 'infer'], [n + 'ncs_shape'], axis=0),
            make('Reshape', [n + 'normalized', n + 'ncs_shape'], [n + 'ncs']),
            make('Reshape', [gamma, n + 'column'], [n + 'gamma']),
            make('Reshape', [beta, n + 'column'], [n + 'beta']),
            make('Mul', [n + 'ncs', n + 'gamma'], [n + 'scaled']),
            make('Add', [n + 'scaled', n + 'beta'], [n + 'affine'])]
    if not channels_first:
        nodes.append(make('Transpose', [n + 'affine'], [n + 'nsc_out'], perm=[0, 2, 1]))
    nodes.append(make('Reshape', [n + ('affine' if channels_first else 'nsc_out'),
                                  n + 'x_shape'], [y_name], name=name))
    if stat_names:
        nodes += _statistics_nodes(n, eps, dtype, stat_names, init)
    return nodes


def _statistics_nodes(n, eps, dtype, stat_names, init):
    """mean and rstd (N, G) of the (N, G, D*S) view, in the op's accumulation dtype.
    GlobalAveragePool averages the last axis at every opset (ReduceMean changed at 18)."""
    make = helper.make_node
    acc = _accumulation_dtype(dtype)
    _float_constant(init, n + 'eps', [eps], acc)
    create_tensor([0, -1], n + 'stat_shape', init)
    grouped = n + 'grouped'
    nodes = []
    if acc != np.dtype(dtype):
        nodes.append(make('Cast', [grouped], [n + 'grouped_acc'],
                          to=int(onnx.helper.np_dtype_to_tensor_dtype(acc))))
        grouped = n + 'grouped_acc'
    return nodes + [
        make('GlobalAveragePool', [grouped], [n + 'mean3']),
        make('Sub', [grouped, n + 'mean3'], [n + 'centered']),
        make('Mul', [n + 'centered', n + 'centered'], [n + 'squares']),
        make('GlobalAveragePool', [n + 'squares'], [n + 'var3']),
        make('Add', [n + 'var3', n + 'eps'], [n + 'var_eps']),
        make('Sqrt', [n + 'var_eps'], [n + 'std3']),
        make('Reciprocal', [n + 'std3'], [n + 'rstd3']),
        make('Reshape', [n + 'mean3', n + 'stat_shape'], [stat_names[0]]),
        make('Reshape', [n + 'rstd3', n + 'stat_shape'], [stat_names[1]])]


def _statistics_used(kwargs):
    """Whether anything reads the native node's mean or rstd: a later node, or the graph's
    outputs (noted by onnx_stock_ops's hook; without it, the last node's outputs are heads)."""
    idx, nodes = kwargs['idx'], kwargs['mx_graph']
    graph = onnx_stock_ops.export_graph()
    heads = graph.heads if graph else {(len(nodes) - 1, 1)}
    if (idx, 1) in heads or (idx, 2) in heads:
        return True
    return any(entry[0] == idx and entry[1] > 0
               for node in nodes[idx + 1:] for entry in node['inputs'])


def _fused_form(attrs):
    """(act_type, whether a residual is the 4th input) of a GroupNorm node's attrs."""
    return attrs.get('act_type', 'none'), parse_has_residual(attrs.get('has_residual', 0))


def _fused_nodes(name, attrs, inputs, y_plain, y_name):
    """y = act(GN(x) + residual) from the plain GroupNorm output y_plain: an Add, then Relu or
    x·Sigmoid(x) (silu), the last one writing y_name. The op rounds once where these round at
    each step: within float32 rounding of the op."""
    make = helper.make_node
    act, residual = _fused_form(attrs)
    nodes, current = [], y_plain
    if residual:
        summed = y_name if act == 'none' else name + '_gn_summed'
        nodes.append(make('Add', [current, inputs[3]], [summed]))
        current = summed
    if act == 'relu':
        nodes.append(make('Relu', [current], [y_name]))
    elif act == 'silu':
        nodes += [make('Sigmoid', [current], [name + '_gn_sigmoid']),
                  make('Mul', [current, name + '_gn_sigmoid'], [y_name])]
    elif act != 'none':
        raise ValueError(f"ONNX export of GroupNorm node {name!r}: unknown act_type {act!r}")
    return nodes


def _group_norm_with_tail(name, inputs, attrs, dtype, kwargs, y_name, stat_names=()):
    """The plain GroupNorm nodes, followed by the fused form's add and activation if any."""
    act, residual = _fused_form(attrs)
    if act == 'none' and not residual:
        return _group_norm_nodes(name, inputs[:3], attrs, dtype, kwargs, y_name, stat_names)
    plain = name + '_gn_plain'
    return (_group_norm_nodes(name, inputs[:3], attrs, dtype, kwargs, plain, stat_names)
            + _fused_nodes(name, attrs, inputs, plain, y_name))


@MXNetGraph.register(OP_NAME, opset_version=12)
def convert_group_normalization(node, **kwargs):
    """The compiled op: outputs name0 (y), name1 (mean), name2 (rstd), as the exporter names a
    multi-output node's outputs; mean/rstd only where something reads them."""
    name, inputs, attrs = get_inputs(node, kwargs)
    dtype = get_input_dtypes(node, kwargs)[0]
    if not _statistics_used(kwargs):
        return _group_norm_with_tail(name, inputs, attrs, dtype, kwargs, name + '0')
    acc = _accumulation_dtype(dtype)
    nodes = _group_norm_with_tail(name, inputs, attrs, dtype, kwargs, name + '0',
                                  (name + '1', name + '2'))
    return nodes, (dtype, acc, acc)


def _reduce_mean_last(x, out, kwargs):
    """ReduceMean over axis 1 of a 2-D tensor, keepdims; axes an input from opset 18 on."""
    if kwargs.get('opset_version', 12) >= onnx_stock_ops.REDUCE_AXES_INPUT_OPSET:
        create_tensor([1], out + '_axes', kwargs['initializer'])
        return helper.make_node('ReduceMean', [x, out + '_axes'], [out], keepdims=1)
    return helper.make_node('ReduceMean', [x], [out], axes=[1], keepdims=1)


def weight_standardization_nodes(name, weight, attrs, dtype, kwargs, out_name):
    """ONNX nodes standardizing `weight` per output channel (axis 0) over all other axes, as
    the compiled op does (docs/onnx_amp.md): w viewed as (O, K), centered by its row means, then
    divided by sqrt(var + eps) ('timm', biased variance) or by std + eps ('qiao', std the
    unbiased one: the biased variance times K / (K - 1), K read from the shape at run time).
    A float16 weight is standardized in float32 and cast back, as the 'ops' backend does."""
    make = helper.make_node
    # The one validator: its error for a bad convention or eps; a missing attr its default.
    eps, convention = parse_ws_attrs(float(attrs['eps']) if 'eps' in attrs else None,
                                     attrs.get('convention', 'qiao'))
    init = kwargs['initializer']
    n = name + '_ws_'
    acc = _accumulation_dtype(dtype)
    create_tensor([0, -1], n + 'rows_shape', init)
    nodes = [make('Shape', [weight], [n + 'w_shape'])]
    if acc != np.dtype(dtype):
        nodes.append(make('Cast', [weight], [n + 'w_acc'],
                          to=int(onnx.helper.np_dtype_to_tensor_dtype(acc))))
        weight = n + 'w_acc'
    nodes += [make('Reshape', [weight, n + 'rows_shape'], [n + 'rows']),
             _reduce_mean_last(n + 'rows', n + 'mean', kwargs),
             make('Sub', [n + 'rows', n + 'mean'], [n + 'centered']),
             make('Mul', [n + 'centered', n + 'centered'], [n + 'squares']),
             _reduce_mean_last(n + 'squares', n + 'var', kwargs)]
    _float_constant(init, n + 'eps', [eps], acc)
    if convention == 'timm':
        nodes += [make('Add', [n + 'var', n + 'eps'], [n + 'var_eps']),
                  make('Sqrt', [n + 'var_eps'], [n + 'denominator'])]
    else:
        nodes += _unbiased_std_nodes(n, acc, init) + [
            make('Add', [n + 'std', n + 'eps'], [n + 'denominator'])]
    nodes.append(make('Div', [n + 'centered', n + 'denominator'], [n + 'standardized']))
    if acc == np.dtype(dtype):
        return nodes + [make('Reshape', [n + 'standardized', n + 'w_shape'], [out_name],
                             name=name)]
    return nodes + [make('Reshape', [n + 'standardized', n + 'w_shape'], [n + 'shaped']),
                    make('Cast', [n + 'shaped'], [out_name], name=name,
                         to=int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))))]


def _unbiased_std_nodes(n, dtype, init):
    """sqrt(var * K / max(K - 1, 1)) from the biased variance n+'var' of the (O, K) view
    n+'rows': the unbiased std, and 0 for K = 1 (var is 0 there), as the op defines it."""
    make = helper.make_node
    create_tensor([1], n + 'k_begin', init)
    create_tensor([2], n + 'k_end', init)
    _float_constant(init, n + 'one', [1], dtype)
    return [make('Shape', [n + 'rows'], [n + 'rows_dims']),
            make('Slice', [n + 'rows_dims', n + 'k_begin', n + 'k_end'], [n + 'k_int']),
            make('Cast', [n + 'k_int'], [n + 'k'],
                 to=int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))),
            make('Sub', [n + 'k', n + 'one'], [n + 'k_less_one']),
            make('Max', [n + 'k_less_one', n + 'one'], [n + 'degrees']),
            make('Div', [n + 'k', n + 'degrees'], [n + 'bessel']),
            make('Mul', [n + 'var', n + 'bessel'], [n + 'var_unbiased']),
            make('Sqrt', [n + 'var_unbiased'], [n + 'std'])]


@MXNetGraph.register(WS_OP_NAME, opset_version=12)
def convert_weight_standardization(node, **kwargs):
    """The compiled WeightStandardization op (one input, attrs eps and convention)."""
    name, inputs, attrs = get_inputs(node, kwargs)
    dtype = get_input_dtypes(node, kwargs)[0]
    return weight_standardization_nodes(name, inputs[0], attrs, dtype, kwargs, name)


_previous_custom = MXNetGraph.registry_.get(12, {}).get('Custom')


@MXNetGraph.register('Custom', opset_version=12)
def convert_custom(node, **kwargs):
    """Custom nodes: the custom backend's op_type becomes GroupNorm; any other op_type goes to
    the translation registered before this one, if there was one."""
    op_type = node.get('attrs', {}).get('op_type')
    if op_type != OP_TYPE:
        if _previous_custom is None:
            raise AttributeError(f"No conversion function registered for op type Custom "
                                 f"with op_type={op_type!r} yet.")
        return _previous_custom(node, **kwargs)
    name, inputs, attrs = get_inputs(node, kwargs)
    dtype = get_input_dtypes(node, kwargs)[0]
    return _group_norm_with_tail(name, inputs, attrs, dtype, kwargs, name)


def export_model(sym, params, in_shapes=None, in_types=np.float32,
                 onnx_file_path='model.onnx', verbose=False, dynamic=False,
                 dynamic_input_shapes=None, run_shape_inference=False, input_type=None,
                 input_shape=None, group_norm='instance_norm'):
    """`mx.onnx.export_model` (same arguments, same meaning), GroupNorm written in the form
    `group_norm`: 'instance_norm' (opset-12 ONNX any runtime runs) or 'onnx'
    (GroupNormalization-21). The model's opset is the installed onnx's newest, as MXNet's
    exporter always takes (it also validates every node against that opset). The written
    model passes onnx.checker. Returns onnx_file_path.
    """
    if group_norm == 'onnx' and not onnx_group_norm_available():
        raise ValueError(f"group_norm='onnx' needs GroupNormalization-{ONNX_GROUP_NORM_OPSET}, "
                         f"which onnx {onnx.__version__} does not define (onnx >= 1.16 does)")
    with group_norm_form(group_norm):
        mx.onnx.export_model(sym, params, in_shapes, in_types, onnx_file_path, verbose=verbose,
                             dynamic=dynamic, dynamic_input_shapes=dynamic_input_shapes,
                             run_shape_inference=run_shape_inference, input_type=input_type,
                             input_shape=input_shape)
    onnx.checker.check_model(onnx_file_path)
    return onnx_file_path


onnx_stock_ops.register()
