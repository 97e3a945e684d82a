"""Float64 NumPy GroupNorm written straight from the paper's definition and docs/design.md §2's
mean_g form of the gradient; deliberately a different formulation from every backend."""
import numpy as np


def _channels_first(a, axis):
    return np.moveaxis(a, axis, 1) if axis % a.ndim != 1 else a


def _restore(a, axis, ndim):
    return np.moveaxis(a, 1, axis) if axis % ndim != 1 else a


def _stats(x, G, eps):
    """Scale-aware, so that it holds at every finite magnitude: the moments of x / s, s a power
    of two at or above a group's max |x| (never below 1), whose squares stay in float64's range
    and whose division does not round; rstd = 1 / hypot(std, sqrt(eps)), std = s·sqrt(var_s),
    which never forms var = std² (eps / s² would underflow where var_s is 0)."""
    xg = x.reshape(x.shape[0], G, -1)
    peak = np.abs(xg).max(axis=2, keepdims=True) if xg.size else np.ones(xg.shape[:2] + (1,))
    s = np.ldexp(1.0, np.frexp(np.maximum(peak, 1.0))[1])
    xs = xg / s
    mean = xs.mean(axis=2, keepdims=True)
    mean = mean + (xs - mean).mean(axis=2, keepdims=True)  # its rounding: 0 for a constant group
    var = ((xs - mean) ** 2).mean(axis=2, keepdims=True)
    return xg, mean * s, 1.0 / np.hypot(s * np.sqrt(var), np.sqrt(eps))


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


# ---- the fused form y = act(GN(x) + residual) ------------------------------------------------

def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free, unlike 1 / (1 + exp(-z))


# act_type -> (act(z), act'(z)); relu's slope at 0 is 0, as MXNet's relu takes it.
ACTIVATIONS = {
    'none': (lambda z: z, np.ones_like),
    'relu': (lambda z: np.where(z < 0, 0.0, z), lambda z: (z > 0).astype(np.float64)),
    'silu': (lambda z: z * _sigmoid(z),
             lambda z: _sigmoid(z) + z * _sigmoid(z) * (1.0 - _sigmoid(z))),
}


def pre_activation(x, gamma, beta, G, eps=1e-5, axis=1, residual=None):
    z = forward(x, gamma, beta, G, eps, axis)
    return z if residual is None else z + np.asarray(residual, np.float64)


def fused_forward(x, gamma, beta, G, eps=1e-5, axis=1, act='none', residual=None):
    return ACTIVATIONS[act][0](pre_activation(x, gamma, beta, G, eps, axis, residual))


def fused_backward(dy, x, gamma, beta, G, eps=1e-5, axis=1, act='none', residual=None):
    """Returns dx, dgamma, dbeta, dresidual (dy times act' at the pre-activation)."""
    z = pre_activation(x, gamma, beta, G, eps, axis, residual)
    dz = np.asarray(dy, np.float64) * ACTIVATIONS[act][1](z)
    return backward(dz, x, gamma, G, eps, axis) + (dz,)
