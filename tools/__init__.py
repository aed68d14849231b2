"""Command line and the Python API behind it."""
