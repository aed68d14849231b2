"""The console entry point. Its first act is to install the signal handlers, before any import
that can take time (numpy, onnx, onnx_ir -> sympy, torch), so Ctrl-C or SIGTERM at start-up
gives the same one line and exit 130 as in the middle of a run.

Its second is to quiet the libraries underneath at their source, before they are imported:
ONNX Runtime's telemetry is switched off (``ORT_DISABLE_TELEMETRY=1``), so a read-only or
missing HOME no longer prints "Failed to persist telemetry device ID" and nothing is written
under ``~/.cache/Microsoft``. A value the user set is kept. (OpenVINO's runtime, the only part
of OpenVINO used here, has no telemetry: only its conversion tools do.)

SIGPIPE stays ignored, as Python sets it: a closed pipe surfaces as an error that the command
line turns into a quiet exit 141 after the temporary files are removed (:mod:`~.cli`), where
dying on the signal would leave them behind.
"""
import os
import signal
import sys

from mstransform.core.errors import Terminated, report_interrupt  # numpy-free, like everything imported so far


def _raise(signum, frame):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


# Environment read by the libraries at import or first use; setdefault keeps the user's choice.
QUIET_ENV = {"ORT_DISABLE_TELEMETRY": "1"}


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        from mstransform.tools.cli import run

        code = run(argv)
    except KeyboardInterrupt as e:
        code = report_interrupt(e)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done or reported: exit with its code
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
