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


def _start(w, start, names):
    """The states to begin from: zeros, or ``start``'s arrays (float64) by name, and the
    steps already taken (``start['t']``, default 0)."""
    start = start or {}
    return [np.asarray(start[n], np.float64) if n in start else np.zeros_like(w) for n in names], \
        start.get('t', 0)


def adanag(w0, grads, lrs, wd=0.0, beta1=0.9, beta2=0.999, epsilon=1e-8,
           momentum_decay=0.004, decoupled_wd=True, rescale=1.0, clip=None, start=None,
           return_states=False):
    """NAdam (Dozat 2016) with PyTorch's mu_t schedule; decoupled or L2 weight decay.
    ``start``: states {'mean', 'var', 't'} to continue from; ``return_states``: also
    return them."""
    w = w0.astype(np.float64).copy()
    (m, v), t0 = _start(w, start, ('mean', 'var'))
    prod = 1.0
    for i in range(1, t0 + 1):
        prod *= beta1 * (1 - 0.5 * 0.96 ** (i * momentum_decay))
    for k, (grad, lr) in enumerate(zip(grads, lrs)):
        t = t0 + k + 1
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
    return (w, {'mean': m, 'var': v, 't': t0 + len(grads)}) if return_states else w


def adan(w0, grads, lrs, wd=0.0, beta1=0.98, beta2=0.92, beta3=0.99, epsilon=1e-8,
         no_prox=False, rescale=1.0, clip=None, start=None, return_states=False):
    """Adan (Xie et al. 2022), as the authors' reference implementation. ``start``:
    states {'mean', 'diff_mean', 'sq_mean', 'prev_grad', 't'} to continue from."""
    w = w0.astype(np.float64).copy()
    (m, d, n, g_prev), t0 = _start(w, start, ('mean', 'diff_mean', 'sq_mean', 'prev_grad'))
    if t0 == 0:
        g_prev = None
    for k, (grad, lr) in enumerate(zip(grads, lrs)):
        t = t0 + k + 1
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
    if return_states:
        return w, {'mean': m, 'diff_mean': d, 'sq_mean': n, 'prev_grad': g_prev,
                   't': t0 + len(grads)}
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


def nadamw(w0, grads, lrs, wd=0.0, beta1=0.9, beta2=0.999, epsilon=1e-8, rescale=1.0, clip=None,
           start=None, return_states=False):
    """NAdamW with constant momentum (the AlgoPerf baseline, timm's NAdamW), as written in
    issue 12: decoupled decay, then Adam's moments and the look-ahead step."""
    w = w0.astype(np.float64).copy()
    (m, v), t0 = _start(w, start, ('mean', 'var'))
    for k, (grad, lr) in enumerate(zip(grads, lrs)):
        t = t0 + k + 1
        g = _prep(grad, w, rescale, 0.0, clip)
        w = w * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr / (1 - beta1 ** t) * (beta1 * m + (1 - beta1) * g) / (
            np.sqrt(v / (1 - beta2 ** t)) + epsilon)
    return (w, {'mean': m, 'var': v, 't': t0 + len(grads)}) if return_states else w


# 8-bit states (issue 21), written from the format's definition: one float32 scale per
# block of 256 elements, the block's largest magnitude over the largest code's value;
# signed states as a sign bit and the magnitude code c (1..127: 2^((c >> 3) - 15)
# (1 + (c & 7) / 8); 0: zero); non-negative states as the unsigned code c of their square
# root (1..255: 2^((c >> 4) - 15) (1 + (c & 15) / 16); 0: zero). The scaled magnitude is
# rounded as a float to the code's mantissa bits (ties to even): 2^-15 and below become 0;
# a positive root at least code 1.
CODE_BLOCK = 256
SIGNED_GRID = np.array([0.0] + [2.0 ** ((c >> 3) - 15) * (1 + (c & 7) / 8) for c in range(1, 128)])
ROOT_GRID = np.array([0.0] + [2.0 ** ((c >> 4) - 15) * (1 + (c & 15) / 16) for c in range(1, 256)])


def _float_code(y, mantissa_bits, largest_code):
    """The code of each magnitude ``y`` >= 0 rounded as a float to ``mantissa_bits``
    (exponent offset 15: code (e + 15) 2^bits + fraction for 2^e (1 + fraction / 2^bits))."""
    y = np.asarray(y, np.float64)
    fraction, exponent = np.frexp(np.where(y > 0, y, 1.0))  # y = fraction 2^exponent, [0.5, 1)
    steps = 2 ** mantissa_bits
    q = np.round(fraction * 2 * steps)  # in [steps, 2 steps], ties to even
    exponent = exponent - 1 + (q == 2 * steps)
    q = np.where(q == 2 * steps, steps, q)
    code = (exponent + 15) * steps + (q - steps)
    code = np.where((y > 0) & (exponent + 15 >= 0), code, 0)
    return np.clip(code, 0, largest_code).astype(np.int64)


def encode_state(values, non_negative):
    """(uint8 codes, float64 scales) of a flat float64 array."""
    n = values.size
    blocks = -(-n // CODE_BLOCK)
    padded = np.zeros(blocks * CODE_BLOCK)
    stored = np.sqrt(values) if non_negative else values
    padded[:n] = stored
    grid = ROOT_GRID if non_negative else SIGNED_GRID
    largest = np.abs(padded).reshape(blocks, CODE_BLOCK).max(axis=1)
    normal = largest >= np.finfo(np.float32).tiny  # below it a block reads 0
    scales = np.where(normal, largest / grid[-1], 0.0)
    scales = np.where(np.isfinite(largest), scales, np.nan)  # a NaN or an Inf: the block reads NaN
    inverse = np.where(normal & np.isfinite(largest), grid[-1] / np.where(normal, largest, 1), 0.0)
    y = np.abs(stored) * np.repeat(inverse, CODE_BLOCK)[:n]
    if non_negative:
        codes = np.maximum(_float_code(y, 4, 255), (y > 0).astype(np.int64))
    else:
        codes = _float_code(y, 3, 127) | np.where(np.signbit(stored), 128, 0)
    return codes.astype(np.uint8), scales


def decode_state(codes, scales, non_negative):
    """The float64 values of ``codes`` (flat) with their blocks' ``scales``."""
    codes = codes.astype(np.int64)
    scale = np.repeat(np.asarray(scales, np.float64), CODE_BLOCK)[:codes.size]
    if non_negative:
        return (ROOT_GRID[codes] * scale) ** 2
    value = SIGNED_GRID[codes & 127] * scale
    return np.where(codes & 128, -value, value)


def codes_agree(codes, values, non_negative, tolerance=2e-6, floor=1e-7):
    """Where 8-bit ``codes`` (a kernel's, computed in float32) are a nearest code of the
    float64 ``values`` up to ``tolerance`` (in units of the block's largest code value,
    about float32 rounding of the update): equal to the reference's code, or as near to
    the value as it within ``tolerance`` (a value on a midpoint may round either way).
    A block whose largest (root) magnitude is at most ``floor`` holds float32 rounding
    noise (a difference of two equal numbers, say), whatever its codes."""
    n = values.size
    stored = np.sqrt(values) if non_negative else values
    blocks = -(-n // CODE_BLOCK)
    padded = np.zeros(blocks * CODE_BLOCK)
    padded[:n] = stored
    grid = ROOT_GRID if non_negative else SIGNED_GRID
    largest = np.repeat(np.abs(padded).reshape(blocks, CODE_BLOCK).max(axis=1), CODE_BLOCK)[:n]
    y = np.abs(stored) * np.where(largest > 0, grid[-1] / np.where(largest > 0, largest, 1), 0.0)
    mine, theirs = encode_state(values, non_negative)[0], codes
    mask = 255 if non_negative else 127
    mine_value = grid[mine.astype(np.int64) & mask]
    their_value = grid[theirs.astype(np.int64) & mask]
    same_sign = (theirs.astype(np.int64) & ~mask & 255) == (mine.astype(np.int64) & ~mask & 255)
    both_zero = (mine_value == 0) & (their_value == 0)  # codes 0 and 128 both read 0
    # the float rounding is the nearest code but at the bottom: compare distances to the
    # rounded values (a signed code 0 stands for up to 2^-15 there)
    if not non_negative:
        mine_value, their_value = [np.where(v == 0, np.minimum(y, 2.0 ** -15), v)
                                   for v in (mine_value, their_value)]
    near = np.abs(np.abs(y - their_value) - np.abs(y - mine_value)) <= tolerance
    zero = (their_value == 0) | (mine_value == 0)
    noise = largest <= floor
    return (mine == theirs) | both_zero | noise | (near & (same_sign | zero))
