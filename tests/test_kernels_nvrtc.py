"""Which architecture the fused GPU kernels are compiled for (mxnag/kernels/cuda.py
``_compile``), with ``mx.rtc.CudaModule`` and MXNet's compute-capability lookup replaced
by stand-ins (no GPU here): the device's own when NVRTC knows it, else the newest one
NVRTC accepts, and one warning naming the architectures tried when none compiles."""
import logging
import re

import mxnet as mx
import pytest
from mxnet import rtc, util

import mxnag
from mxnag import kernels
from mxnag.kernels import cuda

RULE = mxnag.AdaNAG.rule

pytestmark = pytest.mark.usefixtures('fused_allowed')

# What CUDA 11.2's NVRTC says of an architecture it does not know.
REJECTED = 'nvrtc: error: invalid value for --gpu-architecture (-arch)'


class FakeNVRTC:
    """Stands for ``mx.rtc.CudaModule``: records the options of each compile and raises
    MXNet's error, with NVRTC's log, for an architecture outside ``known`` (with no
    option, mx.rtc asks for device 0's, ``default``)."""

    def __init__(self, known=cuda.NVRTC_ARCHS, failure=None, default=None):
        self.known, self.failure, self.default, self.calls = set(known), failure, default, []

    def __call__(self, source, options=(), exports=()):
        assert isinstance(options, tuple) and 'struct %s_rule ' % RULE.name in source
        self.calls.append(options)
        if self.failure is not None:
            raise mx.base.MXNetError(self.failure)
        arch = [int(re.fullmatch(r'--gpu-architecture=compute_(\d+)', o).group(1)) for o in options]
        if (arch[0] if arch else self.default) not in self.known:
            raise mx.base.MXNetError('Traceback (most recent call last):\n  File '
                                     '"../src/common/rtc.cc", line 87\nMXNetError: %s' % REJECTED)
        return self  # the module


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(capability, **nvrtc)``: a GPU of that compute capability (None: not readable)
    and NVRTC stand-in; no module compiled yet in this process."""
    monkeypatch.setattr(cuda, '_MODULES', {})
    monkeypatch.setattr(cuda, '_KERNELS', {})

    def make(capability, **nvrtc):
        def lookup(ctx):
            assert ctx.device_type == 'gpu'
            if capability is None:
                raise OSError('could not load any of: libcuda.so libcuda.dylib cuda.dll')
            return capability
        fake = FakeNVRTC(**nvrtc)
        monkeypatch.setattr(util, 'get_cuda_compute_capability', lookup)
        monkeypatch.setattr(rtc, 'CudaModule', fake)
        return fake
    return make


def _warnings(caplog):
    return [r for r in caplog.records if r.name == 'mxnag.kernels' and r.levelno == logging.WARNING]


@pytest.mark.parametrize('capability', [86, 80, 75, 70, 61])
def test_a_gpu_nvrtc_knows_gets_its_own_architecture(gpu, capability, caplog):
    nvrtc = gpu(capability)
    assert cuda.available(RULE)
    assert nvrtc.calls == [('--gpu-architecture=compute_%d' % capability,)]
    assert cuda._MODULES[RULE.name].value is nvrtc and not _warnings(caplog)


@pytest.mark.parametrize('capability,used', [(90, 86), (89, 86), (87, 86), (100, 86)])
def test_a_gpu_newer_than_nvrtc_gets_the_newest_architecture_nvrtc_knows(gpu, capability, used,
                                                                         caplog):
    """H100/H200 (9.0) with CUDA 11.2's NVRTC: compute_90 rejected, PTX for compute_86."""
    nvrtc = gpu(capability)
    with caplog.at_level(logging.INFO, logger='mxnag.kernels'):
        assert cuda.available(RULE)
    assert nvrtc.calls == [('--gpu-architecture=compute_%d' % capability,),
                           ('--gpu-architecture=compute_%d' % used,)]
    assert not _warnings(caplog)
    assert any('compute_%d' % used in r.getMessage() and 'compute_%d' % capability in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


def test_an_older_nvrtc_steps_down_until_one_compiles(gpu):
    """An NVRTC that knows up to compute_80 (CUDA 11.0) on a 9.0 GPU: 90, 86 rejected."""
    nvrtc = gpu(90, known=[80, 75, 70])
    assert cuda.available(RULE)
    assert [o[0][-2:] for o in nvrtc.calls] == ['90', '86', '80']


def test_unreadable_capability_leaves_the_choice_to_mx_rtc_first(gpu):
    """No capability read: mx.rtc's own choice (device 0's) first, then NVRTC's newest."""
    nvrtc = gpu(None, known=[86], default=90)
    assert cuda.available(RULE)
    assert nvrtc.calls == [(), ('--gpu-architecture=compute_86',)]


def test_every_compile_failing_falls_back_with_one_warning_naming_the_architectures(gpu, caplog):
    nvrtc = gpu(90, known=[])
    assert not cuda.available(RULE) and not cuda.available(RULE)
    tried = ['compute_90'] + ['compute_%d' % a for a in cuda.NVRTC_ARCHS]
    assert nvrtc.calls == [('--gpu-architecture=%s' % a,) for a in tried]  # once, not per call
    assert kernels._backend(RULE, mx.nd.ones((2,)).dtype, 'gpu', None) == 'composed'
    assert len(nvrtc.calls) == len(tried)
    (warning,) = _warnings(caplog)
    message = warning.getMessage()
    assert 'composed' in message and ', '.join(tried) in message and REJECTED in message
    assert 'CompileError' in cuda._MODULES[RULE.name].reason


def test_a_compile_error_not_about_the_architecture_is_not_retried(gpu, caplog):
    """An error in the source (or the CPU build's missing CUDA RTC) fails every
    architecture alike: one compile, then the composed update with one warning."""
    nvrtc = gpu(86, failure='source.cu(12): error: identifier "mxnag_oops" is undefined')
    assert not cuda.available(RULE)
    assert nvrtc.calls == [('--gpu-architecture=compute_86',)]
    (warning,) = _warnings(caplog)
    assert 'compute_86' in warning.getMessage() and 'mxnag_oops' in warning.getMessage()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # CudaModule.__del__
def test_the_cpu_build_falls_back_without_stand_ins(monkeypatch, caplog):
    """This machine's MXNet (no CUDA, no driver): not available, one warning saying why."""
    monkeypatch.setattr(cuda, '_MODULES', {})
    assert not cuda.available(RULE)
    (warning,) = _warnings(caplog)
    assert 'USE_CUDA=1' in warning.getMessage() and "device 0's" in warning.getMessage()
