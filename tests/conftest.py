"""pytest's fixtures for every test: they live in ``tests/support/helpers.py`` with the shared helpers
(``tests/support`` is on ``sys.path`` through pyproject.toml, so test files import ``helpers``, ``zoo``
and the real-model tier by name)."""
from helpers import *  # noqa: F401,F403 -- the fixtures
