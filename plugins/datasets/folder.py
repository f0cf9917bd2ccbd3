"""A folder of images with a captions file.

The captions file (default ``captions.yaml`` in the folder) maps each image file name, relative
to the folder, to its prompts:

    cat.png:
      source: a cat sitting on a mat
      targets: [a dog sitting on a mat, a lion sitting on a mat]
    sub/dog.jpg: {source: a dog, targets: a cat}

``captions.jsonl`` (one ``{"image": ..., "source": ..., "targets": [...]}`` per line) and
``captions.csv`` (columns ``image,source,target``; several rows of one image give several
targets) are read too. Images without captions are ignored (listed with a warning); a
captioned image that is missing fails only its own rows. The item id is the image path
relative to the folder, without extension.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.config import read_yaml_data
from framework.dataset import DatasetPlugin, Item, as_prompt_list, check_unique
from framework.errors import ConfigError
from framework.registry import DATASETS

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
CAPTION_FILES = ("captions.yaml", "captions.yml", "captions.jsonl", "captions.csv")


@dataclass
class FolderOptions:
    """Options of the ``folder`` dataset."""

    path: str = ""  # the image folder
    captions: str = ""  # the captions file (default: the first of captions.yaml/.yml/.jsonl/.csv in the folder)
    limit: int = 0  # use only the first ``limit`` images in sorted order (0: all)


def read_captions(path: Path) -> dict[str, dict[str, Any]]:
    """captions file -> {relative image path: {"source": str, "targets": [str, ...]}}."""
    out: dict[str, dict[str, Any]] = {}
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            raw = read_yaml_data(path)  # captions are text as written: nothing is interpolated
            if not isinstance(raw, dict):
                raise ConfigError(f"{path} must map image file names to {{source, targets}}")
            for name, value in raw.items():
                if not isinstance(value, dict) or "source" not in value or "targets" not in value:
                    raise ConfigError(f"{path}: entry {name!r} needs 'source' and 'targets', got {value!r}")
                out[str(name)] = {
                    "source": str(value["source"]),
                    "targets": as_prompt_list(value["targets"], f"{path}: {name} targets"),
                }
        elif suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                value = json.loads(line)
                if not all(k in value for k in ("image", "source", "targets")):
                    raise ConfigError(f"{path} line {n} needs image, source and targets")
                out[str(value["image"])] = {
                    "source": str(value["source"]),
                    "targets": as_prompt_list(value["targets"], f"{path} line {n} targets"),
                }
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                for n, row in enumerate(csv.DictReader(fh), 2):
                    if not row.get("image") or row.get("source") is None or not row.get("target"):
                        raise ConfigError(f"{path} line {n} needs the columns image, source, target")
                    entry = out.setdefault(row["image"], {"source": row["source"], "targets": []})
                    entry["targets"].append(row["target"])
        else:
            raise ConfigError(f"captions file {path} must be .yaml, .yml, .jsonl or .csv")
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"could not read captions file {path}: {exc}") from None
    return out


@DATASETS.register("folder")
class FolderDataset(DatasetPlugin):
    """Images in a folder, prompts in a captions file beside them."""

    Options = FolderOptions

    def items(self) -> list[Item]:
        root = Path(self.options.path)
        if not self.options.path or not root.is_dir():
            raise ConfigError(f"the folder dataset needs data.path to be an existing folder, got {self.options.path!r}")
        if self.options.captions:
            captions = Path(self.options.captions)
            if not captions.is_absolute() and not captions.exists():
                captions = root / captions
        else:
            found = [root / name for name in CAPTION_FILES if (root / name).exists()]
            if not found:
                raise ConfigError(f"no captions file in {root}; expected one of {', '.join(CAPTION_FILES)}")
            captions = found[0]
        if not captions.exists():
            raise ConfigError(f"captions file not found: {captions}")
        table = read_captions(captions)
        on_disk = {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        }
        uncaptioned = sorted(on_disk - set(table))
        if uncaptioned:
            log.warning("%d images in %s have no captions and are skipped: %s", len(uncaptioned), root, uncaptioned[:5])
        items = [
            Item(
                id=str(Path(name).with_suffix("")).replace("\\", "/"),
                image_path=str(root / name),
                source_prompt=value["source"],
                target_prompts=value["targets"],
            )
            for name, value in sorted(table.items())
        ]
        if self.options.limit > 0:
            items = items[: self.options.limit]
        return check_unique(items, str(captions))
