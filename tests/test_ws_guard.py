"""StdConv2D's native op and grad_req: the op writes its weight gradient, so a guard copy in
front of it lets MXNet add the gradient where grad_req is 'add'. The guard is traced only for
such a weight (it costs as much as the op in a ResNet-50 step: docs/benchmarks.md), and a graph
traced for one grad_req is dropped when it changes to or from 'add'."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gn_mxnet.gluon import StdConv2D


def weight_grads(net, x):
    with autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    return [p.grad().asnumpy().copy() for name, p in sorted(net.collect_params().items())
            if name.endswith('weight')]


def guard_copies(block):
    """The `_copy` nodes (F.identity) of the graph `block` traced last."""
    return [n['op'] for n in json.loads(block._cached_graph[1].tojson())['nodes']].count('_copy')


@pytest.mark.parametrize('hybrid, nested, in_channels', [
    (False, True, 3), (True, True, 3), (True, False, 3), (True, True, 0)])
def test_gradient_is_added_after_grad_req_turns_to_add_and_written_after_it_turns_back(
        hybrid, nested, in_channels, native_library):
    first = StdConv2D(4, 3, in_channels=in_channels, padding=1, ws_backend='native')
    if nested:
        net = gluon.nn.HybridSequential()
        net.add(first, StdConv2D(2, 1, in_channels=in_channels and 4, ws_backend='native'))
    else:
        net = first
    net.initialize(mx.init.Normal(0.5))
    if hybrid:
        net.hybridize()
    x = mx.nd.array(np.random.RandomState(0).normal(0, 1, (2, 3, 5, 5)))
    once = weight_grads(net, x)                      # grad_req 'write': traced without guard
    if hybrid and in_channels:
        assert guard_copies(net) == 0
    net.collect_params().setattr('grad_req', 'add')
    net.collect_params().zero_grad()
    weight_grads(net, x)
    twice = weight_grads(net, x)
    if hybrid and in_channels:
        assert guard_copies(net) == len(once)        # traced again, one guard per weight
    for one, two in zip(once, twice):
        np.testing.assert_allclose(two, 2 * one, rtol=1e-6, atol=1e-6)
    net.collect_params().setattr('grad_req', 'write')
    again = weight_grads(net, x)
    if hybrid and in_channels:
        assert guard_copies(net) == 0
    for one, other in zip(once, again):
        np.testing.assert_allclose(other, one, rtol=1e-6, atol=1e-6)
