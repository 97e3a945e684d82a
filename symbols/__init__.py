"""Symbol network builders in MXNet's example/image-classification convention (installed as the
top-level package ``symbols`` by ``pip install -e .``; a layer above gn_mxnet.models).

``symbols/<net>.py:get_symbol(num_classes, num_layers, image_shape, ...)`` returns a Symbol
ending in ``SoftmaxOutput(name='softmax')``. Layer names follow
``gn_mxnet.models.symbol_names``: the Gluon twin's ``layer1.0.bn1.gamma`` is ``layer1_0_bn1_gamma``
here, so ``gn_mxnet.models.to_symbol_params(gluon_net)`` yields ready arg/aux params.
"""
