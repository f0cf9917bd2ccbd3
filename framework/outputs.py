"""Output folders: checked before any model loads, created only when there is something to write.

Both raise :class:`~framework.errors.InputError` (one ``error:`` line, exit 2) instead of an
``OSError`` traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from framework.errors import InputError


def check_output_dir(path: Path, what: str = "output folder") -> None:
    """Fail early (before any model loads) when ``path`` cannot be created or written to.

    Creates nothing: the folder is made only when there is something to write into it.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"cannot create the {what} {path}: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot create the {what} {path}: {probe} is not writable")


def make_output_dir(path: Path, what: str = "output folder") -> Path:
    """``mkdir -p`` with one clear error instead of an OSError traceback."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the {what} {path}: {exc.strerror or exc}") from None
    return Path(path)
