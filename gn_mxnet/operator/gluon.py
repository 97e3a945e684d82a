"""Gluon layers: `GroupNorm` (per-channel gamma/beta, any backend, a drop-in `norm_layer`) and
`StdConv2D` (nn.Conv2D with Weight Standardization)."""
import sys
import weakref

from mxnet import ndarray
from mxnet.gluon import HybridBlock, Parameter, nn

from . import weight_standardization as ws
from .front import normalize
from .validation import (axis_layout, channel_axis, check_backend, check_ws_backend,
                         parse_attrs, parse_ws_attrs)


class GroupNorm(HybridBlock):
    """Group Normalization over `num_groups` groups of channels (Wu & He, 2018).

    gamma and beta have shape (in_channels,); with in_channels=0 they are created on the
    first forward pass. center=False / scale=False freeze beta at 0 / gamma at 1. `axis` as in
    `gn_mxnet.group_norm`: hybridized, an axis other than 1 / -1 fixes the ndim (3: 4-D).
    `activation` None, 'relu' or 'silu' makes it the fused layer y = act(GN(x) + residual),
    called as layer(x) or layer(x, residual); its parameters are the plain layer's.
    """

    def __init__(self, num_groups=32, in_channels=0, epsilon=1e-5, center=True, scale=True,
                 axis=1, backend='native', beta_initializer='zeros',
                 gamma_initializer='ones', activation=None, **kwargs):
        super().__init__(**kwargs)
        self._attrs = parse_attrs(num_groups, epsilon, axis,
                                  'none' if activation is None else activation)
        axis_layout(self._attrs.axis)  # hybridized, the layout comes from the axis alone
        # Not `_backend`: HybridBlock uses that name for its graph-partitioning backend.
        self._gn_backend = check_backend(backend)
        if in_channels and in_channels % num_groups != 0:
            raise ValueError(f"num_groups ({num_groups}) must divide the number of "
                             f"channels ({in_channels})")
        with self.name_scope():
            self.gamma = self.params.get('gamma', grad_req='write' if scale else 'null',
                                         shape=(in_channels,), init=gamma_initializer,
                                         allow_deferred_init=True, differentiable=scale)
            self.beta = self.params.get('beta', grad_req='write' if center else 'null',
                                        shape=(in_channels,), init=beta_initializer,
                                        allow_deferred_init=True, differentiable=center)

    @property
    def num_groups(self):
        return self._attrs.num_groups

    @property
    def backend(self):
        return self._gn_backend

    def infer_shape(self, x, *args):
        # Shape comes straight from x, so deferred init works for every backend.
        channels = x.shape[channel_axis(self._attrs.axis, len(x.shape))]
        self.gamma.shape = (channels,)
        self.beta.shape = (channels,)

    def hybrid_forward(self, F, x, residual=None, *, gamma, beta):
        return normalize(F, x, gamma, beta, self._attrs, self._gn_backend, residual=residual)

    def __repr__(self):
        channels = self.gamma.shape[0] if self.gamma.shape else 0
        return (f"{self.__class__.__name__}(num_groups={self._attrs.num_groups}, "
                f"in_channels={channels or None}, eps={self._attrs.eps}, "
                f"axis={self._attrs.axis}, backend={self._gn_backend!r}"
                + (f", activation={self._attrs.act_type!r})" if self._attrs.act_type != 'none'
                   else ")"))


class StdConv2D(nn.Conv2D):
    """nn.Conv2D whose weight is standardized per output channel before the convolution
    (Weight Standardization; gn_mxnet.standardize_weight gives the formulas): nn.Conv2D's
    arguments, plus `ws_eps` (None: the convention's default), `ws_convention` ('qiao' or
    'timm') and `ws_backend` ('native' or 'ops'). Its parameters are nn.Conv2D's (`weight`,
    `bias`), named alike, so weights load either way; the stored weight is the raw one."""

    def __init__(self, channels, kernel_size, *args, ws_eps=None,
                 ws_convention=ws.DEFAULT_CONVENTION, ws_backend=ws.DEFAULT_BACKEND, **kwargs):
        self._ws_attrs = parse_ws_attrs(ws_eps, ws_convention)
        self._ws_backend = check_ws_backend(ws_backend)
        super().__init__(channels, kernel_size, *args, **kwargs)

    @property
    def ws_eps(self):
        return self._ws_attrs.eps

    @property
    def ws_convention(self):
        return self._ws_attrs.convention

    @property
    def ws_backend(self):
        return self._ws_backend

    def hybrid_forward(self, F, x, weight, bias=None):
        # The native op writes its gradient; a guard copy lets MXNet add it where asked. Only
        # a weight whose grad_req is 'add' needs it (in ResNet-50 the copies cost as much as
        # the op: docs/benchmarks.md), and a graph traced without it is dropped when that
        # changes (_GradReqWatched).
        added = self.weight.grad_req == 'add'
        if F is not ndarray:
            _GradReqWatched.watch(self.weight)
        like = None
        if F is not ndarray and self._ws_backend == 'native' and 0 in self.weight.shape:
            k = self._kwargs  # in_channels unknown: the native op needs it from x
            like = ws.weight_shape_like(F, x, k['num_filter'], k['kernel'], k['num_group'],
                                        k['layout'])
        weight = ws.standardize(F, weight, self._ws_attrs, self._ws_backend, like=like,
                                grad_added=added)
        return super().hybrid_forward(F, x, weight, bias)

    def __repr__(self):
        return (f"{super().__repr__()[:-1]}, ws_convention={self.ws_convention!r}, "
                f"ws_eps={self.ws_eps}, ws_backend={self.ws_backend!r})")


class _GradReqWatched(Parameter):
    """A StdConv2D weight: when its grad_req turns to or from 'add', every hybridized block
    that traced a graph with it drops that graph, whose guard was chosen for the old req (the
    next call traces again). The tracers are the HybridBlocks building a graph (MXNet's
    HybridBlock._get_graph) on the stack while StdConv2D traces; weakly held."""

    @classmethod
    def watch(cls, param):
        if not isinstance(param, cls):
            param.__class__ = cls   # the same Parameter, shared with any plain twin
        tracers = param.__dict__.setdefault('_ws_tracers', weakref.WeakSet())
        frame = sys._getframe(1)
        while frame is not None:
            block = frame.f_locals.get('self')
            if frame.f_code.co_name == '_get_graph' and isinstance(block, HybridBlock):
                tracers.add(block)
            frame = frame.f_back

    @property
    def grad_req(self):
        return self._grad_req

    @grad_req.setter
    def grad_req(self, req):
        added = self._grad_req == 'add'
        Parameter.grad_req.fset(self, req)
        if (self._grad_req == 'add') != added:
            for block in list(self.__dict__.get('_ws_tracers', ())):
                block._clear_cached_op()
            self.__dict__['_ws_tracers'] = weakref.WeakSet()
