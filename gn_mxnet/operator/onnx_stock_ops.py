"""Repairs to MXNet 1.9.1's ONNX translations of the stock ops the 'ops' backend is built from.

Measured with the 'ops' backends' graphs (GroupNorm's and weight standardization's), MXNet's
exporter
- has no translation for `rsqrt`, `_linalg_det` (the 'ops' graphs' bind-time dtype check) nor
  `_identity_with_attr_like_rhs` (the shape tie after a standardized weight);
- refuses `Reshape` with -2 or -4 in general ((0, -4, G, -1, -2) splits the channels);
- writes `mean(..., exclude=True)` and `sum(..., exclude=True)` as reductions over the listed
  axes, silently the wrong ones, and writes ReduceMean's `axes` as an attribute, which opset 18
  turned into an input.
The translations below add or replace those. `Reshape` is rank-free (built from Shape(x) at run
time); `mean` and `sum` need the input's rank, which translations are not given, so `register` also
wraps `MXNetGraph.create_onnx_graph_proto` to note, once per export, the graph, its input shapes
(node output shapes are inferred from them on demand) and its heads (GroupNorm's translation
asks whether mean/rstd are outputs).
"""
import contextvars
import functools
import json
from typing import NamedTuple, Optional, Set, Tuple

import mxnet as mx
import numpy as np
from onnx import helper
from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import (
    convert_string_to_list, create_tensor, get_boolean_attribute_value, get_inputs)

REDUCE_AXES_INPUT_OPSET = 18       # ReduceMean's axes: an attribute before, an input since
REDUCE_SUM_AXES_INPUT_OPSET = 13   # ReduceSum's


class ExportGraph(NamedTuple):
    """What the exporter knows and its translations are not told, for the graph being exported."""
    graph: dict                    # sym.tojson(), parsed
    known: dict                    # input name -> shape, as the exporter binds them
    heads: Set[Tuple[int, int]]    # (node index, output index) of the graph's outputs
    shapes: dict                   # (node index, output index) -> shape, filled on demand

    def output_shape(self, node, output):
        """The shape of node's output, or None if MXNet cannot infer it. Inferred for that
        output alone (a graph made of the nodes it depends on): ops with hidden outputs (e.g.
        linalg_det's LU and pivots) make a whole-graph table misalign with node indices."""
        key = (node, output)
        if key not in self.shapes:
            self.shapes[key] = None
            sub = mx.sym.load_json(json.dumps(dict(self.graph, heads=[[node, output, 0]])))
            known = {n: shape for n, shape in self.known.items() if n in sub.list_inputs()}
            try:
                _, (shape,), _ = sub.infer_shape(**known)
                self.shapes[key] = shape
            except Exception:  # noqa: BLE001 - any MXNet failure: the rank is unknown
                pass
        return self.shapes[key]


_graph = contextvars.ContextVar('gn_mxnet_onnx_export_graph', default=None)


def export_graph() -> Optional[ExportGraph]:
    """The graph being exported (None outside mx.onnx's create_onnx_graph_proto)."""
    return _graph.get()


def _known_input_shapes(sym, params, in_shapes):
    """Input name -> shape, the data bound as MXNet's exporter binds them (get_outputs)."""
    internals = sym.get_internals()
    label = internals[len(internals) - 1].name + '_label'
    data_names = [n for n in sym.list_inputs() if n not in params and n != label]
    known = dict(zip(data_names, in_shapes))
    known.update({n: v.shape for n, v in params.items() if n in sym.list_inputs()})
    return known


def _with_node_shapes(create):
    @functools.wraps(create)
    def create_onnx_graph_proto(self, sym, params, in_shapes, *args, **kwargs):
        graph = json.loads(sym.tojson())
        token = _graph.set(ExportGraph(graph, _known_input_shapes(sym, params, in_shapes),
                                       {(head[0], head[1]) for head in graph['heads']}, {}))
        try:
            return create(self, sym, params, in_shapes, *args, **kwargs)
        finally:
            _graph.reset(token)

    create_onnx_graph_proto.gn_mxnet_export_graph = True
    return create_onnx_graph_proto


def _input_rank(node, kwargs):
    graph = _graph.get()
    source, index = node['inputs'][0][:2]
    shape = graph.output_shape(source, index) if graph else None
    if not shape:
        raise ValueError(f"ONNX export of mean node {node['name']!r}: its input's rank is "
                         f"unknown (MXNet could not infer the graph's shapes from in_shapes)")
    return len(shape)


def _convert_reduction(onnx_op, axes_input_opset):
    """MXNet's mean or sum (axis, keepdims, exclude) as ReduceMean / ReduceSum, axes made
    explicit (and an input from `axes_input_opset` on); reducing every axis without keepdims
    gives MXNet's shape (1,)."""
    def convert(node, **kwargs):
        name, inputs, attrs = get_inputs(node, kwargs)
        keepdims = get_boolean_attribute_value(attrs, 'keepdims')
        exclude = get_boolean_attribute_value(attrs, 'exclude')
        given = str(attrs.get('axis', 'None'))
        axes = None if given in ('None', '()', '[]') else convert_string_to_list(given)
        rank = _input_rank(node, kwargs) if exclude or axes is None or not keepdims else None
        if axes is None:
            axes = list(range(rank)) if not exclude else []
        elif exclude:
            kept = {a % rank for a in axes}
            axes = [a for a in range(rank) if a not in kept]
        out = name if keepdims or len(axes) < rank else name + '_scalar'
        if kwargs.get('opset_version', 12) >= axes_input_opset:
            create_tensor(axes, name + '_axes', kwargs['initializer'])
            nodes = [helper.make_node(onnx_op, [inputs[0], name + '_axes'], [out],
                                      keepdims=keepdims)]
        else:
            nodes = [helper.make_node(onnx_op, [inputs[0]], [out], axes=axes,
                                      keepdims=keepdims)]
        if out != name:
            create_tensor([1], name + '_one', kwargs['initializer'])
            nodes.append(helper.make_node('Reshape', [out, name + '_one'], [name], name=name))
        return nodes

    convert.__name__ = 'convert_' + onnx_op
    return convert


convert_mean = _convert_reduction('ReduceMean', REDUCE_AXES_INPUT_OPSET)
convert_sum = _convert_reduction('ReduceSum', REDUCE_SUM_AXES_INPUT_OPSET)


def convert_identity_like_rhs(node, **kwargs):
    """_identity_with_attr_like_rhs(lhs, rhs): lhs (rhs only ties shapes and dtypes at graph
    build time). The weight-standardized conv's Symbol passes w_hat through one."""
    name, inputs, _ = get_inputs(node, kwargs)
    return [helper.make_node('Identity', [inputs[0]], [name], name=name)]


def convert_rsqrt(node, **kwargs):
    name, inputs, _ = get_inputs(node, kwargs)
    return [helper.make_node('Sqrt', inputs, [name + '_sqrt']),
            helper.make_node('Reciprocal', [name + '_sqrt'], [name], name=name)]


def convert_det(node, **kwargs):
    """linalg_det as Det. The 'ops' backend's Symbol graphs hold one, on a (1, 1) zero matrix,
    as a bind-time dtype check (float16 is refused there); its LU/pivot outputs are hidden."""
    name, inputs, _ = get_inputs(node, kwargs)
    return [helper.make_node('Det', inputs, [name], name=name)]


def _reshape_pieces(codes):
    """MXNet's reshape codes (reverse=False) as a list of pieces of the target shape:
    ('dim', i) input dim i, ('dims', i) input dims i.., ('prod', i) dims i*(i+1), ('const', v),
    ('split', i, other) input dim i divided by `other`."""
    pieces, src, pos = [], 0, 0
    while pos < len(codes):
        code = codes[pos]
        if src is None and code in (0, -3, -4):
            raise ValueError(f"Reshape: code {code} after -2 has no input dimension left")
        if code == 0:
            pieces.append(('dim', src))
            src += 1
        elif code == -2:
            pieces.append(('dims', src))
            src = None  # every input dim copied: only constants may follow
        elif code == -3:
            pieces.append(('prod', src))
            src += 2
        elif code == -4:
            first, second = codes[pos + 1], codes[pos + 2]
            if first == -1 and second == -1:
                raise ValueError("Reshape: -4 with -1 twice has no single split")
            pieces += [('split', src, second) if first == -1 else ('const', first),
                       ('split', src, first) if second == -1 else ('const', second)]
            src += 1
            pos += 2
        else:  # a size, or -1: MXNet moves past one input dim for either
            pieces.append(('const', code))
            if src is not None:
                src += 1
        pos += 1
    return pieces


def convert_reshape_codes(node, kwargs):
    """Reshape with -2/-3/-4 (reverse=False): the target shape built from Shape(x) slices."""
    make = helper.make_node
    name, inputs, attrs = get_inputs(node, kwargs)
    init = kwargs['initializer']
    n = name + '_rs_'
    nodes = [make('Shape', [inputs[0]], [n + 'in'])]
    parts = []

    def dims(begin, end, tag):
        create_tensor([begin], n + tag + '_b', init)
        create_tensor([end], n + tag + '_e', init)
        nodes.append(make('Slice', [n + 'in', n + tag + '_b', n + tag + '_e'], [n + tag]))
        return n + tag

    for k, piece in enumerate(_reshape_pieces(convert_string_to_list(attrs['shape']))):
        tag = 'p%d' % k
        if piece[0] == 'const':
            create_tensor([piece[1]], n + tag, init)
            parts.append(n + tag)
        elif piece[0] == 'dim':
            parts.append(dims(piece[1], piece[1] + 1, tag))
        elif piece[0] == 'dims':
            parts.append(dims(piece[1], np.iinfo(np.int64).max, tag))
        elif piece[0] == 'prod':
            first, second = dims(piece[1], piece[1] + 1, tag + 'a'), dims(
                piece[1] + 1, piece[1] + 2, tag + 'b')
            nodes.append(make('Mul', [first, second], [n + tag]))
            parts.append(n + tag)
        else:  # split: dim // other, exact (MXNet requires it to divide)
            create_tensor([piece[2]], n + tag + '_by', init)
            nodes.append(make('Div', [dims(piece[1], piece[1] + 1, tag + 'd'), n + tag + '_by'],
                              [n + tag]))
            parts.append(n + tag)
    return nodes + [make('Concat', parts, [n + 'target'], axis=0),
                    make('Reshape', [inputs[0], n + 'target'], [name], name=name)]


def _reshape_with(original):
    @functools.wraps(original)
    def convert_reshape(node, **kwargs):
        try:
            return original(node, **kwargs)
        except AttributeError:  # "Shape value not supported in ONNX": -2/-3/-4
            if node.get('attrs', {}).get('reverse', 'False') in ('True', '1'):
                raise
            return convert_reshape_codes(node, kwargs)

    return convert_reshape


def register():
    """Install the repairs (idempotent); onnx_export calls this on import."""
    if getattr(MXNetGraph.create_onnx_graph_proto, 'gn_mxnet_export_graph', False):
        return
    MXNetGraph.create_onnx_graph_proto = _with_node_shapes(MXNetGraph.create_onnx_graph_proto)
    for opset in (12, 13):  # MXNet registers mean and sum at both; ours must shadow both
        MXNetGraph.register('mean', opset_version=opset)(convert_mean)
        MXNetGraph.register('sum', opset_version=opset)(convert_sum)
    MXNetGraph.register('_identity_with_attr_like_rhs', opset_version=12)(
        convert_identity_like_rhs)
    MXNetGraph.register('rsqrt', opset_version=12)(convert_rsqrt)
    MXNetGraph.register('_linalg_det', opset_version=12)(convert_det)
    reshape = MXNetGraph.registry_[12]['Reshape']
    MXNetGraph.register('Reshape', opset_version=12)(_reshape_with(reshape))
