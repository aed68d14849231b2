"""``python -m mstransform ...``: the console entry point (signals first, then the command line)."""
import sys

from mstransform.tools.entry import main

sys.exit(main())
