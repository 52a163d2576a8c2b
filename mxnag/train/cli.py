"""The recipes' command-line layer: their options (from ``mxnag.train.settings``), and
how a run ends: bad input with exit status 2 and one line, training that stopped with
exit status 1 and one line, each naming the option (``--max-skips``) where the library
named the setting (``max_skips``)."""
import argparse
import logging
import os
import re
import sys
from typing import Callable, List, Optional

from . import settings
from ..errors import MxnagError, TrainingError


def parser_for(recipe: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser of ``recipe``'s settings, described by the script's ``doc``
    (first paragraph: description; the rest: epilog)."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split('\n\n', 1)[1])
    return settings.add_arguments(parser, recipe)


def message(err: Exception) -> str:
    """``err``'s one line, each setting it names written as its command-line option."""
    text = str(err)
    for name in getattr(err, 'arguments', ()):
        flag = settings.flag_of(name)
        # a whole word, not part of a path (out/r.json, r.out)
        text = re.sub(r'(?<![\w./-])%s(?![\w./-])' % re.escape(name), flag, text, count=1)
    return text


class _Formatter(logging.Formatter):
    """The recipes' lines on stderr: a message as it is, a warning as ``warning: ...``."""

    def format(self, record):
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else '%s: %s' % (record.levelname.lower(), text)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the toolkit's log (``mxnag.*`` loggers) on stderr, one line per message; once."""
    logger = logging.getLogger('mxnag')
    if not any(getattr(h, '_mxnag_cli', False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        handler._mxnag_cli = True
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def run_cli(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Run ``main(argv)`` with the toolkit's log on stderr; bad input (``MxnagError``) ends with exit status 2 and one line
    on stderr, a training failure (``TrainingError``) with exit status 1 and one line."""
    prog = os.path.basename(sys.argv[0]) or 'mxnag'
    configure_logging()
    try:
        return main(argv)
    except MxnagError as err:
        sys.stderr.write('%s: error: %s\n' % (prog, message(err)))
        return 2
    except TrainingError as err:
        sys.stderr.write('%s: stopped: %s\n' % (prog, message(err)))
        return 1
