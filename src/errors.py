"""UserError: the base of every error a user can fix by changing a flag, a file or a setting.

The library raises it (or a subclass: DatasetError for a dataset file, WriteError for a file it
cannot write, FolderInUse for an output folder another run holds), with a message that names the
flag, file or row and says what to change. An entry point prints such an error as one line, without
a traceback, and exits with status 2 (src/cli/errors.py); anything else is a bug and keeps its
traceback. It is a ValueError, so code that checks values may raise it where a ValueError is expected.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user asked for cannot be done as asked; the message says what to change."""
