"""Checks on the files of a checkpoint folder before they are opened: what a bad path is, in one phrase.

Used by config.py and weights.py, below everything else (it imports nothing of npbert).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def regular_file_problem(path: Path, what: str) -> str:
    """Why `path` cannot be read as a regular file, in a phrase: missing, a dangling or looping link, a
    directory, a FIFO or device (opening a FIFO would block; /dev/zero never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{what} not found" + (" (a symbolic link to a missing file)" if path.is_symlink() else "")
    except OSError as e:  # ELOOP: a symbolic link loop; EACCES
        return f"{what} cannot be read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return f"{what} is a directory, not a file"
    if not stat.S_ISREG(mode):
        return f"{what} is not a regular file (a FIFO, socket or device)"
    return ""
