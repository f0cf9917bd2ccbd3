"""What a run into an existing output folder may reuse, and what it must compute.

A row is identified by its key ``(item_id, variant, setting, target_index, seed_index)`` *and*
by what it was computed from: ``setting`` is a hash of the method setting and the run context
(backbone, run seed, image size), and ``item_sha256`` a hash of the item's content (the bytes of
its image, its source and target prompts, its mask and its other fields). An ``ok`` row is
reused only when

1. its ``item_sha256`` is the digest of the item as the dataset lists it now, and
2. every file it names (``input_path``, ``output_path``, ``reconstruction_path``) exists and
   has the sha256 recorded beside it (``input_sha256``, ``output_sha256``,
   ``reconstruction_sha256``).

Every other row of the configuration is computed: new rows, failed rows (retried), rows whose
inputs changed and rows whose files are missing or damaged. :class:`ResumePlan` counts them and
says why, for the message a resumed run prints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from framework.dataset import Item
from framework.experiment.plan import Variant
from framework.experiment.results import FILE_COLUMNS, row_key

#: the reasons a row is computed again, in the order they are reported
REASONS = ("inputs changed", "output missing or damaged", "failed before")


@dataclass(frozen=True)
class ItemDigest:
    """What an item's rows are computed from, hashed."""

    item: str  # sha256 of everything below (the ``item_sha256`` column)
    image: str  # sha256 of the image file's bytes (``image_sha256``); "" when it cannot be read


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def item_digest(item: Item) -> ItemDigest:
    """Hash the content an item's rows depend on: image bytes, prompts, mask, other fields.

    A missing or unreadable image or mask is hashed as the error it raises (the item's rows
    fail, and are retried anyway); moving an image file without changing it changes nothing."""
    try:
        image = file_sha256(item.image_path)
        image_part = image
    except OSError as exc:
        image, image_part = "", f"unreadable: {exc.strerror or exc}"
    mask_part: Any = None
    if item.mask is not None:
        try:
            arr = np.ascontiguousarray(np.asarray(item.mask()))
            mask_part = [list(arr.shape), str(arr.dtype), hashlib.sha256(arr.tobytes()).hexdigest()]
        except Exception as exc:  # a bad mask fails the item when it runs
            mask_part = f"unreadable: {type(exc).__name__}: {exc}"
    blob = json.dumps(
        {
            "image": image_part,
            "source_prompt": item.source_prompt,
            "target_prompts": list(item.target_prompts),
            "mask": mask_part,
            "fields": item.extras,
        },
        sort_keys=True,
        default=str,
    )
    return ItemDigest(hashlib.sha256(blob.encode("utf-8")).hexdigest(), image)


def item_digests(items: Iterable[Item]) -> dict[str, ItemDigest]:
    return {item.id: item_digest(item) for item in items}


@dataclass
class ResumePlan:
    """The rows of one configuration over some items: reused (``done``) or to compute."""

    done: set[tuple] = field(default_factory=set)  # keys of valid ok rows: not computed again
    new: int = 0  # rows never written before
    #: reason -> item id -> [rows, what] for the rows computed again
    again: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    @property
    def reused(self) -> int:
        return len(self.done)

    @property
    def recomputed(self) -> int:
        return sum(n for items in self.again.values() for n, _ in items.values())

    @property
    def todo(self) -> int:
        return self.new + self.recomputed

    def add(self, reason: str, item_id: str, what: str) -> None:
        entry = self.again.setdefault(reason, {}).setdefault(item_id, [0, what])
        entry[0] += 1

    def describe(self, limit: int = 3) -> str:
        """``recomputed 3 rows: inputs changed (item cat_1: target prompt); ...`` or ``""``."""
        if not self.again:
            return ""
        parts = []
        for reason in REASONS:
            items = self.again.get(reason)
            if not items:
                continue
            shown = [f"item {item_id}" + (f": {what}" if what else "") for item_id, (_, what) in items.items()]
            text = ", ".join(shown[:limit])
            if len(shown) > limit:
                text += f" and {len(shown) - limit} more items"
            parts.append(f"{reason} ({text})")
        n = self.recomputed
        return f"recomputed {n} row{'s' if n != 1 else ''}: " + "; ".join(parts)


def _what_changed(old: Sequence[dict[str, Any]], item: Item, digest: ItemDigest) -> str:
    """What differs between an item now and the rows last computed from it, in words."""
    if not all(r.get("item_sha256") for r in old):
        return "inputs not recorded by the version that wrote the rows"
    changed = []
    if any(r.get("image_sha256") != digest.image for r in old):
        changed.append("image")
    if any(r.get("source_prompt") != item.source_prompt for r in old):
        changed.append("source prompt")
    targets = {int(r["target_index"]): r.get("target_prompt") for r in old}
    if any(k >= len(item.target_prompts) or p != item.target_prompts[k] for k, p in targets.items()):
        changed.append("target prompt")
    elif len(targets) < len(item.target_prompts):
        changed.append("target prompts added")
    return " and ".join(changed) or "mask or other fields"


class FileCheck:
    """sha256 of the files under a folder, each read once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[str, tuple[str, int] | None] = {}

    def problem(self, rel: str, want: Any) -> str:
        """Why the file ``rel`` is not the one recorded (``""`` when it is)."""
        if rel not in self.cache:
            try:
                path = self.folder / rel
                self.cache[rel] = (file_sha256(path), path.stat().st_size)
            except OSError:
                self.cache[rel] = None
        got = self.cache[rel]
        if got is None:
            return "missing"
        if got[1] == 0:
            return "empty"
        if not want:
            return "without a recorded sha256"
        return "" if got[0] == want else "changed"


def plan_resume(
    output_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    variants: Sequence[Variant],
    items: Sequence[Item],
    digests: dict[str, ItemDigest],
) -> ResumePlan:
    """Sort the rows of ``variants`` × ``items`` into reused and to compute (module docstring).

    ``rows``: every row of the part files, in file order (the last one of a key counts)."""
    last: dict[tuple, dict[str, Any]] = {}  # key -> the last row (any status, any inputs)
    last_ok: dict[tuple, dict[str, Any]] = {}  # key -> the last ok row (any inputs)
    last_current: dict[tuple, dict[str, Any]] = {}  # key -> the last ok row of the current inputs
    for r in rows:
        key = row_key(r)
        last[key] = r
        if r.get("status") == "ok":
            last_ok[key] = r
            d = digests.get(key[0])
            if d is not None and r.get("item_sha256") == d.item:
                last_current[key] = r
    files = FileCheck(Path(output_dir))
    plan = ResumePlan()
    ok_by_item: dict[str, list[dict[str, Any]]] = {}
    for key, r in last_ok.items():
        ok_by_item.setdefault(key[0], []).append(r)
    for item in items:
        digest = digests[item.id]
        old_rows = ok_by_item.get(item.id, [])
        for v in variants:
            for s in range(v.seeds):
                for k in range(len(item.target_prompts)):
                    key = (item.id, v.label, v.setting, k, s)
                    row = last_current.get(key)
                    if row is not None:
                        bad = [
                            f"{row[path_col]} {why}"
                            for path_col, sha_col in FILE_COLUMNS.items()
                            if row.get(path_col) and (why := files.problem(str(row[path_col]), row.get(sha_col)))
                        ]
                        if not bad:
                            plan.done.add(key)
                        else:
                            plan.add("output missing or damaged", item.id, bad[0])
                    elif key in last_ok:
                        plan.add("inputs changed", item.id, _what_changed(old_rows, item, digest))
                    elif key in last:
                        plan.add("failed before", item.id, "")
                    else:
                        plan.new += 1
    return plan
