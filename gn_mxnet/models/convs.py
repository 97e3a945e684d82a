"""One convolution factory shared by every network builder, Gluon and Symbol: the conv twin of
:mod:`gn_mxnet.models.norms`.

A builder that owns its convs asks a :class:`Conv` made by :func:`make_conv` for a layer (Gluon)
or applies it to a Symbol; a net built by gluoncv (whose blocks construct ``nn.Conv2D``
themselves) is converted afterwards by :meth:`Conv.apply`. That keeps "which conv" a one-string
choice (``'plain' | 'ws'``) and one copy of every block whatever the conv is.

``'ws'`` is the weight-standardized convolution (Qiao et al., 2019): each output channel's
weights are standardized over (C_in, kH, kW) before the convolution
(:func:`gn_mxnet.operator.weight_standardization.standardize_weight` says how, per convention;
the defaults are the operator's: Qiao et al.'s convention, its eps 1e-5, its default backend).
It owns exactly the parameters of a plain conv (``weight``, ``bias``), so parameter names,
structural and prefixed, Gluon and Symbol, are those of ``conv='plain'`` and weights load
either way.
"""
import mxnet as mx
from mxnet.gluon import nn
from mxnet.gluon.block import _BlockScope

from ..operator.gluon import StdConv2D
from ..operator.symbol import std_convolution
from ..operator.validation import check_ws_backend, parse_ws_attrs
from ..operator.weight_standardization import DEFAULT_BACKEND, DEFAULT_CONVENTION

CONVS = ('plain', 'ws')
"""The conv names every builder takes as `conv=`: a plain convolution and a weight-standardized
one."""


def _layer_arguments(conv):
    """The constructor arguments that rebuild nn.Conv2D ``conv`` (read from what it stores)."""
    kw = conv._kwargs
    return dict(channels=kw['num_filter'], kernel_size=kw['kernel'], strides=kw['stride'],
                padding=kw['pad'], dilation=kw['dilate'], groups=kw['num_group'],
                layout=kw['layout'], use_bias=not kw['no_bias'],
                in_channels=conv._in_channels,
                activation=conv.act._act_type if conv.act is not None else None)


class Conv:
    """A convolution choice for Gluon builders, gluoncv nets and Symbols.

    Gluon: ``conv.layer(channels, kernel_size, **nn.Conv2D kwargs)`` returns an ``nn.Conv2D``
    (``'plain'``) or a ``StdConv2D`` (``'ws'``) with parameters ``weight``/``bias``.
    Symbol: ``conv.symbol(data, name, **mx.sym.Convolution kwargs)`` with variables
    ``<name>_weight`` (and ``<name>_bias``). ``eps``, ``convention`` and ``backend`` are the
    weight standardization's (``eps=None``: the convention's default); 'plain' ignores them.
    """

    def __init__(self, conv='plain', eps=None, convention=DEFAULT_CONVENTION,
                 backend=DEFAULT_BACKEND):
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; choose one of {', '.join(CONVS)}")
        if conv == 'ws':   # refused here, at build time, not at the first forward pass
            parse_ws_attrs(eps, convention)
            check_ws_backend(backend)
        self.conv = conv
        self.eps = eps
        self.convention = convention
        self.backend = backend

    def __repr__(self):
        if self.conv == 'plain':
            return "Conv(conv='plain')"
        return (f'Conv(conv={self.conv!r}, eps={self.eps!r}, convention={self.convention!r}, '
                f'backend={self.backend!r})')

    @property
    def standardizes(self):
        """Whether its convs standardize their weights."""
        return self.conv == 'ws'

    def _ws_options(self):
        return dict(ws_eps=self.eps, ws_convention=self.convention, ws_backend=self.backend)

    # -- Gluon -------------------------------------------------------------------------------
    def layer(self, channels, kernel_size, **kwargs):
        """Build one Gluon conv layer (``nn.Conv2D``'s arguments)."""
        if not self.standardizes:
            return nn.Conv2D(channels, kernel_size, **kwargs)
        return StdConv2D(channels, kernel_size, **kwargs, **self._ws_options())

    def apply(self, block):
        """Make every ``nn.Conv2D`` inside ``block`` this conv, in place; returns ``block``.

        For nets whose blocks build their own convs (gluoncv's ResNetV1b). Each conv is
        replaced by a StdConv2D with the same arguments and prefix that shares its Parameters
        (the very Parameter objects), so parameter names, initializers and values are
        unchanged. Call it before the first forward pass or ``hybridize()``. 'plain' leaves the
        block alone; a conv that already standardizes (or any other subclass) is kept.
        """
        if self.standardizes:
            self._replace_convs(block)
        return block

    def _replace_convs(self, block):
        for key, child in list(block._children.items()):
            if type(child) is nn.Conv2D:  # pylint: disable=unidiomatic-typecheck
                new = self._twin(child)
                assert new.weight is child.weight   # shared, not copied
                block._children[key] = new
                if getattr(block, key, None) is child:   # an attribute child (gluoncv's)
                    setattr(block, key, new)
            else:
                self._replace_convs(child)

    def _twin(self, conv):
        # Built outside any name scope: inside one (a net built within a parent's
        # name_scope()), Gluon would put the scope's prefix before the explicit one.
        scope = getattr(_BlockScope._current, 'value', None)
        _BlockScope._current.value = None
        try:
            return StdConv2D(prefix=conv.prefix, params=conv.params, **_layer_arguments(conv),
                             **self._ws_options())
        finally:
            _BlockScope._current.value = scope

    # -- Symbol ------------------------------------------------------------------------------
    def symbol(self, data, name, **kwargs):
        """Convolve Symbol ``data`` (``mx.sym.Convolution``'s arguments); variables named
        after ``name``."""
        if not self.standardizes:
            return mx.sym.Convolution(data, name=name, **kwargs)
        return std_convolution(data, name=name, **kwargs, **self._ws_options())


def make_conv(conv='plain', eps=None, convention=DEFAULT_CONVENTION, backend=DEFAULT_BACKEND):
    """The factory: ``make_conv('ws')`` → a :class:`Conv` for Gluon and Symbol builders.

    An existing :class:`Conv` passes through unchanged, so builders accept either.
    """
    if isinstance(conv, Conv):
        return conv
    return Conv(conv, eps=eps, convention=convention, backend=backend)
