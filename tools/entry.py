"""The console entry point. Its first act is to install the signal handlers, before any import
that can take time (numpy, onnx, onnx_ir -> sympy, torch), so Ctrl-C or SIGTERM at start-up
gives the same one line and exit 130 as in the middle of a run."""
import signal
import sys

from mstransform.core.errors import Interrupted, Terminated  # numpy-free, like everything imported so far


def _raise(signum, frame):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)
    try:
        from mstransform.tools.cli import run

        code = run(argv)
    except KeyboardInterrupt as e:
        code = report_interrupt(e)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done or reported: exit with its code
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


def report_interrupt(e: KeyboardInterrupt) -> int:
    """One line for Ctrl-C or SIGTERM; atomic outputs have already removed their temporary files."""
    what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    err = Interrupted(f"{what}; no partial output was left")
    print(f"mstransform: error: {err}", file=sys.stderr, flush=True)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
