"""Error classes with one exit code per class of problem.

Every error the command line reports is one of these: it prints as a single line
(``mstransform: error: ...``) naming the problem and what to do, and the process exits
with the class's code. Anything else is a bug and prints a traceback.
"""
from __future__ import annotations


class MstError(Exception):
    """Base class; ``exit_code`` is what the CLI returns.

    ``param`` names the API parameter at fault (``alpha``, ``batch_size``, ...). The library
    speaks of parameters; the command line maps them to its flags (:meth:`render`).
    """

    exit_code = 1

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param
        self.detail = message

    def __str__(self) -> str:
        return f"{self.param} {self.detail}" if self.param else self.detail

    def render(self, flags: dict[str, str]) -> str:
        """The message with the parameter replaced by the flag that sets it (``alpha`` -> ``--alpha``)."""
        if not self.param:
            return self.detail
        return f"{flags.get(self.param, self.param)} {self.detail}"


class UsageError(MstError):
    """Bad command-line values (negative alpha, unknown site in an override, ...)."""

    exit_code = 2


class ModelError(MstError):
    """The model cannot be read or has nothing to harden (not ONNX, missing external data, no sites)."""

    exit_code = 3


class StatsError(MstError):
    """The statistics file is unreadable or does not fit the model."""

    exit_code = 4


class DataError(MstError):
    """Calibration or evaluation data is unreadable or does not fit the model's inputs."""

    exit_code = 5


class OutputError(MstError):
    """An output cannot be written (equals an input, missing or read-only folder, disk full)."""

    exit_code = 6


class VerificationError(MstError):
    """The written model failed a post-write check (checker, shape inference, ORT load, numerics)."""

    exit_code = 7


class DependencyError(MstError):
    """An optional dependency (TensorRT, torch, ...) is not installed."""

    exit_code = 8


class CompatibilityError(MstError):
    """A static deployment check (``check-trt``) found a blocking problem."""

    exit_code = 9


class Interrupted(MstError):
    """SIGINT/SIGTERM arrived; no partial output was left."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that no ``except Exception`` on the way can swallow it."""

