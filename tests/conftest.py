import ctypes
import os
import shutil
import subprocess
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.environ.get('MXNAG_TEST_MNIST', os.path.join(ROOT, '..', 'shared', 'data', 'mnist'))


def run_recipe(script, *args, check=True):
    """``recipes/<script>`` with ``args`` in a fresh process; with ``check``, an error
    (with the end of its stderr) unless it exits 0."""
    import sys
    proc = subprocess.run([sys.executable, '-W', 'ignore', os.path.join(ROOT, 'recipes', script)] +
                          [str(a) for a in args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    if check and proc.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s' % (script, proc.returncode, proc.stderr[-3000:]))
    return proc


@pytest.fixture
def rng(request):
    """Fresh random data per test, reproducible from the test's name."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def mnist_dir():
    if not os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        pytest.skip('MNIST not found at %s (set MXNAG_TEST_MNIST)' % MNIST_DIR)
    return MNIST_DIR


# -- the kernels' tests share these -------------------------------------------------------

HAS_COMPILER = any(shutil.which(c) for c in ([os.environ['CXX']] if os.environ.get('CXX')
                                             else ['c++', 'g++', 'clang++']))
needs_fused = pytest.mark.skipif(not HAS_COMPILER, reason='no C++ compiler: fused CPU path not built')
# big enough for several threads and several work chunks inside the operator
LARGE = (300, 250)


@pytest.fixture
def fused_allowed(monkeypatch):
    """The fused backends allowed, whatever the caller's environment said at import."""
    from mxnag.kernels import fused_cpu
    monkeypatch.setattr(fused_cpu, 'FORCED_OFF', False)


@pytest.fixture
def fused(fused_allowed):
    """The fused CPU path, active (the library built and loaded), or a skip."""
    from mxnag.kernels import fused_cpu
    if not HAS_COMPILER:
        pytest.skip('no C++ compiler')
    assert fused_cpu.available(), fused_cpu.status()
    return fused_cpu


def count_calls(monkeypatch):
    """Record the operator calls of the fused CPU backend: a list of (operator, #inputs)."""
    from mxnag.kernels import fused_cpu
    calls = []
    original = fused_cpu.invoke

    def counting(name, inputs, keys, values, out):
        calls.append((name, len(inputs)))
        return original(name, inputs, keys, values, out)
    monkeypatch.setattr(fused_cpu, 'invoke', counting)
    return calls


# The CUDA kernels on the CPU: fused_cuda.cu compiled by the C++ compiler through
# tests/cuda_host_emulation.cc, which runs a launch's threads one after another (an
# 8-bit kernel's: each block's threads at once, at a barrier). With
# mx.rtc replaced by a stand-in that launches there, CPU weights take the GPU path of the
# optimizers whole: scalars, kernel choice, signatures, argument lists and the kernels'
# own maths, checked against the float64 references where no GPU is lent.

# signature type -> (NumPy dtype of an array argument, type of a scalar argument, ctypes type)
_RTC_TYPES = {'float': (np.float32, np.float32, ctypes.c_float),
              'double': (np.float64, np.float64, ctypes.c_double),
              '__half': (np.float16, None, None),
              'int': (None, np.int32, ctypes.c_int),
              'int64_t': (None, np.int64, ctypes.c_int64),
              'uint8_t': (np.uint8, None, None)}


@pytest.fixture(scope='module')
def cuda_emulation(tmp_path_factory):
    """The emulation library, built once for the module from the source of every rule."""
    from mxnag.kernels import build, cuda
    from optimizers import RULES
    if not HAS_COMPILER:
        pytest.skip('no C++ compiler')
    compiler = shutil.which(os.environ.get('CXX') or 'c++') or shutil.which('g++')
    folder = tmp_path_factory.mktemp('cuda_emulation')
    (folder / 'fused_cuda_all.cu').write_text(cuda.source(*RULES.values()))
    (folder / 'kernels.inc').write_text(''.join('MXNAG_KERNEL(%s)\n' % n
                                                for n in cuda.kernel_names(*RULES.values())))
    library = folder / 'fused_cuda_emulated.so'
    subprocess.run([compiler, '-std=c++20', '-O2', '-shared', '-fPIC', '-pthread', '-I', str(folder),
                    '-I', build.SOURCE_DIR, os.path.join(ROOT, 'tests', 'cuda_host_emulation.cc'),
                    '-o', str(library)], check=True)
    lib = ctypes.CDLL(str(library))
    lib.mxnag_emulated_kernels.restype = ctypes.c_char_p
    lib.mxnag_emulate_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                         ctypes.POINTER(ctypes.c_void_p)]
    return lib


class _EmulatedKernel:
    """Stands for an ``mx.rtc`` kernel: checks each argument against the signature it was
    made with (arrays of the declared dtype on the launch's context, scalars of the
    declared type) and runs the launch in the emulation."""

    def __init__(self, lib, name, signature, launches):
        self.lib, self.name, self.launches = lib, name, launches
        self.declared = [part.strip() for part in signature.split(',')]

    def launch(self, args, ctx, grid, block, shared_mem=0):
        import mxnet as mx
        from mxnet.base import _LIB, check_call
        assert len(args) == len(self.declared), self.name
        assert 1 <= block[0] <= 1024 and block[1:] == (1, 1) and grid[2] == 1
        mx.nd.waitall()  # the emulation works on the arrays from this thread
        values = []
        for arg, declared in zip(args, self.declared):
            words = declared.replace('*', ' * ').split()
            array_dtype, scalar_type, c_type = _RTC_TYPES[words[1] if words[0] == 'const' else words[0]]
            if '*' in words:
                assert isinstance(arg, mx.nd.NDArray) and arg.context == ctx, (self.name, declared)
                assert arg.dtype == array_dtype, (self.name, declared, arg.dtype)
                pointer = ctypes.c_void_p()
                check_call(_LIB.MXNDArrayGetData(arg.handle, ctypes.byref(pointer)))
                values.append(pointer)
            else:
                assert type(arg) is scalar_type, (self.name, declared, type(arg))
                values.append(c_type(arg))
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        assert self.lib.mxnag_emulate_launch(self.name.encode(), grid[0], grid[1], block[0],
                                             params) == 0
        self.launches.append((self.name, grid, args[len(args) - grid[1]:]))


@pytest.fixture
def emulated_gpu_path(cuda_emulation, fused_allowed, monkeypatch):
    """CPU weights on the optimizers' GPU path, with mx.rtc's kernels run by the emulation;
    yields the launches: (kernel, grid, sizes of its tensors)."""
    from mxnag import kernels
    from mxnag.kernels import cuda
    from optimizers import RULES
    launches = []

    class Module:  # stands for mx.rtc.CudaModule(cuda.source(rule))
        def get_kernel(self, name, signature):
            return _EmulatedKernel(cuda_emulation, name, signature, launches)

    monkeypatch.setattr(cuda, '_MODULES', {})
    for rule in RULES.values():
        assert not cuda.available(rule)  # the CPU build: mx.rtc cannot compile
        monkeypatch.setattr(cuda._MODULES[rule.name], 'value', Module())
    monkeypatch.setattr(cuda, '_KERNELS', {})
    original = kernels._backend

    def gpu_for_cpu(rule, dtype, device_type, master_dtype):
        backend = original(rule, dtype, 'gpu' if device_type == 'cpu' else device_type, master_dtype)
        assert backend == 'cuda'
        return backend
    monkeypatch.setattr(kernels, '_backend', gpu_for_cpu)
    return launches
