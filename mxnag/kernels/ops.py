"""Build the fused optimizer operators ahead of time, or say what this process would use.

    python -m mxnag.kernels.ops build [--force]   # compile into the cache now; print the library's path
    python -m mxnag.kernels.ops info              # paths, cache key, whether fused is active and why not

``mxnag build-ops`` runs ``main(['build'])``. Building ahead of time spares the first
training step the compilation (seconds), e.g. on every worker host of a cluster.
"""
import argparse
import json
import os
import sys
from typing import List, Optional


def _build(args) -> int:
    from . import build, fused_cpu
    try:
        spec = build.build(force=args.force)
    except build.BuildError as err:
        print('mxnag: building the fused operators failed: %s' % err, file=sys.stderr)
        return 1
    if spec['cache_hit']:
        print('cached: %s' % spec['path'])
    else:
        print('built in %.1f s: %s' % (spec['seconds'], spec['path']))
    if args.check:
        import mxnet  # noqa: F401
        if not fused_cpu.available():
            print('mxnag: the library was built but does not load: %s'
                  % fused_cpu.status()['reason'], file=sys.stderr)
            return 1
        print('loads into MXNet: yes')
    return 0


def info() -> dict:
    """What ``python -m mxnag.kernels.ops info`` prints: cache, key parts, library, status."""
    import mxnet
    from . import build, cuda, fused_cpu
    out = {'mxnet_version': mxnet.__version__, 'cache_dir': build.cache_dir(),
           'MXNAG_FUSED': os.environ.get('MXNAG_FUSED'),
           'MXNAG_NUM_THREADS': os.environ.get('MXNAG_NUM_THREADS'),
           'cuda_source': cuda.SOURCE_PATH}
    try:
        spec = build.build_spec()
    except build.BuildError as err:
        out.update(fused_cpu_active=False, reason=str(err))
        return out
    out.update({key: spec[key] for key in ('key', 'path', 'compiler', 'compile_flags', 'link_flags')})
    out['compiler_version'] = spec['compiler_version'].splitlines()[0]
    out['built'] = os.path.isfile(spec['path'])
    if fused_cpu.forced_off():
        out.update(fused_cpu_active=False, reason='forced off by MXNAG_FUSED=%s'
                   % os.environ['MXNAG_FUSED'])
    elif not out['built']:
        out.update(fused_cpu_active=False,
                   reason='not built yet: the first update (or `python -m mxnag.kernels.ops build`) builds it')
    else:
        active = fused_cpu.available()
        out.update(fused_cpu_active=active, reason=fused_cpu.status()['reason'])
        if active:
            max_threads, used, procs = fused_cpu.probe()
            out['threads'] = {'omp_get_max_threads_in_engine': max_threads,
                              'used_by_fused_ops': used, 'omp_get_num_procs': procs}
    out['gpus'] = mxnet.context.num_gpus()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m mxnag.kernels.ops', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    build_cmd = commands.add_parser('build', help='compile the fused CPU operators into the cache')
    build_cmd.add_argument('--force', action='store_true', help='rebuild even if cached')
    build_cmd.add_argument('--check', action='store_true', help='also load the library into MXNet')
    info_cmd = commands.add_parser('info', help='paths, cache key, whether the fused path is active')
    info_cmd.add_argument('--json', action='store_true', help='print JSON')
    args = parser.parse_args(argv)
    if args.command == 'build':
        return _build(args)
    details = info()
    if args.json:
        print(json.dumps(details, indent=1, sort_keys=True))
    else:
        for key in sorted(details):
            print('%-20s %s' % (key, details[key]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
