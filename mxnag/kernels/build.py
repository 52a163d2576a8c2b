"""Compiling the fused CPU operators (src/fused_cpu.cc) into an MXNet extension library,
once per machine, cached.

The library is built with the system C++ compiler on first use and cached under a key
of everything that decides the machine code: MXNet's version, the sources (with MXNet's
``lib_api.h``/``lib_api.cc``), the compiler's ``--version``, the flags and the CPU's
features (``-march=native`` code must not run on another CPU). Several processes may
build at once (distributed workers on one host): a file lock lets one compile while the
others wait, and the library appears under its final name by an atomic rename only.

Cache directory: ``$MXNAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/mxnag``, else
``~/.cache/mxnag``. Compiler: ``$CXX``, else the first of ``c++``, ``g++``, ``clang++``
on the PATH. ``$MXNAG_CXXFLAGS`` adds compile flags (they enter the key).

Nothing here imports more of MXNet than its version and directory, and only when called.
"""
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time

try:
    import fcntl
except ImportError:  # no fcntl (Windows): concurrent builds still end in one atomic rename
    fcntl = None

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'src')
SOURCE = os.path.join(SOURCE_DIR, 'fused_cpu.cc')
HEADERS = ('attrs.h', 'half.h', 'rules.h', 'state_codes.h', 'threads.h')  # in SOURCE_DIR, on the include path of every build
LIBRARY_STEM = 'mxnag_fused'
# Raise when the build recipe changes in a way the key would not see.
RECIPE_VERSION = '1'

# -ffast-math for the update loops, minus its finite-math assumption, so NaN and Inf in a
# gradient propagate to the weights instead of being optimised away.
COMPILE_FLAGS = ('-std=c++17', '-O3', '-march=native', '-ffast-math', '-fno-finite-math-only',
                 '-fopenmp', '-fPIC')
# MXNet's interface code does no arithmetic: built plainly.
LIB_API_FLAGS = ('-std=c++17', '-O2', '-fPIC')
# Linked WITHOUT -ffast-math: GCC < 13 then links crtfastmath.o into shared libraries too,
# which sets flush-to-zero/denormals-are-zero for the whole process when the library
# loads, changing every later float computation of MXNet and NumPy.
LINK_FLAGS = ('-shared', '-fopenmp')


class BuildError(RuntimeError):
    """The fused library could not be built; the message says why."""


def cache_dir() -> str:
    """Where built libraries live: ``$MXNAG_CACHE_DIR``, ``$XDG_CACHE_HOME/mxnag`` or
    ``~/.cache/mxnag``."""
    explicit = os.environ.get('MXNAG_CACHE_DIR')
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    xdg = os.environ.get('XDG_CACHE_HOME')
    base = xdg if xdg else os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.abspath(os.path.join(base, 'mxnag'))


def find_compiler() -> str:
    """The C++ compiler: ``$CXX`` or the first of c++, g++, clang++ on the PATH."""
    explicit = os.environ.get('CXX')
    candidates = [explicit] if explicit else ['c++', 'g++', 'clang++']
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise BuildError('no C++ compiler found (looked for %s on the PATH; set CXX)'
                     % ', '.join(candidates))


def mxnet_paths():
    """(version, include dirs, lib_api.cc) of the installed MXNet; BuildError if its
    wheel lacks the extension-library headers."""
    import mxnet  # already imported by whoever calls this; imported here, not at module level
    root = os.path.dirname(os.path.abspath(mxnet.__file__))
    includes = (os.path.join(root, 'include'), os.path.join(root, 'include', 'mxnet'))
    lib_api_cc = os.path.join(root, 'src', 'lib_api.cc')
    lib_api_h = os.path.join(includes[1], 'lib_api.h')
    for path in (lib_api_h, lib_api_cc):
        if not os.path.isfile(path):
            raise BuildError('MXNet %s has no %s: the fused optimizers need the extension-library '
                             'interface of the MXNet 1.9.1 wheel' % (mxnet.__version__, path))
    return mxnet.__version__, includes, lib_api_cc


def _run(command, timeout=120):
    """Run a command; return its stdout, or raise BuildError with its output."""
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BuildError('%s failed: %s' % (shlex.join(command), err)) from None
    if done.returncode != 0:
        raise BuildError('%s exited with %d:\n%s' % (shlex.join(command), done.returncode,
                                                     done.stdout[-4000:]))
    return done.stdout


def cpu_features(compiler: str) -> str:
    """What ``-march=native`` means here: the compiler's resolved target options when it
    can print them (GCC), and the CPU flags of /proc/cpuinfo, with the machine name."""
    parts = [platform.machine()]
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.split(':')[0].strip() in ('flags', 'Features', 'model name', 'CPU part'):
                    parts.append(line.strip())
                if len(parts) > 3:
                    break
    except OSError:
        parts.append(platform.processor())
    try:
        parts.append(_run([compiler, '-march=native', '-Q', '--help=target'], timeout=30))
    except BuildError:
        pass  # not GCC: /proc/cpuinfo has to do
    return '\n'.join(parts)


def extra_flags():
    """Compile flags from ``$MXNAG_CXXFLAGS``."""
    return tuple(shlex.split(os.environ.get('MXNAG_CXXFLAGS', '')))


def _hash_files(paths):
    digest = hashlib.sha256()
    for path in paths:
        with open(path, 'rb') as f:
            digest.update(os.path.basename(path).encode() + b'\0' + f.read() + b'\0')
    return digest.hexdigest()


def build_spec(source=SOURCE, stem=LIBRARY_STEM):
    """Everything the build of ``source`` (an extension library's one C++ file; the fused
    operators by default) depends on, as a dict, with its cache ``key`` and the library
    ``path`` it names (``<stem>-<key>.so``)."""
    compiler = find_compiler()
    version, includes, lib_api_cc = mxnet_paths()
    sources = [source] + [os.path.join(SOURCE_DIR, name) for name in HEADERS]
    flags = COMPILE_FLAGS + extra_flags()
    spec = {
        'recipe': RECIPE_VERSION,
        'mxnet_version': version,
        'source_sha256': _hash_files(sources + [os.path.join(includes[1], 'lib_api.h'), lib_api_cc]),
        'compiler': compiler,
        'compiler_version': _run([compiler, '--version'], timeout=30).strip(),
        'compile_flags': list(flags),
        'lib_api_flags': list(LIB_API_FLAGS),
        'link_flags': list(LINK_FLAGS),
        'cpu_sha256': hashlib.sha256(cpu_features(compiler).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
    spec['key'] = key
    spec['path'] = os.path.join(cache_dir(), '%s-%s.so' % (stem, key))
    spec['source'] = source
    spec['includes'] = [SOURCE_DIR] + list(includes)
    spec['lib_api_cc'] = lib_api_cc
    return spec


def _compile(spec, workdir):
    """Compile both objects (in parallel) and link them into ``workdir``; return the path."""
    compiler = spec['compiler']
    include_flags = ['-I' + path for path in spec['includes']]
    fused_o = os.path.join(workdir, 'fused_cpu.o')
    lib_api_o = os.path.join(workdir, 'lib_api.o')
    jobs = [
        [compiler] + spec['compile_flags'] + include_flags +
        ['-c', spec['source'], '-o', fused_o],
        [compiler] + spec['lib_api_flags'] + include_flags + ['-c', spec['lib_api_cc'], '-o', lib_api_o],
    ]
    running = [(job, subprocess.Popen(job, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      universal_newlines=True)) for job in jobs]
    for job, process in running:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise BuildError('%s exited with %d:\n%s' % (shlex.join(job), process.returncode,
                                                         output[-4000:]))
    library = os.path.join(workdir, 'lib.so')
    _run([compiler] + spec['link_flags'] + [fused_o, lib_api_o, '-o', library])
    return library


class _FileLock:
    """An exclusive ``flock`` on ``path`` for the ``with`` block (no-op without fcntl)."""

    def __init__(self, path):
        self.path = path
        self.file = None

    def __enter__(self):
        self.file = open(self.path, 'a')
        if fcntl is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if fcntl is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()


def build(force: bool = False, source: str = SOURCE, stem: str = LIBRARY_STEM) -> dict:
    """Return the build spec of the cached library of ``source`` (the fused operators by
    default), compiling it first if it is not in the cache (or ``force``). The result has ``path``, ``key``, ``cache_hit`` (whether
    this call found it built) and ``seconds`` (time spent compiling, 0 on a hit).
    Raises BuildError when there is no compiler or the compilation fails."""
    spec = build_spec(source, stem)
    path = spec['path']
    if os.path.isfile(path) and not force:
        return dict(spec, cache_hit=True, seconds=0.0)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise BuildError('cannot create the cache directory %s: %s (set MXNAG_CACHE_DIR)'
                         % (directory, err)) from None
    with _FileLock(path[:-3] + '.lock'):
        if os.path.isfile(path) and not force:  # another process built it while we waited
            return dict(spec, cache_hit=True, seconds=0.0)
        start = time.perf_counter()
        workdir = tempfile.mkdtemp(prefix='build-', dir=directory)
        try:
            library = _compile(spec, workdir)
            _write_json(path[:-3] + '.json', spec)
            os.replace(library, path)  # atomic: readers see no library or a whole one
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return dict(spec, cache_hit=False, seconds=time.perf_counter() - start)


def _write_json(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
    with os.fdopen(fd, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
