"""A thing a process makes at most once, on first use, and can do without."""
import logging
import threading

log = logging.getLogger('mxnag.kernels')


class Once:
    """The result of ``make()``, made by the first ``get()`` of this process (under a
    lock). If ``make`` raises, one warning on the ``mxnag.kernels`` logger says that
    ``what`` is unavailable and why (with no logging configured, Python prints it to
    stderr), ``reason`` keeps the why, and ``get()`` returns None from then on."""

    def __init__(self, what, make):
        self.what = what
        self._make = make
        self.lock = threading.Lock()
        self.tried = False
        self.value = None
        self.reason = None

    def get(self):
        if not self.tried:
            with self.lock:
                if not self.tried:
                    try:
                        self.value = self._make()
                    except Exception as err:  # noqa: BLE001  (any failure means: fall back)
                        self.reason = '%s: %s' % (type(err).__name__, err)
                        log.warning('%s unavailable, using the slower composed NDArray update (%s)',
                                    self.what, self.reason)
                    self.tried = True
        return self.value
