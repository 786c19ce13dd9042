"""User errors: a bad flag value, a missing file or key, a refused resume, a damaged run file.

An entry point runs its `main` through `run_main`: a user error prints one line naming what to fix
and exits with status 2 (argparse's status for a bad command line), without a traceback; a run
stopped by a signal at a safe point (src/run_guard.py) prints what it kept and exits 128 + the
signal's number (130 for SIGINT, 143 for SIGTERM), as a process the signal ended would; Ctrl-C
anywhere else prints one line and exits 130. A full disk is a user error wherever the write happened
(the project's own writes raise a WriteError naming the file; a library's, an OSError ENOSPC). Anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import sys
from typing import Callable

from src.errors import UserError
from src.grpo.checkpoint import CheckpointError
from src.grpo.run_log import RunLogError
from src.models.inputs import ImageLoadError
from src.run_guard import Interrupted

USER_ERRORS = (UserError, ImageLoadError, CheckpointError, RunLogError)
"""Each names what to fix: UserError and its subclasses (a flag, a dataset file or row, an output folder
another run holds, a full disk: src/errors.py), images, damaged checkpoints and run logs."""


def run_main(main: Callable[[], object]) -> None:
    """Call `main()`; a user error becomes `error: MESSAGE` on stderr and exit status 2."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a full disk where no WriteError names the file (a library's own write)
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        what = f"cannot write {error.filename}" if error.filename else "a write failed"
        print(f"error: disk full: {what} ({error.strerror}); files already written are kept: free some space and "
              "run again", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(stop.exit_status)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped at once; files already written are kept", file=sys.stderr)
        sys.exit(130)
