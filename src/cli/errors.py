"""User errors: a bad flag value, a missing file or key, a refused resume.

An entry point runs its `main` through `run_main`: a user error prints one line naming what to fix
and exits with status 2 (argparse's status for a bad command line), without a traceback; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from src.data.rows import DatasetError
from src.models.images import ImageLoadError


class UserError(ValueError):
    """Something the user asked for cannot be done as asked; the message says what to change."""


USER_ERRORS = (UserError, DatasetError, ImageLoadError)
"""Dataset files and images are the user's: their errors name the file and row to fix."""


def run_main(main: Callable[[], object]) -> None:
    """Call `main()`; a user error becomes `error: MESSAGE` on stderr and exit status 2."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
