"""What the command line says besides its results, through stdlib ``logging``.

Results (tables, accuracies, ``wrote ...``) go to standard output. Everything else is a record of
the ``mstransform`` logger on standard error: notes at INFO (``--quiet`` hides them), warnings as one
line ``mstransform: warning: ...`` (always shown), details at DEBUG (``--verbose``). The libraries
underneath are neither leaked nor silenced: their Python warnings (``logging.captureWarnings``) and
log records reach standard error under ``--verbose`` only, and ``--log-file FILE`` keeps everything,
timestamped, whatever the console shows. Records made before the file could be checked as an output
are kept in memory and written to it once it is.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import warnings

LOGGER = logging.getLogger("mstransform")
WARNING_PREFIX = "mstransform: warning: "


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        ours = record.name == "mstransform" or record.name.startswith("mstransform.")
        if ours and record.levelno >= logging.WARNING and not msg.startswith("mstransform: "):
            return WARNING_PREFIX + msg
        if not ours:  # a library's record (--verbose): say whose it is
            return f"{record.name}: {record.levelname.lower()}: {msg.splitlines()[0] if msg else ''}"
        return msg


class _Console(logging.StreamHandler):
    """Standard error as it is when a record arrives (the command line guards it while it runs)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the live sys.stderr is always used
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "mstransform" or record.name.startswith("mstransform.")
        return (ours or self.verbose) and super().filter(record)

    def handleError(self, record):  # a closed or full standard error is the command line's to report
        raise


class Output:
    """The logging set-up of one command-line run; :meth:`close` puts the process back as it was."""

    def __init__(self, quiet: bool = False, verbose: bool = False, keep: bool = False):
        self.root = logging.getLogger()
        self.saved = (self.root.level, LOGGER.level, LOGGER.propagate)
        self.console = _Console(verbose)
        self.console.setFormatter(_ConsoleFormat())
        self.levels(quiet, verbose)
        # until --log-file's path is checked, what it must hold waits here (only when one was named)
        self.pending = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1) if keep \
            else None
        self.file: logging.Handler | None = None
        self.root.addHandler(self.console)
        if self.pending is not None:
            self.root.addHandler(self.pending)
        LOGGER.setLevel(logging.DEBUG)
        LOGGER.propagate = True
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("default")  # each library warning once per place, to the py.warnings logger
        logging.captureWarnings(True)

    def levels(self, quiet: bool, verbose: bool) -> None:
        """The console's level: notes (default), warnings only (quiet), or details and libraries (verbose)."""
        self.console.verbose = verbose
        self.console.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
        self.root.setLevel(logging.INFO if verbose else logging.WARNING)  # libraries: their warnings, or more

    def to_file(self, line: str) -> None:
        """A line for the log file alone (the error line, which standard error already shows)."""
        target = self.file or self.pending
        if target is not None:
            target.handle(LOGGER.makeRecord(LOGGER.name, logging.ERROR, "cli", 0, line, None, None))

    def log_to(self, path) -> None:
        """Write every record, those kept so far included, to ``path`` (an output already checked)."""
        self.file = logging.FileHandler(path, mode="w", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.file.setLevel(logging.DEBUG)
        if self.pending is not None:
            self.pending.setTarget(self.file)
            self.pending.flush()
            self.root.removeHandler(self.pending)
            self.pending.close()
            self.pending = None
        self.root.addHandler(self.file)

    def close(self) -> None:
        logging.captureWarnings(False)
        self.warnings.__exit__(None, None, None)
        for handler in (self.console, self.pending, self.file):
            if handler is not None:
                self.root.removeHandler(handler)
                handler.close()
        self.root.level, LOGGER.level, LOGGER.propagate = self.saved


def say(message: str) -> None:
    """A note or a warning from a command: a line starting ``mstransform: warning:`` is a warning (shown even
    under ``--quiet``), any other line a note."""
    if message.startswith(WARNING_PREFIX):
        LOGGER.warning(message[len(WARNING_PREFIX):])
    else:
        LOGGER.info(message)
