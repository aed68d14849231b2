"""The ``mstransform`` command: parse, call one API function per command, print.

``mstransform MODEL --stats stats.npz --alpha 0.2`` (no sub-command) hardens a model. Errors
print one line and exit with the code of their class (see :mod:`mstransform.core.errors`);
the console entry point (:mod:`mstransform.tools.entry`) turns Ctrl-C and SIGTERM into exit
130 from the first instruction on. Without ``--debug`` no traceback is ever printed.

Before a command runs, every path it was given is checked by its role, by the same check the API's
functions run first (:mod:`mstransform.tools.arguments`): an input that is a FIFO, a device or a
socket is refused unopened, one that cannot be read is reported in its class, and an output that is
an input, another output or a folder is refused. An ``OSError`` that still reaches the
top is reported in the class of the path it names (:func:`~mstransform.core.guards.classify_os_error`).

Standard output and error: a reader that closes the pipe (``mstransform sites m.onnx | head``)
stops the command quietly with status 141 (128 + SIGPIPE, what a shell reports for ``ls`` or
``git`` in the same place), temporary files removed; standard output on a full device is an
output error (exit 6) in one line.
"""
from __future__ import annotations

import errno
import os
import sys


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = None
    streams = _guard_streams()
    from mstransform.tools.logs import Output

    # notes and library records from the first import on: the flags are read again once parsed
    output = Output(quiet=bool({"-q", "--quiet"} & set(argv)), verbose=bool({"-v", "--verbose"} & set(argv)),
                    keep="--log-file" in argv)
    try:
        from mstransform.tools.cli_parser import COMMANDS, build_parser, with_default_command

        parser = build_parser()
        try:
            args = parser.parse_args(with_default_command(argv))
        except SystemExit:  # --help, --version: their text reaches the reader, or a closed pipe ends quietly
            sys.stdout.flush()
            raise
        output.levels(args.quiet, args.verbose)
        if args.command is None:
            parser.print_help()
            sys.stdout.flush()
            return 2
        command = COMMANDS[args.command]
        check_paths(args, command.models_out)
        if args.log_file is not None:
            output.log_to(args.log_file)
        code = command.run(args)  # the API and its libraries are imported here: not for --version or --help
        sys.stdout.flush()  # a closed pipe or a full device is found here, not at interpreter exit
        sys.stderr.flush()
        return code
    except Exception as err:  # every error becomes one line (MemoryError and RecursionError too)
        if debug:
            raise
        return _report(err, args, output)
    finally:
        output.close()
        _restore_streams(streams)


def _report(err: BaseException, args, output=None) -> int:
    """One line on standard error for ``err``; the exit code of its class."""
    from mstransform.core.errors import EXIT_BROKEN_PIPE, MstError, OutputError, one_line
    from mstransform.core.guards import classify_os_error

    if isinstance(err, StreamError) and err.errno == errno.EPIPE or isinstance(err, BrokenPipeError):
        _silence(err.name if isinstance(err, StreamError) else None)
        return EXIT_BROKEN_PIPE  # the reader has gone: nothing to say, as `ls | head` says nothing
    if isinstance(err, StreamError):  # /dev/full: an output error like any other write
        _silence(err.name)
        err = OutputError(str(err))
    if isinstance(err, OSError):
        err = classify_os_error(err, roles(args)) or err
    if isinstance(err, MstError):
        from mstransform.tools.cli_parser import flag_names

        _say(f"mstransform: error: {err.render(flag_names())}", output)
        return err.exit_code
    if isinstance(err, (MemoryError, RecursionError, OSError)):  # the machine, not the input: still one line
        _say(one_line(f"mstransform: error: {type(err).__name__}: {err} (run with --debug for details)"), output)
        return 1
    text = str(err).splitlines()[0] if str(err) else ""  # a bug: one line unless --debug
    _say(one_line(f"mstransform: error: internal error {type(err).__name__}: {text}"
                  " (a bug: please report it with the output of --debug)"), output)
    return 1


def path_flags(args) -> dict:
    """``dest -> value`` for every path flag given in ``args``, by the role table the API shares
    (:data:`~mstransform.tools.arguments.ROLES`)."""
    if args is None:
        return {}
    from mstransform.tools.arguments import ROLES

    return {dest: v for dest in ROLES if (v := getattr(args, dest, None)) is not None}


def roles(args) -> list:
    """``(path, error class, what)`` for every path flag of ``args``: what
    :func:`~mstransform.core.guards.classify_os_error` needs to name an OSError's class."""
    from mstransform.tools.arguments import ROLES

    return [(p, ROLES[dest].error, ROLES[dest].what) for dest, value in path_flags(args).items()
            for p in _as_list(value) if isinstance(p, (str, os.PathLike))]


def check_paths(args, models_out: tuple[str, ...] = ()) -> None:
    """Every path flag checked by its role before the command runs, by the check every API function
    runs first (:func:`~mstransform.tools.arguments.check_paths`): an input that is a FIFO, device or
    socket is refused unopened, one that cannot be read is an error of its class (missing inputs are
    left to the readers, which say it in their words); an output that ends in a separator, is an
    input (or a file an input model references) or another output is refused. ``models_out``: the
    command's outputs that are ONNX models (:attr:`~mstransform.tools.cli_parser.Command.models_out`)."""
    from mstransform.tools.arguments import check_paths as check

    check(path_flags(args), models_out=models_out)


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# -- standard streams ----------------------------------------------------------------------
class StreamError(Exception):
    """A write to standard output or error failed (``errno``; ``name``: "standard output")."""

    def __init__(self, err: OSError, name: str):
        super().__init__(f"cannot write {name}: {err.strerror or err}")
        self.errno, self.name = err.errno, name


class _Guarded:
    """A standard stream whose failed writes raise :class:`StreamError` naming the stream."""

    def __init__(self, stream, name: str):
        self._stream, self._name = stream, name

    def _call(self, method, *a):
        try:
            return getattr(self._stream, method)(*a)
        except OSError as e:
            raise StreamError(e, self._name) from None

    def write(self, text):
        return self._call("write", text)

    def writelines(self, lines):
        return self._call("writelines", lines)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, attr):
        return getattr(self._stream, attr)


def _guard_streams():
    saved = (sys.stdout, sys.stderr)
    if sys.stdout is not None and not isinstance(sys.stdout, _Guarded):
        sys.stdout = _Guarded(sys.stdout, "standard output")
    if sys.stderr is not None and not isinstance(sys.stderr, _Guarded):
        sys.stderr = _Guarded(sys.stderr, "standard error")
    return saved


def _restore_streams(saved) -> None:
    out, err = saved
    if isinstance(sys.stdout, _Guarded):
        sys.stdout = out
    if isinstance(sys.stderr, _Guarded):
        sys.stderr = err


def _silence(name: str | None) -> None:
    """After a failed write: point the stream's descriptor at /dev/null, so the text still buffered
    is dropped at exit instead of failing again ("Exception ignored ... BrokenPipeError")."""
    for stream_name, fd in (("standard output", 1), ("standard error", 2)):
        if name not in (None, stream_name) or (name is None and fd == 2):
            continue
        stream = sys.__stdout__ if fd == 1 else sys.__stderr__
        try:
            if stream is None or stream.fileno() != fd:
                continue
        except (OSError, ValueError, AttributeError):
            continue
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except OSError:
            pass


def _say(line: str, output=None) -> None:
    """The error line on standard error (and in the log file); a standard error that cannot be written stays
    silent."""
    if output is not None:
        output.to_file(line)
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, StreamError):
        _silence("standard error")


def main(argv: list[str] | None = None) -> int:
    """In-process entry (tests, embedding): leaves the caller's signal handlers alone. The console
    script and ``python -m mstransform`` go through :mod:`mstransform.tools.entry`."""
    from mstransform.core.errors import report_interrupt

    try:
        return run(argv)
    except KeyboardInterrupt as e:
        return report_interrupt(e)
