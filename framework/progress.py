"""Progress bars for the denoising loops, switched on per call by the CLI.

Library calls stay silent by default; ``with progress_bars(True): ...`` shows a tqdm bar on
stderr for every inversion and editing loop run inside the block. ``with time_limit(seconds):``
stops those loops at their next step once the time is up (the demo's per-request limit).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

from framework.errors import EditFriendlyError

T = TypeVar("T")
_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("editfriendly_progress", default=False)


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Show (or hide) step progress bars inside the block."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def interactive(*streams: object) -> bool:
    """Whether every stream (default: stderr) is a terminal: progress bars are drawn only there,
    since in a log file their redraws are noise (carriage returns, cursor-up escape codes)."""
    for stream in streams or (sys.stderr,):
        isatty = getattr(stream, "isatty", None)
        try:
            if not (callable(isatty) and isatty()):
                return False
        except (OSError, ValueError):  # a closed stream
            return False
    return True


def steps(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap a loop over denoising steps in a progress bar when bars are enabled, and in a check
    of the time limit when one is set."""
    if _enabled.get():
        iterable = tqdm(iterable, desc=desc, total=total, leave=False, unit="step", dynamic_ncols=True)
    if _deadline.get() is not None:
        return _Timed(iterable)  # type: ignore[return-value]
    return iterable


# ---------------------------------------------------------------------------- time limits
class TimeLimitExceeded(EditFriendlyError):
    """A block run under :func:`time_limit` went on past its limit and was stopped."""


_deadline: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "editfriendly_deadline", default=None
)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Stop the work inside the block once ``seconds`` have passed (None: no limit).

    The denoising loops check the clock at every step (:func:`steps`) and raise
    :class:`TimeLimitExceeded`; other code may call :func:`check_time` between its phases.
    """
    token = _deadline.set(None if seconds is None else (time.monotonic() + float(seconds), float(seconds)))
    try:
        yield
    finally:
        _deadline.reset(token)


def check_time() -> None:
    """Raise :class:`TimeLimitExceeded` if the block's time limit has passed."""
    limit = _deadline.get()
    if limit is not None and time.monotonic() > limit[0]:
        raise TimeLimitExceeded(f"stopped after the time limit of {limit[1]:g} s")


class _Timed:
    """A loop (a range or a tqdm bar) that checks the time limit before each step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Any]:
        for item in self.inner:
            check_time()
            yield item

    def update(self, n: int = 1) -> None:  # bars advanced by hand
        check_time()
        if hasattr(self.inner, "update"):
            self.inner.update(n)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()
