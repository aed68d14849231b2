"""The ``mstransform`` command: parse, call one API function per command, print.

``mstransform MODEL --stats stats.npz --alpha 0.2`` (no sub-command) hardens a model. Errors
print one line and exit with the code of their class (see :mod:`mstransform.core.errors`);
the console entry point (:mod:`mstransform.tools.entry`) turns Ctrl-C and SIGTERM into exit
130 from the first instruction on. Without ``--debug`` no traceback is ever printed.
"""
from __future__ import annotations

import logging
import sys
import warnings


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        from mstransform.core.errors import MstError
        from mstransform.tools.cli_parser import FLAGS, build_parser, with_default_command
        from mstransform.tools.commands import COMMANDS

        if not debug:
            warnings.simplefilter("ignore")  # library chatter is not the user's error
            logging.disable(logging.WARNING)
        parser = build_parser()
        args = parser.parse_args(with_default_command(argv))
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except MstError as err:
        if debug:
            raise
        print(f"mstransform: error: {err.render(FLAGS)}", file=sys.stderr)
        return err.exit_code
    except (MemoryError, RecursionError, OSError) as err:  # the machine, not the input: still one line
        if debug:
            raise
        print(f"mstransform: error: {type(err).__name__}: {err} (run with --debug for details)", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: one line unless --debug
        if debug:
            raise
        print(f"mstransform: error: internal error {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
              " (a bug: please report it with the output of --debug)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """In-process entry (tests, embedding): leaves the caller's signal handlers alone. The console
    script and ``python -m mstransform.tools.cli`` go through :mod:`mstransform.tools.entry`."""
    from mstransform.tools.entry import report_interrupt

    try:
        return run(argv)
    except KeyboardInterrupt as e:
        return report_interrupt(e)


if __name__ == "__main__":
    from mstransform.tools.entry import main as entry_main

    sys.exit(entry_main())
