"""AdaNAG against PyTorch's torch.optim.NAdam, an independent implementation of the same
equations. PyTorch is optional (never a dependency of mxnag): it runs in a subprocess so
that its libraries never meet MXNet's, and the test is skipped when it is missing."""
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import mxnag  # noqa: F401
from reference import relative_error
from optimizers import FLOAT32_BOUND, random_problem, run_updater

TORCH_SCRIPT = textwrap.dedent('''
    import sys, numpy as np, torch
    data = np.load(sys.argv[1])
    p = torch.nn.Parameter(torch.tensor(data['w0']))
    opt = torch.optim.NAdam([p], lr=float(data['lr']), weight_decay=float(data['wd']),
                            momentum_decay=0.004, decoupled_weight_decay=bool(data['decoupled']))
    for g in data['grads']:
        p.grad = torch.tensor(g)
        opt.step()
    np.save(sys.argv[2], p.detach().numpy())
''')


def torch_available():
    try:
        return subprocess.run([sys.executable, '-c', 'import torch'], capture_output=True,
                              timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(not torch_available(), reason='PyTorch not installed (optional reference)')
@pytest.mark.parametrize('decoupled', [True, False])
def test_adanag_equals_torch_nadam(decoupled, rng, tmp_path):
    w0, grads = random_problem(rng, (40, 3))
    lr, wd = 0.01, 0.1
    np.savez(tmp_path / 'in.npz', w0=w0, grads=np.stack(grads), lr=lr, wd=wd, decoupled=decoupled)
    subprocess.run([sys.executable, '-c', TORCH_SCRIPT, str(tmp_path / 'in.npz'),
                    str(tmp_path / 'out.npy')], check=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS='1'))
    torch_w = np.load(tmp_path / 'out.npy').astype(np.float64)
    opt = mx.optimizer.create('adanag', learning_rate=lr, wd=wd, decoupled_wd=decoupled)
    w, _ = run_updater(opt, w0, grads)
    assert relative_error(w0, w.asnumpy(), torch_w) < FLOAT32_BOUND
