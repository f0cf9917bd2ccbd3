"""One run at a time per output folder.

The process that starts a run (its rank 0) holds an exclusive lock (``fcntl.flock``) on
``<output_dir>/.run.lock`` from before it looks at the folder's earlier run (and before the
trainer exists) until results.csv and summary.csv are written. The
kernel drops the lock when the process ends, however it ends, so the lock of a killed run never
needs cleaning: the file stays and the next run locks it again. The lock file holds who holds it
(pid, host, since when), which a refused run prints.

The other processes of the run do not lock: they belong to the run of rank 0. Rank 0 puts a
random token into the lock file and into its environment (``EDITFRIENDLY_RUN_TOKEN``) before the
trainer starts the other processes of this machine, which inherit it; such a process joins only a
folder whose lock is held with its token by another process (:func:`join_run`). Processes that a
cluster launcher started as rank > 0 carry no token and take no lock
(:func:`framework.experiment.run.claim_folder`); they cannot run alone (they wait for rank 0 to
start the process group).

Where ``fcntl`` or ``flock`` is not available (Windows, some network file systems) the run goes
on unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from framework.errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
TOKEN_ENV = "EDITFRIENDLY_RUN_TOKEN"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FolderInUseError(InputError):
    """Another run holds the output folder's lock."""


def read_holder(folder: str | Path) -> dict[str, Any]:
    """What the lock file of ``folder`` says about its holder ({} when nothing readable)."""
    try:
        data = json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that did not record itself"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"


def _try_lock(fd: int, path: Path) -> bool | None:
    """True: locked; False: held by another process; None: locks are not supported here."""
    if fcntl is None:
        log.warning("cannot lock %s (no fcntl on this system): runs into this folder are not kept apart", path)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # ENOLCK, EOPNOTSUPP, ...: a file system without flock
        log.warning("cannot lock %s (%s): runs into this folder are not kept apart", path, exc.strerror or exc)
        return None


class RunLock:
    """The exclusive lock of one run on its output folder (held by rank 0); a context manager."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.token = ""
        self._old_env: str | None = None

    def acquire(self) -> RunLock:
        """Lock the folder, or raise :class:`FolderInUseError` naming the holder (exit 2)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        got = _try_lock(fd, self.path)
        if got is False:
            os.close(fd)
            holder = read_holder(self.folder)
            raise FolderInUseError(
                f"output_dir {self.folder} is in use by another run ({describe_holder(holder)}); wait for it "
                "to finish or choose another output_dir"
            )
        self.fd = fd
        self.token = f"{os.getpid()}-{uuid.uuid4().hex}"
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "token": self.token,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as exc:  # a full disk: the lock holds all the same, without its holder's name
            log.warning("could not record the run in %s: %s", self.path, exc.strerror or exc)
        self._old_env = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = self.token  # inherited by the processes the trainer starts
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if self._old_env is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = self._old_env
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def join_run(folder: str | Path) -> None:
    """For a process other than rank 0: check that the folder is locked by the run that started
    this process (see the module docstring); raise :class:`FolderInUseError` otherwise."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return  # started by a cluster launcher: it belongs to whichever run its rank 0 is
    folder = Path(folder)
    holder = read_holder(folder)
    if holder.get("token") == token and holder.get("pid") != os.getpid():  # not the holder itself
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR)
        except OSError:
            fd = None
        if fd is not None:
            got = _try_lock(fd, folder / LOCK_NAME)
            os.close(fd)  # closing drops a lock this process just took
            if got is True:
                raise FolderInUseError(f"output_dir {folder}: the run that started this process has ended")
        return
    raise FolderInUseError(
        f"output_dir {folder} is in use by another run ({describe_holder(holder)}), not by the run that started "
        "this process"
    )
