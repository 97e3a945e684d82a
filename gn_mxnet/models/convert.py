"""Load pretrained ResNet weights from other frameworks into gn_mxnet's nets, and write them back.

Formats (our own names are gluoncv's structural names, ``layer1.0.bn1.gamma``):

- ``detectron``: Detectron's Caffe2 pickles (``R-50-GN.pkl``, ``R-101-GN.pkl``): a pickled dict
  ``{'blobs': {name: ndarray}}`` with names like ``conv1_w``, ``conv1_gn_s``,
  ``res2_0_branch2a_w``, ``res2_0_branch2a_gn_b``, ``res2_0_branch1_w``, ``pred_w``.
- ``gluoncv``: a Gluon ``.params`` file, e.g. gluoncv's ``resnet50_v1b_gn`` (same names as ours).
- ``torchvision``: a PyTorch ResNet ``state_dict`` saved as ``.npz`` (``bn1.weight`` is gamma).
- ``safetensors``: the same torchvision/timm state dict as a ``.safetensors`` file.

timm's ResNetV2 (BiT, gn_mxnet.models.resnetv2) has timm's names in our nets too; only its
GroupNorms' ``weight``/``bias`` become ``gamma``/``beta``, in the ``.npz`` and ``.safetensors``
formats alike.

Reading and writing the files (atomically; pickles restricted to NumPy arrays) is
``weight_files.py``; this module maps names and loads.

Loading is all or nothing: every tensor of the file must find a parameter of the same shape
and every parameter must be filled, else :class:`WeightMismatchError` counts the offending
names (its attributes list them all) and the net is left untouched.

Command line: ``python -m gn_mxnet.convert SRC DST [--model resnet50_v1b] [--norm gn]``; a
ResNetV2 state dict builds the ResNetV2 its tensors' shapes describe.
"""
import argparse
import re
import sys

import mxnet as mx
import numpy as np

from ..utils import cli
from . import resnetv2
from .norms import NORMS
from .weight_files import (FORMATS, NAMING, UnsafePickleError, WeightFileError,
                           WeightMismatchError, check_format, guess_format, read_tensors,
                           write_tensors)

__all__ = ['FORMATS', 'UnsafePickleError', 'WeightFileError', 'WeightMismatchError', 'describe',
           'export_tensors',
           'guess_format', 'load_tensors', 'load_weights', 'main', 'read_tensors',
           'save_weights', 'spread_input_channels', 'to_our_names', 'write_tensors']

# Tensors a file may carry that are training state, not model weights (by naming).
_NOT_WEIGHTS = {
    'detectron': re.compile(r'_momentum$'),
    'torchvision': re.compile(r'\.num_batches_tracked$'),
    'gluoncv': None,
}


# --- name mapping -------------------------------------------------------------------------
# Detectron counts stages from res2 and lettered convs from 'a'; ours counts layer1 and conv1.
_DETECTRON_BLOCK = re.compile(r'^res(\d+)_(\d+)_branch(1|2([a-z]))_(w|gn_s|gn_b)$')
_DETECTRON_STEM = {'conv1_w': 'conv1.weight', 'conv1_gn_s': 'bn1.gamma',
                   'conv1_gn_b': 'bn1.beta', 'pred_w': 'fc.weight', 'pred_b': 'fc.bias'}
_DETECTRON_SUFFIX = {'w': 'weight', 'gn_s': 'gamma', 'gn_b': 'beta'}
_OURS_BLOCK = re.compile(r'^layer(\d+)\.(\d+)\.(conv(\d+)|bn(\d+)|downsample\.([01]))\.(\w+)$')
# PyTorch names norm parameters weight/bias. Norm layers: torchvision's ResNet bn<k> and
# downsample.1; timm's ResNetV2 (models/resnetv2.py) stages.<i>.blocks.<j>.norm<k> and norm.
_TORCH_NORM = re.compile(r'^(bn\d+|layer\d+\.\d+\.(bn\d+|downsample\.1)'
                         r'|norm|stages\.\d+\.blocks\.\d+\.norm\d)\.(?P<kind>weight|bias)$')


def detectron_to_ours(name):
    """Our name for Detectron blob ``name``, or None when it is not a ResNet-GN weight."""
    if name in _DETECTRON_STEM:
        return _DETECTRON_STEM[name]
    match = _DETECTRON_BLOCK.match(name)
    if not match:
        return None
    stage, block, branch, letter, kind = match.groups()
    prefix = 'layer%d.%s.' % (int(stage) - 1, block)
    if branch == '1':
        return prefix + ('downsample.0.weight' if kind == 'w'
                         else 'downsample.1.' + _DETECTRON_SUFFIX[kind])
    index = ord(letter) - ord('a') + 1
    return prefix + ('conv%d.weight' % index if kind == 'w'
                     else 'bn%d.%s' % (index, _DETECTRON_SUFFIX[kind]))


def ours_to_detectron(name):
    """Detectron blob name for our parameter ``name`` (GN nets only)."""
    for detectron, ours in _DETECTRON_STEM.items():
        if ours == name:
            return detectron
    match = _OURS_BLOCK.match(name)
    if not match:
        raise WeightMismatchError("parameter %r has no Detectron name" % name)
    layer, block, _, conv, norm, downsample, kind = match.groups()
    prefix = 'res%d_%s_branch' % (int(layer) + 1, block)
    suffix = {'weight': 'w', 'gamma': 'gn_s', 'beta': 'gn_b'}.get(kind)
    if suffix is None:
        raise WeightMismatchError("parameter %r has no Detectron GN name (Detectron files "
                                  "hold GN or frozen-BN affine weights only)" % name)
    if downsample is not None:
        return prefix + '1_' + suffix
    letter = chr(ord('a') + int(conv or norm) - 1)
    return prefix + '2%s_%s' % (letter, suffix)


def torchvision_to_ours(name):
    match = _TORCH_NORM.match(name)
    if match:
        kind = match.group('kind')
        return name[:-len(kind)] + ('gamma' if kind == 'weight' else 'beta')
    return name


def ours_to_torchvision(name):
    if name.endswith('.gamma'):
        return name[:-len('gamma')] + 'weight'
    if name.endswith('.beta'):
        return name[:-len('beta')] + 'bias'
    return name


# --- conversion ---------------------------------------------------------------------------
def _legacy_gluon_names(net):
    """Prefix-style names (old ``collect_params().save``) → our structural names."""
    table = {}
    for structural, param in net._collect_params_with_prefix().items():
        table[param.name] = structural
        if param.name.startswith(net.prefix):
            table[param.name[len(net.prefix):]] = structural
    return table


def to_our_names(tensors, fmt, net=None):
    """({our name: array}, {our name: source name}, [source names with no counterpart])."""
    naming = NAMING[check_format(fmt)]
    skip = _NOT_WEIGHTS[naming]
    legacy = (naming == 'gluoncv' and net is not None and tensors
              and not any('.' in name for name in tensors))
    table = _legacy_gluon_names(net) if legacy else {}
    ours, source_of, unmatched = {}, {}, []
    for name, array in tensors.items():
        if skip is not None and skip.search(name):
            continue
        if naming == 'detectron':
            mapped = detectron_to_ours(name)
        elif naming == 'torchvision':
            mapped = torchvision_to_ours(name)
        else:
            mapped = table.get(name) if legacy else name
        if mapped is None:
            unmatched.append(name)
            continue
        ours[mapped] = array
        source_of[mapped] = name
    return ours, source_of, unmatched


def _with_source_name(name, fmt):
    """'layer2.1.bn2.gamma (res3_1_branch2b_gn_s)': our name and what the file would call it."""
    try:
        source = {'detectron': ours_to_detectron, 'torchvision': ours_to_torchvision}.get(
            NAMING[fmt], lambda n: n)(name)
    except WeightMismatchError:
        return name
    return name if source == name else '%s (%s)' % (name, source)


def _shape_fits(expected, actual):
    # 0 in a Gluon shape is a dimension not inferred yet (deferred init): anything fits.
    return len(expected) == len(actual) and all(e in (0, a) for e, a in zip(expected, actual))


def load_tensors(net, tensors, fmt, source='the weights', skip=(), ctx=None):
    """Load ``tensors`` (in format ``fmt``'s naming) into ``net``, all or nothing.

    skip: prefixes of our parameter names (e.g. ``'fc.'``) that are not loaded, for
    fine-tuning with a new head; the file's tensors for them are dropped, and those
    parameters keep whatever initialization the caller gives them.
    """
    ours, source_of, unmatched = to_our_names(tensors, fmt, net)
    params = net._collect_params_with_prefix()
    skipped = lambda name: any(name.startswith(prefix) for prefix in skip)
    unused = sorted(unmatched + [source_of[n] for n in ours if n not in params and not skipped(n)])
    missing = sorted(_with_source_name(n, fmt) for n in params
                     if n not in ours and not skipped(n))
    misshaped = sorted('%s %s (net wants %s)' % (source_of[n], tuple(ours[n].shape),
                                                 tuple(params[n].shape))
                       for n in params if n in ours and not skipped(n)
                       and not _shape_fits(params[n].shape, ours[n].shape))
    if unused or missing or misshaped:
        raise WeightMismatchError.of(
            "refusing to load %s (%s format) into %s; nothing was loaded"
            % (source, fmt, type(net).__name__), missing, unused, misshaped)
    ctx = ctx or mx.cpu()
    for name, param in params.items():
        if not skipped(name):
            # What Block.load_parameters does per parameter; it also completes deferred init.
            param._load_init(mx.nd.array(ours[name], dtype=param.dtype), ctx)
    return net


def load_weights(net, path, fmt=None, skip=(), ctx=None):
    """Load the weight file ``path`` (format from its extension unless given) into ``net``."""
    fmt = check_format(fmt or guess_format(path))
    return load_tensors(net, read_tensors(path, fmt), fmt, source=path, skip=skip, ctx=ctx)


# The first convolution's weight: ResNet v1b's, ResNetV2's.
STEM_WEIGHTS = ('conv1.weight', resnetv2.STEM_WEIGHT)


def spread_input_channels(tensors, fmt, channels, net=None):
    """A copy of ``tensors`` whose stem conv takes ``channels`` inputs: a grey classifier's
    1-channel stem spread over them, each with 1/channels of its weight, so an image carrying
    the grey values in every channel (the embedded detection sets) gives the grey net's
    outputs, up to rounding. A weight-standardized stem is the exception: standardization
    sees the spread weight's statistics, not the grey one's, so its output is scaled
    (3·sqrt(146/144) for a 7x7 Qiao-standardized stem over 3 channels, docs/detection.md) and
    the norm after it removes the scale. A stem that already has ``channels`` inputs is kept."""
    ours, source_of, _ = to_our_names(tensors, fmt, net)
    stem = next((name for name in STEM_WEIGHTS if name in ours), None)
    if stem is None:
        raise WeightMismatchError("no stem convolution (%s) in the weights to spread over %d "
                                  "input channels" % (' or '.join(STEM_WEIGHTS), channels))
    weight = ours[stem]
    if weight.shape[1] == channels:
        return dict(tensors)
    if weight.shape[1] != 1:
        raise WeightMismatchError("--input-channels spreads a 1-channel (grey) stem; %s has %d "
                                  "input channels" % (source_of[stem], weight.shape[1]))
    spread = dict(tensors)
    spread[source_of[stem]] = np.repeat(weight / channels, channels, axis=1)
    return spread


def export_tensors(net, fmt):
    """{name: numpy array} of ``net``'s parameters in format ``fmt``'s naming."""
    naming = NAMING[check_format(fmt)]
    # After a forward pass MKLDNN reorders convolution weights asynchronously, and asnumpy()
    # can read one half reordered; wait for every pending write first.
    mx.nd.waitall()
    tensors = {}
    for name, param in net._collect_params_with_prefix().items():
        array = param.data().asnumpy()
        if naming == 'detectron':
            tensors[ours_to_detectron(name)] = array
        elif naming == 'torchvision':
            tensors[ours_to_torchvision(name)] = array
            if name.endswith('.running_mean'):  # torch's strict loading expects the counter
                counter = name[:-len('running_mean')] + 'num_batches_tracked'
                tensors[counter] = np.zeros((), dtype=np.int64)
        else:
            tensors[name] = array
    return tensors


def save_weights(net, path, fmt=None):
    """Write ``net``'s parameters to ``path`` in format ``fmt`` (from the extension by default)."""
    fmt = check_format(fmt or guess_format(path))
    write_tensors(export_tensors(net, fmt), path, fmt)


# --- which net a file belongs to ----------------------------------------------------------
def describe(tensors, fmt):
    """(model name, num_classes, norm) that a ResNet weight file was saved from."""
    ours, _, _ = to_our_names(tensors, fmt)
    units = {}
    for name in ours:
        match = _OURS_BLOCK.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            units[stage] = max(units.get(stage, 0), block + 1)
    if 'fc.weight' not in ours or not units:
        raise WeightMismatchError("the %s file holds no recognizable ResNet (found %d tensors, "
                                  "e.g. %s)" % (fmt, len(tensors), sorted(tensors)[:5]))
    bottleneck = any('.conv3.' in name for name in ours)
    blocks = [units[s] for s in sorted(units)]
    norm = 'bn' if any(n.endswith('.running_mean') for n in ours) else (
        'gn' if 'bn1.gamma' in ours else 'none')
    from .resnet import IMAGENET_RESNETS
    for depth, (block, counts) in IMAGENET_RESNETS.items():
        if list(counts) == blocks and (block.expansion == 4) == bottleneck:
            return 'resnet%d_v1b' % depth, ours['fc.weight'].shape[0], norm
    if len(blocks) == 3 and len(set(blocks)) == 1:
        depth = blocks[0] * (9 if bottleneck else 6) + 2
        return 'resnet%d_small' % depth, ours['fc.weight'].shape[0], norm
    raise WeightMismatchError("blocks per stage %s (%s) match no known ResNet"
                              % (blocks, 'bottleneck' if bottleneck else 'basic'))


def main(argv=None):
    """`python -m gn_mxnet.convert SOURCE DESTINATION [--from F] [--to F] ...`: convert a ResNet
    weight file between formats through a gn_mxnet net; `argv` defaults to the command line.
    Returns 0, or raises naming the tensors that do not fit."""
    parser = cli.ArgumentParser(
        prog='python -m gn_mxnet.convert',
        description="Convert ResNet weights between Detectron (.pkl), gluoncv/gn_mxnet "
                    "(.params) and torchvision/timm state dicts (.npz, .safetensors) through "
                    "a gn_mxnet net; fails, naming the tensors, unless every weight fits. "
                    "timm's ResNetV2 (BiT) state dicts are recognized by their names.")
    parser.add_argument('source', type=cli.existing_file, help='weight file to read')
    parser.add_argument('destination', help='weight file to write')
    parser.add_argument('--from', dest='source_format', choices=FORMATS,
                        help='format of SOURCE (default: from its extension)')
    parser.add_argument('--to', dest='destination_format', choices=FORMATS,
                        help='format of DESTINATION (default: from its extension)')
    parser.add_argument('--model', help='gn_mxnet model name (default: read from the file)')
    parser.add_argument('--num-classes', type=cli.positive_int,
                        help='classes of the head (default: read from the file)')
    parser.add_argument('--norm', choices=NORMS,
                        help="norm of the net (default: 'bn' if the file has running "
                             "statistics, else 'gn')")
    parser.add_argument('--num-groups', type=cli.positive_int, default=32,
                        help='GN groups (default 32)')
    parser.add_argument('--input-channels', type=cli.positive_int,
                        help="spread a grey (1-channel) stem over this many identical input "
                             "channels, e.g. 3 for a detector's RGB input")
    args = parser.parse_args(argv)

    return _convert(args)


def _convert(args):
    from . import get_model
    source_format = args.source_format or guess_format(args.source)
    tensors = read_tensors(args.source, source_format)
    if resnetv2.is_resnetv2(tensors):
        return _write(args, *_resnetv2_net(tensors, source_format, args))
    if args.model and args.num_classes:
        # Given explicitly: old prefix-named .params cannot be described before a net exists.
        model, num_classes, norm = args.model, args.num_classes, args.norm or 'gn'
    else:
        model, num_classes, norm = describe(tensors, source_format)
    model, norm = args.model or model, args.norm or norm
    num_classes = args.num_classes or num_classes
    # The 'ops' backend needs no compiled library and gives the same weights.
    net = get_model(model, num_classes=num_classes, norm=norm, num_groups=args.num_groups,
                    backend='ops', last_gamma=False)
    if args.input_channels:
        tensors = spread_input_channels(tensors, source_format, args.input_channels, net)
    return _write(args, net, tensors, model, norm, num_classes)


def _resnetv2_net(tensors, fmt, args):
    """(net, tensors, model, norm, num_classes) for a ResNetV2 state dict: the ResNetV2 that
    its shapes describe (named after timm's model when they are one), or --model's."""
    if args.norm not in (None, 'gn'):
        raise ValueError("a ResNetV2 (BiT) is GroupNorm + Weight Standardization; --norm %s "
                         "does not apply" % args.norm)
    if args.model and not resnetv2.parse_bit_name(args.model):
        raise ValueError("%s holds a ResNetV2 state dict; --model must be a BiT name such as "
                         "resnetv2_50x1_bit, not %r" % (args.source, args.model))
    if args.input_channels:
        tensors = spread_input_channels(tensors, fmt, args.input_channels)
    layout, name = resnetv2.layout_of({n: tuple(a.shape) for n, a in tensors.items()})
    layout['num_classes'] = args.num_classes or layout['num_classes']
    # The 'ops' backends need no compiled library and give the same weights.
    ops = dict(num_groups=args.num_groups, backend='ops', ws_backend='ops')
    if args.model:
        from . import get_model
        net = get_model(args.model, num_classes=layout['num_classes'],
                        in_channels=layout['in_channels'], **ops)
        name = args.model
    else:
        net = resnetv2.ResNetV2(**layout, **ops)
        name = name or 'ResNetV2(layers=%s, channels=%s, stem_channels=%d)' % (
            layout['layers'], layout['channels'], layout['stem_channels'])
    return net, tensors, name, 'gn', layout['num_classes']


def _write(args, net, tensors, model, norm, num_classes):
    source_format = args.source_format or guess_format(args.source)
    load_tensors(net, tensors, source_format, source=args.source)
    save_weights(net, args.destination, args.destination_format)
    count = sum(int(np.prod(p.shape)) for p in net.collect_params().values())
    print("%s -> %s: %s (norm=%s, %d classes), %d tensors, %d values"
          % (args.source, args.destination, model, norm, num_classes,
             len(net._collect_params_with_prefix()), count))
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
