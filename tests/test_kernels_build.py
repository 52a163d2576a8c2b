"""Building the fused CPU library: the cache key, concurrent builds, the ops command."""
import json
import os
import subprocess
import sys

from mxnag.kernels import build

from conftest import HAS_COMPILER, ROOT, needs_fused


def test_cache_key_follows_flags_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv('MXNAG_CACHE_DIR', str(tmp_path))
    plain = build.build_spec()
    monkeypatch.setenv('MXNAG_CXXFLAGS', '-DMXNAG_SOFT_HALF')
    flagged = build.build_spec()
    assert plain['key'] != flagged['key']
    assert os.path.dirname(plain['path']) == str(tmp_path)
    for part in ('mxnet_version', 'source_sha256', 'compiler_version', 'compile_flags', 'cpu_sha256'):
        assert plain[part], part
    monkeypatch.delenv('MXNAG_CACHE_DIR')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert build.cache_dir() == str(tmp_path / 'xdg' / 'mxnag')


@needs_fused
def test_concurrent_builds_then_cache_hit(tmp_path):
    """Two processes building into an empty cache at once both get the library (one
    compiles, the other waits on the lock); building again is a cache hit."""
    script = ('import json, mxnet; from mxnag.kernels import build; '
              'spec = build.build(); print(json.dumps([spec["path"], spec["cache_hit"]]))')
    env = dict(os.environ, MXNAG_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, '-c', script], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    paths = {path for path, _ in results}
    assert len(paths) == 1 and os.path.isfile(paths.pop())
    assert sorted(hit for _, hit in results) == [False, True]
    os.environ['MXNAG_CACHE_DIR'], saved = str(tmp_path), os.environ.get('MXNAG_CACHE_DIR')
    try:
        again = build.build()
    finally:
        if saved is None:
            del os.environ['MXNAG_CACHE_DIR']
        else:
            os.environ['MXNAG_CACHE_DIR'] = saved
    assert again['cache_hit'] and again['path'] == results[0][0]
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith('build-') or p.endswith('.tmp')]
    assert leftovers == []


def test_ops_command_info_and_build(capsys):
    from mxnag.kernels import ops
    assert ops.main(['info']) == 0
    out = capsys.readouterr().out
    assert 'cache_dir' in out and 'fused_cpu_active' in out
    if HAS_COMPILER:
        assert ops.main(['build']) == 0
        assert '.so' in capsys.readouterr().out
