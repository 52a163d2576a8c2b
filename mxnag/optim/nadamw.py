"""NAdamW: Nesterov Adam with decoupled weight decay and constant momentum.

The MLCommons AlgoPerf baseline (timm's ``NAdamW``): NAdam without Dozat's momentum
schedule (``beta1`` throughout), so the look-ahead step is Adam's bias-corrected moments
with the gradient mixed in, and weight decay applied to the weights directly.

Its step is AdaNAG's rule with other scalars: the same states, the same single-pass
kernels on every backend.

References:
    Dahl, G. E. et al. "Benchmarking Neural Network Training Algorithms" (AlgoPerf).
    2023. https://arxiv.org/abs/2306.07179
    Dozat, T. "Incorporating Nesterov Momentum into Adam." ICLR 2016 workshop.
    Loshchilov, I. and Hutter, F. "Decoupled Weight Decay Regularization." ICLR 2019.
"""
from mxnet.optimizer import Optimizer

from . import adanag
from .base import Hyperparameter, MxnagOptimizer


@Optimizer.register
class NAdamW(MxnagOptimizer):
    r"""NAdamW with constant momentum, registered as ``'nadamw'``.

    At a parameter's step ``t`` (counted per parameter and per device, from 1)::

        g = rescale_grad * grad;  if clip_gradient is not None: g = clip(g, -c, c)
        w = w * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr / (1 - beta1 ** t) * (beta1 * m + (1 - beta1) * g)
                / (sqrt(v / (1 - beta2 ** t)) + epsilon)

    ``wd`` is the decoupled decay (multiplied by the learning rate, as in AdamW and
    timm's NAdamW), never added to the gradient.

    Pitfalls: unlike ``'adanag'`` (Dozat's NAdam, ``torch.optim.NAdam``) the momentum
    factor does not warm up, so early steps weigh the fresh gradient by ``1 - beta1``
    only; ``epsilon`` sits outside the square root.

    Parameters
    ----------
    learning_rate : float >= 0, default 0.001 (or ``lr_scheduler.base_lr`` if given)
    {hyperparameters}

    Example::

        trainer = gluon.Trainer(net.collect_params(), 'nadamw',
                                {'learning_rate': 1e-3, 'wd': 0.05})
    """
    default_learning_rate = 0.001
    rule = adanag.RULE
    hyperparameters = (
        Hyperparameter('beta1', 0.9, 'decay', 'Decay of the first moment ``m``.'),
        Hyperparameter('beta2', 0.999, 'decay', 'Decay of the second moment ``v``.'),
        Hyperparameter('epsilon', 1e-8, 'positive', 'Added to ``sqrt(v_hat)``, outside the root.'))

    def _scalars(self, lr, wd):
        """One parameter's scalars (see the class docstring); the step scalars'
        multipliers: ``lr`` for grad_coef and mean_coef, 1 for var_scale."""
        return {'wd_into_grad': 0.0, 'weight_scale': 1.0 - lr * wd,
                'grad_coef': lr, 'mean_coef': lr, 'var_scale': 1.0}

    def _step_factors(self, t):
        """grad_coef / lr, mean_coef / lr and var_scale at step ``t``."""
        bias1 = 1.0 - self.beta1 ** t
        return ((1.0 - self.beta1) / bias1, self.beta1 / bias1, (1.0 - self.beta2 ** t) ** -0.5)
