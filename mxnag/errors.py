"""The one exception type for bad input that the user can fix."""


class MxnagError(ValueError):
    """Bad input: a missing or corrupted file, an unknown name, an argument out of range.
    The message names what is wrong in one line; command-line tools print it and exit 2."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many steps in a row had non-finite gradients).
    Command-line tools print the one-line message and exit 1; checkpoints stay intact."""
