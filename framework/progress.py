"""Progress bars for the denoising loops, switched on per call by the CLI.

Library calls stay silent by default; ``with progress_bars(True): ...`` shows a tqdm bar on
stderr for every inversion and editing loop run inside the block.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

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
    """Wrap a loop over denoising steps in a progress bar when bars are enabled."""
    if not _enabled.get():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, unit="step", dynamic_ncols=True)
