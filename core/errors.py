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

    def __init_subclass__(cls, exit_code: int | None = None, **kw):
        super().__init_subclass__(**kw)
        if exit_code is not None:
            cls.exit_code = exit_code

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

