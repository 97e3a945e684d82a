"""One normalization factory shared by every network builder, Gluon and Symbol.

A builder never names a normalization layer class. It receives a :class:`Norm` made by
:func:`make_norm` and asks it for a layer (Gluon) or applies it to a Symbol. That keeps
"which norm" a one-string choice (``'bn' | 'gn' | 'ln' | 'in' | 'none'``) and keeps one copy of
every residual block whatever the norm is.

``ln`` and ``in`` are GroupNorm with one group and with one group per channel (the GN paper's
two extremes), so they run on the same GN backends as ``gn``.
"""
import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from ..operator.gluon import GroupNorm
from ..operator.symbol import GroupNorm as SymbolGroupNorm
from ..operator.validation import BACKENDS

NORMS = ('bn', 'gn', 'ln', 'in', 'none')
"""The norm names every builder takes as `norm=`: BatchNorm, GroupNorm, LayerNorm (GroupNorm with
one group), InstanceNorm (GroupNorm with one channel per group), and no norm."""
# The group-wise norms: they run on the GroupNorm op and its backends.
GROUP_NORMS = ('gn', 'ln', 'in')
"""The norms of `NORMS` that run on the GroupNorm op (any backend) and can be fused."""

# Options that only BatchNorm understands. gluoncv's ResNetV1b injects `use_global_stats`
# into its norm kwargs; group-wise norms compute statistics per sample and have no running
# statistics, so for them these options are meaningless and are dropped.
_BATCHNORM_ONLY = ('use_global_stats', 'momentum', 'fix_gamma')


class Identity(HybridBlock):
    """The ``'none'`` norm: passes data through and owns no parameters.

    It accepts (and ignores) the constructor arguments a norm layer gets, so it can stand
    wherever a norm layer is built (gluoncv passes ``in_channels`` and ``gamma_initializer``).
    """

    def __init__(self, in_channels=0, gamma_initializer=None, beta_initializer=None,
                 **kwargs):
        for option in _BATCHNORM_ONLY:
            kwargs.pop(option, None)
        super().__init__(**kwargs)

    def hybrid_forward(self, F, x):
        return x


def num_groups_for(norm, channels, num_groups=32):
    """Number of GroupNorm groups that ``norm`` uses over ``channels`` channels.

    Returns None for norms that are not group-wise ('bn', 'none'). ``channels=0`` means
    "not known yet" (Gluon deferred init); 'gn' then defers the divisibility check to the
    layer, and 'in' cannot work (its group count *is* the channel count).
    """
    if norm == 'ln':
        return 1
    if norm == 'in':
        if not channels:
            raise ValueError("norm='in' needs the channel count at construction "
                             "(in_channels > 0): instance norm uses one group per channel")
        return channels
    if norm == 'gn':
        if channels and channels % num_groups:
            raise ValueError("num_groups=%d does not divide %d channels (norm='gn'); pick a "
                             "num_groups that divides every layer's width" % (num_groups, channels))
        return num_groups
    return None


class Norm:
    """A normalization choice, usable as gluoncv's ``norm_layer`` and on Symbols.

    Gluon: ``norm(in_channels=C, gamma_initializer='zeros')`` returns a fresh HybridBlock whose
    parameters are named ``gamma``/``beta`` (BatchNorm adds ``running_mean``/``running_var``).
    Symbol: ``norm.symbol(data, name, channels, zero_gamma=False)`` returns the normalized Symbol
    with variables ``<name>_gamma``, ``<name>_beta`` (BatchNorm adds aux ``<name>_moving_mean``
    and ``<name>_moving_var``).
    """

    def __init__(self, norm='gn', num_groups=32, backend='native', epsilon=1e-5, momentum=0.9):
        if norm not in NORMS:
            raise ValueError("unknown norm %r; choose one of %s" % (norm, ', '.join(NORMS)))
        if norm == 'gn' and (not isinstance(num_groups, int) or num_groups < 1):
            raise ValueError("num_groups must be a positive int, got %r" % (num_groups,))
        if norm in GROUP_NORMS and backend not in BACKENDS:
            raise ValueError("unknown GroupNorm backend %r; choose one of %s"
                             % (backend, ', '.join(BACKENDS)))
        self.norm = norm
        self.num_groups = num_groups
        self.backend = backend
        self.epsilon = epsilon
        self.momentum = momentum

    def __repr__(self):
        return ('Norm(norm=%r, num_groups=%r, backend=%r, epsilon=%r)'
                % (self.norm, self.num_groups, self.backend, self.epsilon))

    @property
    def has_parameters(self):
        return self.norm != 'none'

    @property
    def fuses(self):
        """Whether its layers can be the fused y = act(GN(x) + residual): the group-wise norms
        (Gluon: ``norm(in_channels=C, activation='relu')`` called as ``layer(x, residual)``;
        Symbol: ``norm.symbol(..., act_type=, residual=)``)."""
        return self.norm in GROUP_NORMS

    def groups_for(self, channels):
        """GroupNorm groups over ``channels`` channels (None for 'bn' and 'none')."""
        return num_groups_for(self.norm, channels, self.num_groups)

    def check_channels(self, channels):
        """Raise ValueError now if this norm cannot normalize ``channels`` channels."""
        self.groups_for(channels)

    # -- Gluon -------------------------------------------------------------------------------
    def __call__(self, in_channels=0, **kwargs):
        """Build one Gluon norm layer (gluoncv's ``norm_layer`` calling convention)."""
        if self.norm == 'none':
            return Identity(**kwargs)
        if self.norm == 'bn':
            kwargs.setdefault('momentum', self.momentum)
            return nn.BatchNorm(in_channels=in_channels, epsilon=self.epsilon, **kwargs)
        for option in _BATCHNORM_ONLY:
            kwargs.pop(option, None)
        return GroupNorm(num_groups=self.groups_for(in_channels), in_channels=in_channels,
                         epsilon=self.epsilon, backend=self.backend, **kwargs)

    # -- Symbol ------------------------------------------------------------------------------
    def symbol(self, data, name, channels, zero_gamma=False, act_type='none', residual=None):
        """Normalize Symbol ``data`` (NCHW, ``channels`` channels); variables named after ``name``.

        ``zero_gamma`` marks gamma to be initialized to zeros (the residual-block recipe);
        Module's initializers honour a variable's ``init`` attribute. ``act_type`` and
        ``residual`` make it the fused form (only where :attr:`fuses`).
        """
        if (act_type != 'none' or residual is not None) and not self.fuses:
            raise ValueError(f"norm={self.norm!r} has no fused form (act_type, residual); "
                             f"only {', '.join(GROUP_NORMS)} do")
        if self.norm == 'none':
            return data
        gamma_init = {'init': mx.init.Zero()} if zero_gamma else {}
        gamma = mx.sym.Variable(name + '_gamma', shape=(channels,), **gamma_init)
        beta = mx.sym.Variable(name + '_beta', shape=(channels,))
        if self.norm == 'bn':
            # Symbol BatchNorm's defaults (eps=1e-3, fix_gamma=True) differ from Gluon's;
            # spell them out so both fronts compute the same thing.
            return mx.sym.BatchNorm(data, gamma=gamma, beta=beta, eps=self.epsilon,
                                    momentum=self.momentum, fix_gamma=False, name=name)
        return SymbolGroupNorm(data=data, gamma=gamma, beta=beta,
                               num_groups=self.groups_for(channels), eps=self.epsilon, axis=1,
                               name=name, backend=self.backend, act_type=act_type,
                               residual=residual)


class ChannelsPerGroupNorm(Norm):
    """GroupNorm with a fixed number of channels per group (G = C / group_size in each layer):
    the paper's Table 3 variant; group_size=1 is InstanceNorm."""

    def __init__(self, group_size, backend='native', epsilon=1e-5):
        super().__init__('gn', num_groups=1, backend=backend, epsilon=epsilon)
        self.group_size = group_size

    def __repr__(self):
        return f'ChannelsPerGroupNorm(group_size={self.group_size}, backend={self.backend!r})'

    def groups_for(self, channels):
        if not channels or channels % self.group_size:
            raise ValueError(f"{self.group_size} channels per group needs a channel count "
                             f"divisible by it, got {channels}")
        return channels // self.group_size


def make_norm(norm='gn', num_groups=32, backend='native', epsilon=1e-5, momentum=0.9):
    """The factory: ``make_norm('gn', 32)`` → a :class:`Norm` for Gluon and Symbol builders.

    An existing :class:`Norm` passes through unchanged, so builders accept either.
    """
    if isinstance(norm, Norm):
        return norm
    return Norm(norm, num_groups=num_groups, backend=backend, epsilon=epsilon,
                momentum=momentum)
