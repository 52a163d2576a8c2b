"""Independent float64 NumPy references of the published update equations.

Written from the equations in the issue/papers, not from mxnag's code: nothing here
imports mxnag or MXNet. Each function runs ``len(grads)`` steps of one parameter from
``w0`` and returns the final weight; ``lrs[k]`` is the learning rate of step k (after
schedules and multipliers); the parameter's own step count is ``t = k + 1``.
"""
import numpy as np


def _prep(g, w, rescale, wd_into_grad, clip):
    g = rescale * g.astype(np.float64)
    if wd_into_grad:
        g = g + wd_into_grad * w
    if clip is not None:
        g = np.clip(g, -clip, clip)
    return g


def adanag(w0, grads, lrs, wd=0.0, beta1=0.9, beta2=0.999, epsilon=1e-8,
           momentum_decay=0.004, decoupled_wd=True, rescale=1.0, clip=None):
    """NAdam (Dozat 2016) with PyTorch's mu_t schedule; decoupled or L2 weight decay."""
    w = w0.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    prod = 1.0
    for k, (grad, lr) in enumerate(zip(grads, lrs)):
        t = k + 1
        g = _prep(grad, w, rescale, 0.0 if decoupled_wd else wd, clip)
        if decoupled_wd:
            w = w * (1 - lr * wd)
        mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        prod = prod * mu
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = np.sqrt(v / (1 - beta2 ** t)) + epsilon
        w = (w - lr * (1 - mu) / (1 - prod) * g / denom
             - lr * mu_next / (1 - prod * mu_next) * m / denom)
    return w


def adan(w0, grads, lrs, wd=0.0, beta1=0.98, beta2=0.92, beta3=0.99, epsilon=1e-8,
         no_prox=False, rescale=1.0, clip=None):
    """Adan (Xie et al. 2022), as the authors' reference implementation."""
    w = w0.astype(np.float64).copy()
    m = np.zeros_like(w)
    d = np.zeros_like(w)
    n = np.zeros_like(w)
    g_prev = None
    for k, (grad, lr) in enumerate(zip(grads, lrs)):
        t = k + 1
        g = _prep(grad, w, rescale, 0.0, clip)
        if g_prev is None:
            g_prev = g
        diff = g - g_prev
        m = beta1 * m + (1 - beta1) * g
        d = beta2 * d + (1 - beta2) * diff
        u = g + beta2 * diff
        n = beta3 * n + (1 - beta3) * u * u
        denom = np.sqrt(n) / np.sqrt(1 - beta3 ** t) + epsilon
        if no_prox:
            w = w * (1 - lr * wd)
        w = w - lr / (1 - beta1 ** t) * m / denom - lr * beta2 / (1 - beta2 ** t) * d / denom
        if not no_prox:
            w = w / (1 + lr * wd)
        g_prev = g
    return w


def factor_schedule(base_lr, step, factor, num_update):
    """The learning rate of MXNet's FactorScheduler at ``num_update`` (>= 1):
    multiplied by ``factor`` after every ``step`` updates."""
    return base_lr * factor ** ((num_update - 1) // step)


def relative_error(w0, w, w_ref):
    """Relative error of the displacement ``w - w0`` against ``w_ref - w0``."""
    w0 = w0.astype(np.float64)
    ref = w_ref - w0
    return float(np.linalg.norm((w.astype(np.float64) - w0) - ref) / np.linalg.norm(ref))


def nadamw(w0, grads, lrs, wd=0.0, beta1=0.9, beta2=0.999, epsilon=1e-8, rescale=1.0, clip=None):
    """NAdamW with constant momentum (the AlgoPerf baseline, timm's NAdamW), as written in
    issue 12: decoupled decay, then Adam's moments and the look-ahead step."""
    w = w0.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for k, (grad, lr) in enumerate(zip(grads, lrs)):
        t = k + 1
        g = _prep(grad, w, rescale, 0.0, clip)
        w = w * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr / (1 - beta1 ** t) * (beta1 * m + (1 - beta1) * g) / (
            np.sqrt(v / (1 - beta2 ** t)) + epsilon)
    return w
