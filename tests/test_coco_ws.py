"""GN+WS Mask R-CNN (conv='ws', train/train_coco.py --conv ws): which convs are standardized
and how, plain's parameter names, gluoncv's FPN graph for conv='plain', BN* refused, a few
iterations, the comparison's GN+WS backbone for --conv ws."""
import json
import os
import re
import warnings
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest
from gluoncv.nn.feature import FPNFeatureExpander

from gn_mxnet.detection import model
from gn_mxnet.detection.engine import DetectionConfig, run
from gn_mxnet.detection.fpn import FPNFeatures
from gn_mxnet.models.convs import make_conv
from gn_mxnet.models.norms import make_norm
from gn_mxnet.training import checkpoint as ckpt
from test_coco import SMALL_SPEC, embedded  # noqa: F401 (the module's fixture, reused)

warnings.filterwarnings('ignore', message='.*already initialized.*')


def _detector(**kwargs):
    """A small detector whose parameter names do not depend on what was built before."""
    with mx.name.NameManager():
        return model.build_mask_rcnn(['a', 'b'], small=True, **kwargs)


def _standardized_convs(symbol):
    """{conv node name: whether its weight is computed (standardized) rather than a variable},
    whatever the WS backend (one native op or stock ops)."""
    nodes = json.loads(symbol.tojson())['nodes']
    return {n['name']: nodes[n['inputs'][1][0]]['op'] != 'null'
            for n in nodes if n['op'] == 'Convolution'}


def _graph(block):
    """The graph's nodes and edges; not the initializer attribute's object address, nor the
    version counters of BN's auxiliary inputs (they count the backbone's conversions)."""
    nodes = json.loads(re.sub(r' at 0x[0-9a-f]+', '', block._cached_graph[1].tojson()))['nodes']
    return [dict(n, inputs=[i[:2] for i in n['inputs']]) for n in nodes]


def _qiao(w, eps=1e-5):
    """Qiao et al.'s standardization in float64 NumPy: (w - mean) / (unbiased std + eps) over
    each output channel's (C_in, kH, kW)."""
    flat = w.reshape(len(w), -1).astype(np.float64)
    mean, std = flat.mean(axis=1, keepdims=True), flat.std(axis=1, ddof=1, keepdims=True)
    return ((flat - mean) / (std + eps)).reshape(w.shape).astype(np.float32)


@pytest.fixture(scope='module')
def detectors(native_library):
    return _detector(), _detector(conv='ws')


def test_ws_standardizes_every_conv_a_gn_follows_under_plain_names(detectors):
    plain, ws = detectors
    names = {n: p.shape for n, p in plain.collect_params().items()}
    assert names == {n: p.shape for n, p in ws.collect_params().items()}
    features = _standardized_convs(ws.features._cached_graph[1])
    # ResNet-50's 53 convs (stem, 16 x 3, 4 shortcuts) and the FPN's 9: all followed by GN
    assert len(features) == 62 and all(features.values())
    assert sorted(n for n in features if n.startswith('P')) == sorted(
        ['P%d_conv_lat' % k for k in (2, 3, 4, 5)] + ['P%d_conv1' % k for k in (2, 3, 4, 5, 6)])
    assert not any(_standardized_convs(plain.features._cached_graph[1]).values())
    from gn_mxnet.gluon import StdConv2D

    def convs(block):
        found = [block] if isinstance(block, mx.gluon.nn.Conv2D) else []
        return found + [c for child in block._children.values() for c in convs(child)]
    # the 4+4 head convs are WS; the RPN's convs and the mask predictor (no norm) stay plain
    assert [type(c) for c in convs(ws.box_features)] == [StdConv2D] * 4
    assert [type(c) for c in convs(ws.mask)] == [StdConv2D] * 4 + [mx.gluon.nn.Conv2D]
    assert [type(c) for c in convs(ws.rpn)] == [mx.gluon.nn.Conv2D] * 3


def test_ws_fpn_convolves_qiaos_standardized_weights(native_library):
    """The WS FPN (Symbol convs) computes the plain FPN of each weight standardized as Qiao et
    al. do (mmcv's ConvWS2d: unbiased std, eps 1e-5), on a small stand-in for the backbone's
    C2..C5; the head convs (Gluon) likewise."""
    data = mx.sym.var('data')
    stages, x = [], data
    for k in (2, 3, 4, 5):
        x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type='avg', name='c%d' % k)
        stages.append('c%d' % k)
    nets = [FPNFeatures(x, stages, 8, conv) for conv in ('plain', 'ws')]
    for net in nets:
        net.initialize()
    image = mx.nd.array(np.random.RandomState(0).rand(1, 8, 64, 64))
    nets[0](image)   # shapes, then the plain FPN gets the WS one's weights, standardized
    nets[1](image)
    ws_params = nets[1].collect_params()
    for name, param in nets[0].collect_params().items():
        param.set_data(mx.nd.array(_qiao(ws_params[name].data().asnumpy())))
    for plain, ws in zip(nets[0](image), nets[1](image)):
        np.testing.assert_allclose(ws.asnumpy(), plain.asnumpy(), rtol=1e-4, atol=1e-5)
    conv = model._box_head(make_norm('gn', 32, 'native'), make_conv('ws'))[1][0]
    conv.initialize()
    feature = mx.nd.array(np.random.RandomState(1).rand(1, 256, 7, 7))
    ours = conv(feature).asnumpy()
    weight = _qiao(conv.weight.data().asnumpy())
    theirs = mx.nd.Convolution(feature, mx.nd.array(weight), kernel=(3, 3), pad=(1, 1),
                               num_filter=256, no_bias=True).asnumpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('norm', ['gn', 'bn'])
def test_plain_fpn_is_gluoncvs_graph(norm, native_library):
    gn = make_norm('gn', 32, 'native') if norm == 'gn' else None
    backbone = model.build_backbone(50, norm, 32, 'native')
    kw = dict(no_bias=gn is not None, pretrained=False)
    theirs = FPNFeatureExpander(backbone, model.fpn_output_names(50), [256] * 4, use_1x1=True,
                                use_upsample=True, use_elewadd=True, use_p6=True,
                                norm_layer=model.FPNSymbolNorm(gn, 256) if gn else None, **kw)
    ours = FPNFeatures(backbone, model.fpn_output_names(50), 256, 'plain',
                       norm_layer=model.FPNSymbolNorm(gn, 256) if gn else None, **kw)
    assert _graph(ours) == _graph(theirs)


def test_ws_needs_gn_and_a_known_conv():
    for make in (lambda: DetectionConfig(norm='bn', conv='ws'),
                 lambda: model.build_mask_rcnn(['a'], norm='bn', conv='ws')):
        with pytest.raises(ValueError, match='^--conv ws needs --norm gn: [^\n]*$'):
            make()
    with pytest.raises(ValueError, match="unknown --conv 'std'"):
        DetectionConfig(conv='std')
    # conv='plain' is left out of the resume identity: older checkpoints still resume
    assert 'conv' not in DetectionConfig().identity()
    assert DetectionConfig(conv='ws').identity()['conv'] == 'ws'


def test_ws_detector_trains_and_refuses_a_plain_resume(embedded, tmp_path):  # noqa: F811
    cache, _, _ = embedded
    cfg = DetectionConfig(cache_dir=cache, num_train=SMALL_SPEC.num_train,
                          num_val=SMALL_SPEC.num_val, conv='ws', epochs=1, train_limit=2,
                          val_limit=1, out_dir=str(tmp_path / 'ws'), progress=False,
                          lr=0.01, warmup_iters=2, image_short=64, image_max_size=64,
                          evaluate='last')
    summary = run(cfg)
    assert summary['final_epoch'] == 1 and summary['config']['conv'] == 'ws'
    assert all(np.isfinite(v) for v in summary['final'].values())
    assert ckpt.load_checkpoint(cfg.out_dir)['config']['conv'] == 'ws'
    with pytest.raises(ValueError, match="conv: saved 'ws', now 'plain'"):
        run(replace(cfg, conv='plain', resume=True, epochs=2))


def test_train_coco_conv_ws_takes_the_gn_ws_pretraining(tmp_path, monkeypatch, capsys):
    from gn_mxnet.detection import comparison
    from test_coco_pipeline import _script
    train_coco = _script('train_coco')
    monkeypatch.chdir(tmp_path)
    args = train_coco.parse_args(['--conv', 'ws'])
    path, message = train_coco.backbone_from_args(args)
    assert path == '' and 'no pretrained GN+WS backbone' in message
    assert '--arms gn_ws' in message and '--conv ws' in message
    made = comparison.backbone_path(comparison.DEFAULT_ROOT, 'gn_ws')
    assert made.endswith(os.path.join('pretrain', 'gn_ws', 'backbone.params'))
    os.makedirs(os.path.dirname(made))
    open(made, 'w').close()
    cfg = train_coco.config_from_args(args)
    assert (cfg.conv, cfg.pretrained_backbone) == ('ws', made)
    with pytest.raises(SystemExit) as refused:   # a usage error, before anything is built
        train_coco.parse_args(['--norm', 'bn', '--conv', 'ws'])
    assert refused.value.code == 2
    assert 'error: --conv ws needs --norm gn' in capsys.readouterr().err


def test_a_spread_grey_ws_stem_feeds_its_gn_what_the_grey_classifier_did(native_library):
    """The comparison spreads the grey classifier's stem over 3 identical channels (w/3 each,
    gn_mxnet.convert --input-channels 3). Standardized over (3, 7, 7), each copy is the whole
    standardized filter again (x sqrt(146/144): the unbiased std's n-1), so a WS stem's output
    is 3 sqrt(146/144) times the classifier's; the GN after it removes that scale."""
    from gn_mxnet.gluon import GroupNorm, StdConv2D
    rng = np.random.RandomState(0)
    grey = (rng.randn(64, 1, 7, 7) * 0.05).astype(np.float32)
    image = rng.rand(2, 1, 32, 32).astype(np.float32)
    convs, normed = [], []
    for weight, x in ((grey, image), (np.repeat(grey / 3, 3, axis=1), np.repeat(image, 3, 1))):
        conv = StdConv2D(64, 7, strides=2, padding=3, use_bias=False, in_channels=len(x[0]))
        norm = GroupNorm(32, in_channels=64)
        conv.initialize()
        norm.initialize()
        conv.weight.set_data(mx.nd.array(weight))
        convs.append(conv(mx.nd.array(x)))
        normed.append(norm(convs[-1]).asnumpy())
    ratio = convs[1].asnumpy() / convs[0].asnumpy()
    assert np.median(ratio) == pytest.approx(3 * np.sqrt(146 / 144), rel=1e-3)
    np.testing.assert_allclose(normed[1], normed[0], rtol=1e-3, atol=1e-4)
