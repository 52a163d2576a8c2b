"""The optimizer steps composed of NDArray operators: correct on every context, and
asynchronous (no value ever comes back to the host), but one pass over memory per
operator. The optimizer classes compute every scalar coefficient on the host from the
step count; these functions only apply them, in place, to ``weight`` and the states.
"""
from mxnet import ndarray as nd


def preprocess_grad(weight, grad, rescale_grad, wd_into_grad, clip_gradient):
    """``clip(rescale_grad * grad + wd_into_grad * weight)`` as a new array, MXNet's order.
    ``clip_gradient`` None leaves the gradient unclipped."""
    g = grad * rescale_grad
    if wd_into_grad:
        g = g + weight * wd_into_grad
    if clip_gradient is not None:
        # maximum/minimum, not nd.clip: clip's bounds are float32 attributes, which refuse
        # 1e300 or 1e-42 (the fused kernels take any normal double); NaN passes either way
        g = nd.minimum(nd.maximum(g, -clip_gradient), clip_gradient)
    return g


def adanag_update(weight, grad, mean, var, *, rescale_grad, clip_gradient, wd_into_grad,
                  weight_scale, beta1, beta2, epsilon, grad_coef, mean_coef, var_scale):
    """One AdaNAG (NAdam) step.

    ``weight *= weight_scale`` (decoupled decay), then with ``g`` the preprocessed gradient:
    ``mean = beta1 mean + (1-beta1) g``, ``var = beta2 var + (1-beta2) g^2`` and
    ``weight -= (grad_coef g + mean_coef mean) / (sqrt(var) var_scale + epsilon)``.
    """
    g = preprocess_grad(weight, grad, rescale_grad, wd_into_grad, clip_gradient)
    if weight_scale != 1.0:
        weight *= weight_scale
    mean *= beta1
    mean += (1.0 - beta1) * g
    var *= beta2
    var += (1.0 - beta2) * nd.square(g)
    denom = nd.sqrt(var) * var_scale + epsilon
    weight -= (grad_coef * g + mean_coef * mean) / denom


def adan_update(weight, grad, mean, diff_mean, sq_mean, prev_grad, *, rescale_grad,
                clip_gradient, first_step, beta1, beta2, beta3, epsilon, mean_coef,
                diff_coef, sq_scale, weight_scale, weight_divisor):
    """One Adan step; ``prev_grad`` holds the previous preprocessed gradient (taken to be
    the current one on ``first_step``).

    With ``diff = g - prev_grad`` and ``u = g + beta2 diff``: ``mean``, ``diff_mean`` and
    ``sq_mean`` are the moving averages of ``g``, ``diff`` and ``u^2`` (decays beta1,
    beta2, beta3), ``weight *= weight_scale``,
    ``weight -= (mean_coef mean + diff_coef diff_mean) / (sqrt(sq_mean) sq_scale + epsilon)``,
    ``weight /= weight_divisor``.
    """
    g = preprocess_grad(weight, grad, rescale_grad, 0.0, clip_gradient)
    if first_step:
        g.copyto(prev_grad)
    diff = g - prev_grad
    mean *= beta1
    mean += (1.0 - beta1) * g
    diff_mean *= beta2
    diff_mean += (1.0 - beta2) * diff
    sq_mean *= beta3
    sq_mean += (1.0 - beta3) * nd.square(g + beta2 * diff)
    denom = nd.sqrt(sq_mean) * sq_scale + epsilon
    if weight_scale != 1.0:
        weight *= weight_scale
    weight -= (mean_coef * mean + diff_coef * diff_mean) / denom
    if weight_divisor != 1.0:
        weight /= weight_divisor
    g.copyto(prev_grad)
