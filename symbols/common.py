"""Pieces shared by the Symbol builders: input shape parsing, conv, dtype handling."""
import mxnet as mx

from gn_mxnet.models.convs import make_conv


def parse_image_shape(image_shape):
    """(channels, height, width) from '3,224,224' (MXNet example style) or a sequence."""
    if isinstance(image_shape, str):
        image_shape = [int(v) for v in image_shape.split(',')]
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3:
        raise ValueError("image_shape must be channels,height,width; got %r" % (image_shape,))
    return shape


def conv_layer(data, name, channels, kernel, stride=1, pad=0, no_bias=True, kind='plain'):
    """Square convolution named ``name`` (its weight is ``<name>_weight``); ``kind``: 'plain',
    'ws' or a :class:`gn_mxnet.models.convs.Conv`."""
    return make_conv(kind).symbol(data, name, num_filter=channels, kernel=(kernel, kernel),
                                  stride=(stride, stride), pad=(pad, pad), no_bias=no_bias)


def relu(data):
    return mx.sym.Activation(data, act_type='relu')


def cast_input(data, dtype):
    """Cast the float32 input to the compute dtype ('float32' or 'float16')."""
    if dtype not in ('float32', 'float16'):
        raise ValueError("dtype must be 'float32' or 'float16', got %r" % (dtype,))
    return data if dtype == 'float32' else mx.sym.Cast(data, dtype=dtype)


def softmax_head(logits, dtype):
    """SoftmaxOutput named 'softmax', computed in float32 as MXNet's examples do."""
    if dtype != 'float32':
        logits = mx.sym.Cast(logits, dtype='float32')
    return mx.sym.SoftmaxOutput(logits, name='softmax')
