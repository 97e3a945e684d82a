"""Float64 NumPy GroupNorm written straight from the paper's definition and docs/design.md §2's
mean_g form of the gradient; deliberately a different formulation from every backend."""
import numpy as np


def _channels_first(a, axis):
    return np.moveaxis(a, axis, 1) if axis % a.ndim != 1 else a


def _restore(a, axis, ndim):
    return np.moveaxis(a, 1, axis) if axis % ndim != 1 else a


def _stats(x, G, eps):
    xg = x.reshape(x.shape[0], G, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    return xg, mean, 1.0 / np.sqrt(var + eps)


def moments(x, G, eps=1e-5, axis=1):
    """Per-(n, g) mean and rstd, each (N, G): the kernels' mean and rstd outputs."""
    _, mean, rstd = _stats(_channels_first(np.asarray(x, np.float64), axis), G, eps)
    return mean[..., 0], rstd[..., 0]


def forward(x, gamma, beta, G, eps=1e-5, axis=1):
    x = _channels_first(np.asarray(x, np.float64), axis)
    xg, mean, rstd = _stats(x, G, eps)
    xhat = ((xg - mean) * rstd).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = xhat * np.asarray(gamma, np.float64).reshape(shape) + np.asarray(beta, np.float64).reshape(shape)
    return _restore(y, axis, x.ndim)


def backward(dy, x, gamma, G, eps=1e-5, axis=1):
    """Returns dx, dgamma, dbeta."""
    x = _channels_first(np.asarray(x, np.float64), axis)
    dy = _channels_first(np.asarray(dy, np.float64), axis)
    xg, mean, rstd = _stats(x, G, eps)
    xhat = ((xg - mean) * rstd).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g_dy = (np.asarray(gamma, np.float64).reshape(shape) * dy).reshape(xg.shape)
    xhat_g = xhat.reshape(xg.shape)
    dxg = rstd * (g_dy - g_dy.mean(axis=2, keepdims=True)
                  - xhat_g * (g_dy * xhat_g).mean(axis=2, keepdims=True))
    reduce_axes = (0,) + tuple(range(2, x.ndim))
    dgamma = (dy * xhat).sum(axis=reduce_axes)
    dbeta = dy.sum(axis=reduce_axes)
    return _restore(dxg.reshape(x.shape), axis, x.ndim), dgamma, dbeta
