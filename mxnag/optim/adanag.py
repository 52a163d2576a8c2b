"""AdaNAG: Nesterov momentum with per-coordinate adaptive learning rates.

This is NAdam as Dozat (2016) defined it, with the momentum-decay schedule ``mu_t``,
the formulation PyTorch's ``torch.optim.NAdam`` follows. MXNet's own ``'nadam'`` differs:
it keeps a single ``m_schedule`` for all parameters and advances it once per parameter
per step, so its trajectory depends on how many parameters a model has.

References:
    Dozat, T. "Incorporating Nesterov Momentum into Adam." ICLR 2016 workshop.
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    Loshchilov, I. and Hutter, F. "Decoupled Weight Decay Regularization." ICLR 2019.
    https://arxiv.org/abs/1711.05101
"""
from mxnet import ndarray as nd
from mxnet.optimizer import Optimizer

from .base import Hyperparameter, MxnagOptimizer, StepRule, preprocess_grad


def adanag_step(weight, grad, mean, var, *, rescale_grad, clip_gradient, wd_into_grad,
                weight_scale, beta1, beta2, epsilon, grad_coef, mean_coef, var_scale,
                one_minus_beta1, one_minus_beta2):
    """One AdaNAG (NAdam) step.

    ``weight *= weight_scale`` (decoupled decay), then with ``g`` the preprocessed gradient:
    ``mean = beta1 mean + (1-beta1) g``, ``var = beta2 var + (1-beta2) g^2`` and
    ``weight -= (grad_coef g + mean_coef mean) / (sqrt(var) var_scale + epsilon)``.
    """
    g = preprocess_grad(weight, grad, rescale_grad, wd_into_grad, clip_gradient)
    if weight_scale != 1.0:
        weight *= weight_scale
    mean *= beta1
    mean += one_minus_beta1 * g
    var *= beta2
    var += one_minus_beta2 * nd.square(g)
    denom = nd.sqrt(var) * var_scale + epsilon
    weight -= (grad_coef * g + mean_coef * mean) / denom


# The step's maths, as every backend reads it (NAdamW shares it).
RULE = StepRule(
    name='adanag', states=('mean', 'var'),
    shared=('rescale_grad', 'clip_gradient', 'beta1', 'beta2', 'epsilon', 'one_minus_beta1',
            'one_minus_beta2'),
    per_tensor=('wd_into_grad', 'weight_scale', 'grad_coef', 'mean_coef', 'var_scale'),
    flags=(), step_scalars=('grad_coef', 'mean_coef', 'var_scale'), step=adanag_step,
    non_negative=('var',))


@Optimizer.register
class AdaNAG(MxnagOptimizer):
    r"""AdaNAG (NAdam): Adam whose momentum step looks one step ahead, as Nesterov's does.

    Registered as ``'adanag'``: ``gluon.Trainer(params, 'adanag', {'learning_rate': 2e-3})``.
    At a parameter's step ``t`` (counted per parameter and per device, from 1)::

        g = rescale_grad * grad;  if not decoupled_wd: g = g + wd * w
        if clip_gradient is not None: g = clip(g, -clip_gradient, clip_gradient)
        if decoupled_wd: w = w * (1 - lr * wd)
        mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay));  mu_next = mu_{t+1}
        prod_t = mu_1 * mu_2 * ... * mu_t
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2 ** t)) + epsilon
        w = w - lr * (1 - mu_t) / (1 - prod_t) * g / denom
              - lr * mu_next / (1 - prod_t * mu_next) * m / denom

    The trajectory equals ``torch.optim.NAdam(decoupled_weight_decay=decoupled_wd)`` to
    float32 rounding. ``prod_t`` is a function of ``t`` alone, so a parameter that starts
    training late (unfrozen in fine-tuning) starts at its own ``t = 1``, and every device
    copy of a parameter follows the same trajectory.

    Pitfalls: ``epsilon`` sits outside the square root, as in Adam; with
    ``decoupled_wd=False`` the decay enters the adaptive moments (L2 regularisation), which
    weakens it for coordinates with large gradients (Loshchilov & Hutter).

    Parameters
    ----------
    learning_rate : float >= 0, default 0.002 (or ``lr_scheduler.base_lr`` if given)
    {hyperparameters}
    """
    default_learning_rate = 0.002
    rule = RULE
    hyperparameters = (
        Hyperparameter('beta1', 0.9, 'decay', 'Decay of the first moment ``m``.'),
        Hyperparameter('beta2', 0.999, 'decay', 'Decay of the second moment ``v``.'),
        Hyperparameter('epsilon', 1e-8, 'positive', 'Added to ``sqrt(v_hat)``, outside the root.'),
        Hyperparameter('momentum_decay', 0.004, 'non-negative',
                       '``psi`` of the ``mu_t`` schedule; 0 gives a constant ``mu_t = beta1 / 2``.'),
        Hyperparameter('decoupled_wd', True, 'bool',
                       'Decay the weights directly by ``lr * wd`` (NAdamW); False adds '
                       '``wd * w`` to the gradient instead.'))

    def __init__(self, *args, **kwargs):
        self._mu_products = [1.0]  # _mu_products[t] = mu_1 * ... * mu_t, a cache
        super().__init__(*args, **kwargs)

    def _mu(self, t):
        return self.beta1 * (1.0 - 0.5 * 0.96 ** (t * self.momentum_decay))

    def _mu_product(self, t):
        products = self._mu_products
        while len(products) <= t:
            products.append(products[-1] * self._mu(len(products)))
        return products[t]

    def _scalars(self, lr, wd):
        """One parameter's scalars (see the class docstring); the step scalars'
        multipliers: ``lr`` for grad_coef and mean_coef, 1 for var_scale."""
        return {'wd_into_grad': 0.0 if self.decoupled_wd else wd,
                'weight_scale': 1.0 - lr * wd if self.decoupled_wd else 1.0,
                'grad_coef': lr, 'mean_coef': lr, 'var_scale': 1.0}

    def _step_factors(self, t):
        """grad_coef / lr, mean_coef / lr and var_scale at step ``t``."""
        mu, mu_next = self._mu(t), self._mu(t + 1)
        prod = self._mu_product(t)
        return ((1.0 - mu) / (1.0 - prod), mu_next / (1.0 - prod * mu_next),
                (1.0 - self.beta2 ** t) ** -0.5)
