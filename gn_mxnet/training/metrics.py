"""Classification metrics of a pass over data: loss, top-1 and top-5, and the soft targets of
label smoothing and mixup."""
import mxnet as mx
import numpy as np


def soft_targets(labels, num_classes, smoothing):
    onehot = mx.nd.one_hot(labels, num_classes)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def topk_correct(logits, labels, k):
    """Number of rows whose label is among the k largest logits (numpy arrays)."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


class EpochMeter:
    def __init__(self):
        self.count, self.loss, self.top1, self.top5 = 0, 0.0, 0, 0

    def update(self, logits, labels, losses):
        logits = logits.asnumpy().astype(np.float32)
        labels = labels.asnumpy().astype(np.int64)
        self.count += len(labels)
        self.loss += float(losses.sum().asscalar())
        self.top1 += topk_correct(logits, labels, 1)
        self.top5 += topk_correct(logits, labels, 5)

    def result(self, prefix):
        n = max(self.count, 1)
        return {f'{prefix}_loss': self.loss / n, f'{prefix}_top1': self.top1 / n,
                f'{prefix}_top5': self.top5 / n}
