"""The exceptions of the toolkit: bad input the user can fix, and training that cannot go
on. Each message is one line and names the argument (as a Python keyword, e.g.
``max_skips``); ``arguments`` lists the names it mentions, so that a command line can
speak of its own flags instead (``--max-skips``)."""


class _Named:
    def __init__(self, message, arguments=()):
        super().__init__(message)
        self.arguments = tuple(arguments)


class MxnagError(_Named, ValueError):
    """Bad input: a missing or corrupted file, an unknown name, an argument out of range.
    Command-line tools print the one-line message and exit 2."""


class TrainingError(_Named, RuntimeError):
    """Training cannot go on (e.g. too many steps in a row had non-finite gradients, or a
    checkpoint could not be written). Command-line tools print the one-line message and
    exit 1; checkpoints already written stay intact."""


class WriteError(TrainingError):
    """A file of the run could not be written (a full disk, a folder gone): ``path`` names
    it. The run's earlier checkpoints stay intact (each file is written whole or not at
    all)."""

    def __init__(self, path, reason):
        super().__init__('%s: cannot write (%s)' % (path, reason))
        self.path = path
