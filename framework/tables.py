"""The results table's format, shared by the runner (:mod:`framework.experiment`, which writes
it) and the comparison report (:mod:`framework.report`, which reads finished and unfinished
runs), which do not import each other: the columns, a row's identity, the per-process part
files (``<output_dir>/parts/rows-rank<R>.jsonl``) and how their rows merge into one row per key,
and how a value is written as a CSV cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BASE_COLUMNS = [
    "item_id",
    "method",
    "variant",
    "setting",
    "target_index",
    "target_prompt",
    "source_prompt",
    "seed_index",
    "seed",
    "num_steps",
    "skip",
    "status",
    "error",
    "input_path",
    "output_path",
    "item_sha256",
    "image_sha256",
    "input_sha256",
    "output_sha256",
]
#: columns some rows have: the variant's reconstruction (the edit with the source prompt),
#: saved when a metric computes it or ``logger.reconstructions: true``
OPTIONAL_COLUMNS = ["reconstruction_path", "reconstruction_sha256"]
#: each image column of a row and the column holding the sha256 of its file
FILE_COLUMNS = {
    "input_path": "input_sha256",
    "output_path": "output_sha256",
    "reconstruction_path": "reconstruction_sha256",
}
KEY_COLUMNS = ("item_id", "variant", "setting", "target_index", "seed_index")


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a row (what resume and de-duplication go by)."""
    return (
        str(row["item_id"]),
        str(row["variant"]),
        str(row["setting"]),
        int(row["target_index"]),
        int(row["seed_index"]),
    )


def parts_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "parts"


def read_rows(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of every part file, in file order (torn or malformed lines skipped)."""
    rows = []
    folder = parts_dir(output_dir)
    if not folder.is_dir():
        return rows
    for path in sorted(folder.glob("rows-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                    row_key(row)
                except (ValueError, KeyError, TypeError):
                    continue
                rows.append(row)
    return rows


def merge_rows(rows: Iterable[dict[str, Any]], order: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per key (last ok wins, else last failed), sorted by item, variant order, target, seed."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        old = best.get(key)
        if old is None or row.get("status") == "ok" or old.get("status") != "ok":
            best[key] = row
    order = order or {}

    def sort_key(row: dict[str, Any]) -> tuple:
        return (
            str(row["item_id"]),
            order.get(str(row["variant"]), len(order)),
            str(row["variant"]),
            str(row["setting"]),
            int(row["target_index"]),
            int(row["seed_index"]),
        )

    return sorted(best.values(), key=sort_key)


def columns_for(rows: Sequence[dict[str, Any]], sweep: Sequence[str], metric_columns: Sequence[str]) -> list[str]:
    """Base columns, then swept keys, then metric columns, then anything else seen (sorted)."""
    cols = list(BASE_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in r for r in rows)]
    for c in list(sweep) + list(metric_columns):
        if c not in cols:
            cols.append(c)
    rest = sorted({k for r in rows for k in r} - set(cols))
    return cols + rest


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: None and NaN empty, dicts and lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
