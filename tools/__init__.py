"""The API users import and the command line over it (the top room)."""
