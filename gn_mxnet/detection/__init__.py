"""The detection layer: Mask R-CNN ResNet-FPN with GroupNorm on gluoncv (Detectron's GN recipe):
model, data, training.

``model`` builds the detector, ``coco_data`` reads COCO or makes the embedded garment/digit sets,
``engine`` trains and evaluates (``evaluation``: pycocotools COCOeval), ``report`` writes logs,
``comparison`` runs GN vs BN* (pretrain, convert, fine-tune, AP).
"""
