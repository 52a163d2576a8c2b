"""The ``mxnag`` command: ``mxnag launch ...`` (distributed jobs) and ``mxnag build-ops``
(compile the fused optimizer kernels ahead of time)."""
import sys

USAGE = '''usage: mxnag COMMAND [ARGS]

commands:
  launch      start a ps-lite cluster for MXNet's distributed kvstore (mxnag launch --help)
  build-ops   compile the fused CPU optimizer kernels now (python -m mxnag.kernels.ops build)
  ops         the kernels' build and status commands (mxnag ops --help)
'''


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == 'launch':
        from .dist.launch import main as launch
        return launch(rest)
    if command in ('build-ops', 'ops'):
        from .kernels.ops import main as ops
        return ops(['build'] + rest if command == 'build-ops' else rest)
    sys.stderr.write('mxnag: error: unknown command %r\n%s' % (command, USAGE))
    return 2


if __name__ == '__main__':
    sys.exit(main())
