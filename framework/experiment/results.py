"""Crash-safe, resumable result rows and the files built from them.

Scheme: every process appends its rows to its own part file
``<output_dir>/parts/rows-rank<R>.jsonl``, one JSON object per line, flushed and fsynced per
row, after the row's images were written (each to a uniquely named temporary file, then
renamed). Nothing is ever rewritten in place, so a killed run loses at most the row it was
writing (a torn last line is ignored when read, and a newline is added before appending after
it). A failed write (full disk, I/O error) stops the process's writing; rank 0 reports it as
one line.

Identity: a row is keyed by ``(item_id, variant, setting, target_index, seed_index)``, where
``setting`` hashes the method setting and the run context (backbone, seed, image size), and it
records what it was computed from: ``item_sha256`` (the item's image bytes, prompts, mask and
fields) and the sha256 of every file it names (``input_sha256``, ``output_sha256``,
``reconstruction_sha256``). Image paths hold the setting and the seed, so no two rows name one
edit.

On start every process reads all part files: an ``ok`` row is reused when its item is unchanged
and its files are there with the recorded sha256 (:mod:`framework.experiment.resume`); every
other row of the configuration is computed (failed rows are retried). At the end rank 0 merges
the rows of the items as they are now (:func:`current_rows`) into ``results.csv`` (one row per
key: the last ``ok`` one, else the last failed one; sorted by item, method order, target, seed)
and ``summary.csv`` (mean and standard deviation of every metric per method and sweep point),
both written to a temporary file and renamed. Rows of removed or edited items stay in the part
files only. Part files of earlier runs with other world sizes are merged the same way, so 1 and
N processes can take turns on one output directory (one at a time: :mod:`framework.experiment.lock`).

Paths in the tables (``input_path``, ``output_path``) are relative to ``output_dir``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from framework.tables import (  # noqa: F401 (the format, re-exported)
    BASE_COLUMNS,
    FILE_COLUMNS,
    KEY_COLUMNS,
    OPTIONAL_COLUMNS,
    columns_for,
    csv_cell,
    merge_rows,
    parts_dir,
    read_rows,
    row_key,
)


def done_keys(output_dir: str | Path) -> set[tuple]:
    """Keys of the rows already written with status ok."""
    return {row_key(r) for r in read_rows(output_dir) if r.get("status") == "ok"}


class PartWriter:
    """Append-only JSONL rows of one process, flushed and fsynced per row."""

    def __init__(self, output_dir: str | Path, rank: int) -> None:
        self.path = parts_dir(output_dir) / f"rows-rank{rank}.jsonl"
        self.fh: Any = None  # opened on the first row: a rank with nothing to do writes nothing

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self.fh = open(self.path, "a", encoding="utf-8")
        if torn:  # the last run died mid-line: start on a fresh line
            self.fh.write("\n")
        return self.fh

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (a failed write raises OutputWriteError naming the part file)."""
        from framework.outputs import write_error

        try:
            fh = self.fh or self._open()
            fh.write(json.dumps(row, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            self.close_quietly()
            raise write_error(self.path, exc) from None

    def close_quietly(self) -> None:
        """Close after a failed write: the torn line stays (it is skipped when read, and the
        next append starts on a fresh line)."""
        fh, self.fh = self.fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def current_rows(rows: Iterable[dict[str, Any]], item_digests: dict[str, str]) -> list[dict[str, Any]]:
    """The rows computed from the items as they are now: the item still exists and the row's
    ``item_sha256`` is the item's digest (image bytes, prompts, mask, fields). Other rows (of a
    removed item, of an item since edited, or of a version that did not record the digest) stay
    in the part files as history and leave results.csv and summary.csv."""
    return [r for r in rows if r.get("item_sha256") and item_digests.get(str(r["item_id"])) == r["item_sha256"]]


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows atomically (a uniquely named temporary file, then a rename); missing values are empty."""
    from framework.outputs import atomic_write_bytes

    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: csv_cell(row.get(c)) for c in columns})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


