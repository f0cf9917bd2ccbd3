"""File and folder names made from free text (prompts, method names, item ids, column names).

One function, :func:`slug`, with one ``style`` per kind of name. The styles differ on real
inputs (``"Cat"``, ``"ef_text__skip-36"``, ``"clip_score"``), and the names they give are
already on disk in users' result folders, so each style keeps its exact strings:

======== ===================================================== ================================
style    what it names                                          ``slug(" A cat_2.0 ")``
======== ===================================================== ================================
prompt   edited images (``editfriendly edit``/``run``, demo)    ``a-cat-2-0``
path     a run's variant folders and item-id path components    ``A-cat_2.0``
report   files of a comparison report (grids, scatters)         ``A_cat_2.0``
======== ===================================================== ================================
"""

from __future__ import annotations

import re
from typing import Literal

SlugStyle = Literal["prompt", "path", "report"]

#: the longest name each style gives by default (None: no limit)
DEFAULT_LIMITS: dict[str, int | None] = {"prompt": 40, "path": None, "report": 80}


def slug(text: str, limit: int | None = None, *, style: SlugStyle = "prompt") -> str:
    """A file-name-safe form of ``text``; never empty.

    - ``prompt``: lower case, every run of characters other than ``a-z0-9`` becomes one ``-``;
      at most ``limit`` (default 40) characters, no ``-`` at either end; ``empty`` when nothing
      is left.
    - ``path``: case kept, letters, digits and ``._=-`` kept, other runs become ``-``; no ``-``
      or ``.`` at either end and ``..`` collapsed to ``.`` (never a parent folder); ``x`` when
      nothing is left. No limit unless given.
    - ``report``: case kept, letters, digits and ``_.-`` kept, other runs become ``_``; no ``_``
      at either end; at most ``limit`` (default 80) characters; ``item`` when nothing is left.
    """
    if style not in DEFAULT_LIMITS:
        raise ValueError(f"unknown slug style {style!r}; use one of: {', '.join(DEFAULT_LIMITS)}")
    if limit is None:
        limit = DEFAULT_LIMITS[style]
    if style == "prompt":
        s = re.sub(r"[^a-zA-Z0-9]+", "-", text.strip().lower()).strip("-")
        return s[:limit].rstrip("-") or "empty"
    if style == "path":
        s = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-.")
        s = s.replace("..", ".")
        if limit is not None:
            s = s[:limit]
        return s or "x"
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
    if limit is not None:
        s = s[:limit]
    return s or "item"
