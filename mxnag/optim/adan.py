"""Adan: adaptive Nesterov momentum.

Adan estimates the Nesterov look-ahead gradient from the difference of consecutive
gradients, so it needs no extra gradient evaluation; it keeps moving averages of the
gradient, of that difference and of the squared look-ahead gradient. This follows the
authors' reference implementation (sail-sg/Adan), including its proximal weight decay.

References:
    Xie, X., Zhou, P., Li, H., Lin, Z. and Yan, S. "Adan: Adaptive Nesterov Momentum
    Algorithm for Faster Optimizing Deep Models." 2022. https://arxiv.org/abs/2208.06677
"""
from mxnet import ndarray as nd
from mxnet.optimizer import Optimizer

from .base import Hyperparameter, MxnagOptimizer, StepRule, preprocess_grad


def adan_step(weight, grad, mean, diff_mean, sq_mean, prev_grad, *, rescale_grad,
             clip_gradient, first_step, beta1, beta2, beta3, epsilon, mean_coef,
             diff_coef, sq_scale, weight_scale, weight_divisor, one_minus_beta1,
             one_minus_beta2, one_minus_beta3):
    """One Adan step; ``prev_grad`` holds the previous preprocessed gradient (taken to be
    the current one on ``first_step``).

    With ``diff = g - prev_grad`` and ``u = g + beta2 diff``: ``mean``, ``diff_mean`` and
    ``sq_mean`` are the moving averages of ``g``, ``diff`` and ``u^2`` (decays beta1,
    beta2, beta3), ``weight *= weight_scale``,
    ``weight -= (mean_coef mean + diff_coef diff_mean) / (sqrt(sq_mean) sq_scale + epsilon)``,
    ``weight /= weight_divisor``.
    """
    g = preprocess_grad(weight, grad, rescale_grad, 0.0, clip_gradient)
    if isinstance(first_step, nd.NDArray):  # 1 or 0, taken on the device
        prev_grad[:] = nd.where(first_step, g, prev_grad)
    elif first_step:
        g.copyto(prev_grad)
    diff = g - prev_grad
    mean *= beta1
    mean += one_minus_beta1 * g
    diff_mean *= beta2
    diff_mean += one_minus_beta2 * diff
    sq_mean *= beta3
    sq_mean += one_minus_beta3 * nd.square(g + beta2 * diff)
    denom = nd.sqrt(sq_mean) * sq_scale + epsilon
    if weight_scale != 1.0:
        weight *= weight_scale
    weight -= (mean_coef * mean + diff_coef * diff_mean) / denom
    if weight_divisor != 1.0:
        weight /= weight_divisor
    g.copyto(prev_grad)


# The step's maths, as every backend reads it.
RULE = StepRule(
    name='adan', states=('mean', 'diff_mean', 'sq_mean', 'prev_grad'),
    shared=('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'beta3', 'epsilon',
            'one_minus_beta1', 'one_minus_beta2', 'one_minus_beta3'),
    per_tensor=('first_step', 'mean_coef', 'diff_coef', 'sq_scale', 'weight_scale', 'weight_divisor'),
    flags=('first_step',), step_scalars=('first_step', 'mean_coef', 'diff_coef', 'sq_scale'),
    step=adan_step, non_negative=('sq_mean',))


@Optimizer.register
class Adan(MxnagOptimizer):
    r"""Adan (Xie et al., 2022), registered as ``'adan'``.

    At a parameter's step ``t`` (counted per parameter and per device, from 1), with
    ``g_prev = g`` at ``t = 1``::

        g = rescale_grad * grad;  if clip_gradient is not None: g = clip(g, -c, c)
        diff = g - g_prev
        m = beta1 * m + (1 - beta1) * g
        d = beta2 * d + (1 - beta2) * diff
        u = g + beta2 * diff
        n = beta3 * n + (1 - beta3) * u * u
        denom = sqrt(n) / sqrt(1 - beta3 ** t) + epsilon
        if no_prox: w = w * (1 - lr * wd)
        w = w - lr / (1 - beta1 ** t) * m / denom - lr * beta2 / (1 - beta2 ** t) * d / denom
        if not no_prox: w = w / (1 + lr * wd)
        g_prev = g

    Pitfalls: the betas are decay rates as in Adam (the paper writes ``1 - beta``); Adan
    keeps four arrays per parameter (the previous gradient included), one more than NAdam;
    ``epsilon`` sits outside the square root.

    Parameters
    ----------
    learning_rate : float >= 0, default 0.001 (or ``lr_scheduler.base_lr`` if given)
    {hyperparameters}
    """
    default_learning_rate = 0.001
    rule = RULE
    hyperparameters = (
        Hyperparameter('beta1', 0.98, 'decay', 'Decay of the gradient average ``m``.'),
        Hyperparameter('beta2', 0.92, 'decay', 'Decay of the gradient-difference average ``d``.'),
        Hyperparameter('beta3', 0.99, 'decay', 'Decay of the squared look-ahead average ``n``.'),
        Hyperparameter('epsilon', 1e-8, 'positive', 'Added to ``sqrt(n_hat)``, outside the root.'),
        Hyperparameter('no_prox', False, 'bool',
                       'False applies weight decay as the proximal step ``w / (1 + lr * wd)`` '
                       'after the update; True multiplies by ``1 - lr * wd`` before it.'))

    def _scalars(self, lr, wd):
        """One parameter's scalars (see the class docstring); the step scalars'
        multipliers: ``lr`` for mean_coef and diff_coef, 1 for first_step and sq_scale."""
        return {'first_step': 1.0, 'mean_coef': lr, 'diff_coef': lr, 'sq_scale': 1.0,
                'weight_scale': 1.0 - lr * wd if self.no_prox else 1.0,
                'weight_divisor': 1.0 if self.no_prox else 1.0 + lr * wd}

    def _step_factors(self, t):
        """first_step (1 at a parameter's first step, t = begin_num_update + 1), mean_coef / lr,
        diff_coef / lr and sq_scale at step ``t``."""
        return (1.0 if t == self.begin_num_update + 1 else 0.0, 1.0 / (1.0 - self.beta1 ** t),
                self.beta2 / (1.0 - self.beta2 ** t), (1.0 - self.beta3 ** t) ** -0.5)
