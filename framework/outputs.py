"""Output folders and files: folders checked before any model loads and created only when there
is something to write; files written atomically under unique temporary names.

The folder helpers raise :class:`~framework.errors.InputError` (one ``error:`` line, exit 2) instead of an
``OSError`` traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from framework.errors import EditFriendlyError, InputError


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


# ----------------------------------------------------------------------------- atomic writes

#: errors of the disk rather than of the input: a full disk or quota, a file too large, an I/O
#: error, a read-only file system
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO", "EROFS") if hasattr(errno, name)
)

#: the suffix of every temporary file written next to its final name (``.<name>.<unique>.tmp``)
TEMP_SUFFIX = ".tmp"


class OutputWriteError(EditFriendlyError, OSError):
    """A file could not be written (disk full, file too large, I/O error, read-only file system).

    Printed as one ``error:`` line naming the path and the errno; the exit status is 1 (the
    input was fine; the machine was not)."""

    exit_status = 1

    def __init__(self, path: str | Path, exc: OSError) -> None:
        self.path = str(path)
        self.errno_name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        reason = exc.strerror or str(exc)
        super().__init__(f"cannot write {self.path}: {reason} ({self.errno_name})")

    @classmethod
    def from_message(cls, message: str) -> OutputWriteError:
        """The error another process reported (its message as it printed it)."""
        err = cls.__new__(cls)
        Exception.__init__(err, message)
        err.path, err.errno_name = "", ""
        return err


def write_error(path: str | Path, exc: OSError) -> OutputWriteError:
    """``exc`` (raised while writing ``path``) as an :class:`OutputWriteError` naming the file."""
    if isinstance(exc, OutputWriteError):
        return exc
    return OutputWriteError(getattr(exc, "filename", None) or path, exc)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a uniquely named temporary file beside it
    (``.<name>.<pid>.<random>.tmp``), flushed and fsynced, then renamed over ``path``. Readers see the
    old file or the new one, never a part; two writers never share a temporary file; a failed
    write removes its temporary file and raises :class:`OutputWriteError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
        # O_EXCL: never anyone else's file; mode 0o666 less the umask, as open() gives
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise write_error(path, exc) from None


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write_bytes`' temporary names (or the fixed
    ``results.csv.tmp``/``summary.csv.tmp`` of older versions)."""
    return (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or name in ("results.csv.tmp", "summary.csv.tmp")


def remove_temp_files(folder: str | Path, subfolders: tuple[str, ...] = ("images", "parts")) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (its top level and, at any
    depth, ``subfolders``); returns what was removed. Call it only while no writer runs there."""
    folder = Path(folder)
    removed: list[Path] = []
    candidates = [p for p in folder.glob("*") if p.is_file()] if folder.is_dir() else []
    for sub in subfolders:
        if (folder / sub).is_dir():
            candidates += [p for p in (folder / sub).rglob(".*" + TEMP_SUFFIX) if p.is_file()]
    for p in candidates:
        if is_temp_name(p.name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed
