"""How far 8-bit optimizer states take a step from 32-bit states, and what the two 8-bit
codes issue 21 weighs cost: bitsandbytes' dynamic map and mxnag's float codes.

    python benchmarks/state_error.py [--rows 1024] [--cols 4097] [--steps 50] [--json out.json]

bitsandbytes' test of its 8-bit Adam (``tests/test_optim.py``: a 1024 x 4097 weight,
``randn * 0.1``, 50 steps of ``randn * 0.01`` gradients) compares the 8-bit run with the
32-bit one after every step at atol 3e-3, rtol 1e-3 and allows fewer than 20 elements
outside. The same protocol here, for:

* Adam with each code, simulated in float64 NumPy (blocks of 256 with one absmax scale;
  the same update, only the states' storage differs): bitsandbytes' dynamic map (signed
  for m, unsigned for v, the values of ``bitsandbytes.functional.create_dynamic_map``,
  nearest code) and mxnag's codes (tests/reference.py: E4M3 for m, E4M4 of sqrt(v));
* mxnag's fused kernels: ``adanag`` (NAdam) with ``state_bits=8`` against ``state_bits=32``;
* bitsandbytes' own ``Adam8bit`` on the CPU against ``torch.optim.Adam``, when installed.

And the quantisers' speed: benchmarks/src/quantisers.cc, compiled with the fused
operators' flags, times a block of 256 floats to codes both ways (mxnag's integer
operations; a vectorised bisection of the 256-value map, as bitsandbytes quantises).
Prints a table; ``--json`` writes it.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
import reference  # noqa: E402  (the float64 references and the 8-bit format)

ATOL, RTOL, ALLOWED = 3e-3, 1e-3, 20
BLOCK = 256


def _problem(rows, cols, steps, seed=0):
    rng = np.random.default_rng(seed)
    w0 = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
    grads = [(rng.standard_normal((rows, cols)) * 0.01).astype(np.float32) for _ in range(steps)]
    return w0, grads


def _outside(a, b):
    """Elements of ``a`` not within atol/rtol of ``b`` (torch.isclose's rule)."""
    return int((np.abs(a - b) > ATOL + RTOL * np.abs(b)).sum())


def _map_codec(values):
    """(encode, decode) of blockwise absmax quantisation to the nearest of ``values``."""
    values = np.sort(np.asarray(values, np.float64))
    midpoints = (values[1:] + values[:-1]) / 2

    def encode(x):
        n = x.size
        padded = np.zeros(-(-n // BLOCK) * BLOCK)
        padded[:n] = x.ravel()
        largest = np.abs(padded).reshape(-1, BLOCK).max(axis=1)
        scale = np.repeat(np.where(largest > 0, largest, 1.0), BLOCK)[:n]
        return np.searchsorted(midpoints, x.ravel() / scale), largest

    def decode(codes, largest, shape):
        return (values[codes] * np.repeat(largest, BLOCK)[:codes.size]).reshape(shape)
    return encode, decode


def adam_simulated(w0, grads, codec, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam in float64 with each step's states stored by ``codec`` (None: not quantised);
    returns the weights after every step."""
    w = w0.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, 1):
        g = g.astype(np.float64)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
        if codec is not None:
            m, v = codec(m, v)
        out.append(w.astype(np.float32))
    return out


def mxnag_codec(m, v):
    shape = m.shape
    m = reference.decode_state(*reference.encode_state(m.ravel(), False), False).reshape(shape)
    v = reference.decode_state(*reference.encode_state(v.ravel(), True), True).reshape(shape)
    return m, v


def dynamic_map_codec():
    """bitsandbytes' dynamic maps (signed for m, unsigned for v) as a codec, or None with
    the reason when bitsandbytes does not import."""
    try:
        import bitsandbytes.functional as F
    except Exception as err:  # noqa: BLE001
        return None, '%s: %s' % (type(err).__name__, err)
    enc_m, dec_m = _map_codec(F.create_dynamic_map(signed=True).numpy())
    enc_v, dec_v = _map_codec(F.create_dynamic_map(signed=False).numpy())

    def codec(m, v):
        return dec_m(*enc_m(m), m.shape), dec_v(*enc_v(v), v.shape)
    return codec, None


def compare(runs_8bit, runs_32bit):
    """Worst step's max abs difference and elements outside, over the steps."""
    worst_diff, worst_outside = 0.0, 0
    for a, b in zip(runs_8bit, runs_32bit):
        worst_diff = max(worst_diff, float(np.abs(a.astype(np.float64) - b).max()))
        worst_outside = max(worst_outside, _outside(a.astype(np.float64), b.astype(np.float64)))
    return {'max_abs_diff': worst_diff, 'max_elements_outside': worst_outside,
            'passes_bnb_tolerance': worst_outside < ALLOWED}


def mxnag_kernels(w0, grads, name='adanag'):
    """Weights after every step of mxnag's fused ``name`` at 8 and at 32 bits."""
    import mxnet as mx
    import mxnag  # noqa: F401
    runs = {}
    for bits in (8, 32):
        opt = mx.optimizer.create(name, learning_rate=1e-3, state_bits=bits)
        updater = mx.optimizer.get_updater(opt)
        w = mx.nd.array(w0)
        out = []
        for g in grads:
            updater(0, mx.nd.array(g), w)
            out.append(w.asnumpy())
        runs[bits] = out
    return runs


TORCH_SCRIPT = r'''
import json, sys, numpy as np, torch
import bitsandbytes as bnb
w0 = np.load(sys.argv[1]); grads = np.load(sys.argv[2])
p1 = torch.tensor(w0, requires_grad=True); p2 = torch.tensor(w0, requires_grad=True)
adam, adam8 = torch.optim.Adam([p1], lr=1e-3), bnb.optim.Adam8bit([p2], lr=1e-3)
worst_diff, worst_outside = 0.0, 0
for g in grads:
    p1.grad = torch.tensor(g); p2.grad = torch.tensor(g)
    adam.step(); adam8.step()
    with torch.no_grad():
        worst_diff = max(worst_diff, float((p1 - p2).abs().max()))
        worst_outside = max(worst_outside, int((~torch.isclose(p2, p1, atol=%r, rtol=%r)).sum()))
print(json.dumps({'max_abs_diff': worst_diff, 'max_elements_outside': worst_outside,
                  'bitsandbytes': bnb.__version__, 'torch': torch.__version__}))
''' % (ATOL, RTOL)


def bnb_own(w0, grads):
    """bitsandbytes' Adam8bit against torch's Adam on the CPU, in a subprocess (its
    OpenMP and libraries stay out of MXNet's way); None with the reason when it fails."""
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, 'w0.npy'), w0)
        np.save(os.path.join(folder, 'g.npy'), np.stack(grads))
        proc = subprocess.run([sys.executable, '-c', TORCH_SCRIPT, os.path.join(folder, 'w0.npy'),
                               os.path.join(folder, 'g.npy')], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ['failed'])[-1]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result['passes_bnb_tolerance'] = result['max_elements_outside'] < ALLOWED
    return result, None


def quantiser_speed():
    """ns per element of each quantiser (benchmarks/src/quantisers.cc), or the reason."""
    from mxnag.kernels import build
    try:
        import bitsandbytes.functional as F
        values = np.sort(F.create_dynamic_map(signed=True).numpy()).astype(np.float32)
    except Exception as err:  # noqa: BLE001
        return None, 'bitsandbytes: %s' % err
    with tempfile.TemporaryDirectory() as folder:
        binary, map_file = os.path.join(folder, 'quantisers'), os.path.join(folder, 'map.bin')
        values.tofile(map_file)
        flags = [f for f in build.COMPILE_FLAGS if f != '-fPIC']
        subprocess.run([build.find_compiler()] + flags + ['-I', build.SOURCE_DIR, os.path.join(
            ROOT, 'benchmarks', 'src', 'quantisers.cc'), '-o', binary], check=True)
        out = subprocess.run([binary, map_file], capture_output=True, text=True, check=True).stdout
    return json.loads(out), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=1024)
    parser.add_argument('--cols', type=int, default=4097)
    parser.add_argument('--steps', type=int, default=50)
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    w0, grads = _problem(args.rows, args.cols, args.steps)
    exact = adam_simulated(w0, grads, None)
    rows = {'Adam, mxnag float codes (NumPy float64)': compare(adam_simulated(w0, grads, mxnag_codec), exact)}
    codec, why = dynamic_map_codec()
    rows["Adam, bitsandbytes' dynamic map (NumPy float64)"] = (
        compare(adam_simulated(w0, grads, codec), exact) if codec else {'absent': why})
    kernel = mxnag_kernels(w0, grads)
    rows['mxnag adanag fused, state_bits=8 vs 32'] = compare(kernel[8], kernel[32])
    own, why = bnb_own(w0, grads)
    rows['bitsandbytes Adam8bit vs torch Adam (CPU)'] = own if own else {'absent': why}
    speed, why = quantiser_speed()
    result = {'shape': [args.rows, args.cols], 'steps': args.steps, 'atol': ATOL, 'rtol': RTOL,
              'allowed_outside': ALLOWED, 'rows': rows, 'quantiser_ns_per_element': speed or why,
              'machine': platform.processor() or platform.machine()}
    print('%d x %d, %d steps; bitsandbytes\' tolerance: atol %g, rtol %g, fewer than %d elements '
          'outside\n' % (args.rows, args.cols, args.steps, ATOL, RTOL, ALLOWED))
    print('| 8-bit states | max abs difference | most elements outside (a step) | within tolerance |')
    print('|---|---:|---:|---|')
    for name, row in rows.items():
        if 'absent' in row:
            print('| %s | - | - | absent: %s |' % (name, row['absent']))
        else:
            print('| %s | %.2e | %d | %s |' % (name, row['max_abs_diff'], row['max_elements_outside'],
                                              'yes' if row['passes_bnb_tolerance'] else 'no'))
    if speed:
        print('\nquantising 256 floats to 8 bits: float codes %.3f ns per element, bisection of the '
              'dynamic map %.3f ns per element (%.1fx)' % (
                  speed['float_codes_ns'], speed['map_bisection_ns'],
                  speed['map_bisection_ns'] / speed['float_codes_ns']))
    else:
        print('\nquantiser speed: %s' % why)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
