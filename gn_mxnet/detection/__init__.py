"""The detection layer: Mask R-CNN ResNet-FPN with GroupNorm on gluoncv (Detectron's GN recipe):
model, data, training.

``model`` builds the detector, ``coco_data`` reads COCO or makes the embedded MNIST-COCO set,
``engine`` trains and evaluates (``evaluation``: pycocotools COCOeval), ``report`` writes logs.
"""
