"""Progress bars for the denoising loops, switched on per call by the CLI.

Library calls stay silent by default; ``with progress_bars(True): ...`` shows a tqdm bar on
stderr for every inversion and editing loop run inside the block.
"""

from __future__ import annotations

import contextlib
import contextvars
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


def steps(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap a loop over denoising steps in a progress bar when bars are enabled."""
    if not _enabled.get():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, unit="step", dynamic_ncols=True)
