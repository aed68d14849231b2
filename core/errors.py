"""Error classes with one exit code per class of problem.

Every error the command line reports is one of these: it prints as a single line
(``mstransform: error: ...``) naming the problem and what to do, and the process exits
with the class's code. Anything else is a bug and prints a traceback.

The line is printed through :meth:`MstError.render`, which escapes control and line-breaking
characters (:func:`one_line`): a file name holding a newline cannot split it. An ``OSError``
gets the class of the path it names (``mstransform.core.guards.classify_os_error``). One status
is not an error: 141 (:data:`EXIT_BROKEN_PIPE`) when the reader of standard output closed the pipe.
"""
from __future__ import annotations

import unicodedata

# What a shell reports for ``ls | head -c 1``: 128 + SIGPIPE. The reader closed the pipe, so
# the command stops quietly (no message, no traceback) with this status, as git and ls do.
EXIT_BROKEN_PIPE = 141

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def one_line(text: str) -> str:
    """``text`` safe to print as one terminal line: every character that breaks a line or moves the
    cursor (control characters, U+0085, U+2028/U+2029, bidi overrides) and every undecodable byte of
    a file name (a lone surrogate) is written as its Python escape (``\\n``, ``\\x1b``, ``\\u2028``),
    the way ``repr`` writes it; printable text, backslashes included, is left as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


class MstError(Exception):
    """Base class; ``exit_code`` is what the CLI returns.

    ``param`` names the API parameter at fault (``alpha``, ``batch_size``, ...); ``fix`` names the
    parameter, and the value, that would let the call go on (``("ignore_fingerprint", "True")``), said
    at the end of the message. The library speaks of parameters; the command line maps them to its
    flags (:meth:`render`), so a user of either reads the words they type.
    """

    exit_code = 1

    def __init_subclass__(cls, exit_code: int | None = None, **kw):
        super().__init_subclass__(**kw)
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: str, *, param: str | None = None, fix: tuple[str, str] | None = None):
        super().__init__(message)
        self.param = param
        self.detail = message
        self.fix = fix

    def __str__(self) -> str:
        fix = f" {self.fix[0]}={self.fix[1]}" if self.fix else ""
        return (f"{self.param} {self.detail}" if self.param else self.detail) + fix

    def render(self, flags: dict[str, str]) -> str:
        """The message with the parameter replaced by the flag that sets it (``alpha`` -> ``--alpha``),
        as one line: a path holding a newline or an escape sequence cannot split or repaint it."""
        fix = f" {flags.get(self.fix[0], self.fix[0])}" if self.fix else ""
        if not self.param:
            return one_line(self.detail + fix)
        return one_line(f"{flags.get(self.param, self.param)} {self.detail}{fix}")


class UsageError(MstError, exit_code=2):
    """Bad command-line values (negative alpha, unknown site in an override, ...)."""


class ModelError(MstError, exit_code=3):
    """The model cannot be read or has nothing to harden (not ONNX, missing external data, no sites)."""


class StatsError(MstError, exit_code=4):
    """The statistics file is unreadable or does not fit the model."""


class DataError(MstError, exit_code=5):
    """Calibration or evaluation data is unreadable or does not fit the model's inputs."""


class OutputError(MstError, exit_code=6):
    """An output cannot be written (equals an input, missing or read-only folder, disk full)."""


class VerificationError(MstError, exit_code=7):
    """The written model failed a post-write check (checker, shape inference, ORT load, numerics)."""


class DependencyError(MstError, exit_code=8):
    """An optional dependency (TensorRT, torch, ...) is not installed."""


class CompatibilityError(MstError, exit_code=9):
    """A static deployment check (``check-trt``) found a blocking problem."""


class Interrupted(MstError, exit_code=130):
    """SIGINT/SIGTERM arrived; no partial output was left."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that no ``except Exception`` on the way can swallow it."""



def report_interrupt(e: KeyboardInterrupt) -> int:
    """One line for Ctrl-C or SIGTERM (atomic outputs have already removed their temporary files); its exit code.

    Here, below every room, so the console entry point can say it before anything else is imported."""
    import sys

    what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    err = Interrupted(f"{what}; no partial output was left")
    try:
        print(f"mstransform: error: {err}", file=sys.stderr, flush=True)
    except Exception:  # standard error closed or full: the exit code still says it
        pass
    return err.exit_code
