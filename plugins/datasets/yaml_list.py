"""The reference code's YAML list of edits (its ``test.yaml`` shape).

    - init_img: images/cat.png          # relative to the YAML file
      source_prompt: a cat sitting on a mat
      target_prompts: [a dog sitting on a mat, a lion sitting on a mat]
      id: cat                           # optional; default: the image path without extension

Any other keys of an entry are kept as the item's extras. Every value is taken as written:
``${...}`` in a prompt is text, not an interpolation.

Where ``init_img`` is looked for, first match wins:

1. as written, when it is an absolute path that exists;
2. relative to the YAML file's folder (our format, above);
3. the authors' rule: their script prepends ``.`` to ``init_img`` and opens it from the working
   directory, so ``/example_images/horse_mud.jpg`` is ``./example_images/horse_mud.jpg`` there;
4. the same path with its leading ``/`` dropped, relative to the YAML file's folder (the
   authors' ``test.yaml`` sits in the folder their script runs in).

When none exists the item fails with "image file not found" naming the path of rule 1 or 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.config import read_yaml_data
from framework.dataset import DatasetPlugin, Item, as_prompt_list, check_unique, resolve_path
from framework.errors import ConfigError
from framework.registry import DATASETS


@dataclass
class YamlListOptions:
    """Options of the ``yaml_list`` dataset."""

    path: str = ""  # the YAML file (a list of entries)
    limit: int = 0  # use only the first ``limit`` entries (0: all)


def entry_id(init_img: str) -> str:
    """The stable id of an entry: its image path as written, without the extension."""
    p = Path(init_img)
    return str(p.with_suffix("")).replace("\\", "/").lstrip("./") or p.name


def find_image(init_img: str, base: Path) -> Path:
    """The file an entry's ``init_img`` names (the rules in the module docstring)."""
    natural = resolve_path(init_img, base)
    if natural.exists():
        return natural
    candidates = []
    if init_img.startswith(("/", "\\")):
        candidates.append(Path.cwd() / ("." + init_img))  # the authors' '.' + init_img
        candidates.append(base / init_img.lstrip("/\\"))
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    return natural


@DATASETS.register("yaml_list")
class YamlListDataset(DatasetPlugin):
    """Entries with init_img, source_prompt, target_prompts (paths relative to the YAML file)."""

    Options = YamlListOptions

    def items(self) -> list[Item]:
        path = Path(self.options.path)
        if not self.options.path:
            raise ConfigError("the yaml_list dataset needs data.path (a YAML list of edits)")
        if not path.exists():
            raise ConfigError(f"dataset file not found: {path}")
        try:
            raw = read_yaml_data(path)  # prompts are text as written: nothing is interpolated
        except Exception as exc:  # YAML errors of every kind
            raise ConfigError(f"could not parse dataset file {path}: {exc}") from None
        if isinstance(raw, dict) and "items" in raw:
            raw = raw["items"]
        if not isinstance(raw, list):
            raise ConfigError(f"{path} must hold a list of entries with init_img, source_prompt, target_prompts")
        items = []
        for k, entry in enumerate(raw):
            items.append(self._item(entry, k, path))
        if self.options.limit > 0:
            items = items[: self.options.limit]
        return check_unique(items, str(path))

    @staticmethod
    def _item(entry: Any, k: int, path: Path) -> Item:
        where = f"{path} entry {k}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping, got {entry!r}")
        missing = [key for key in ("init_img", "source_prompt", "target_prompts") if key not in entry]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)} (needs init_img, source_prompt, target_prompts)")
        entry = dict(entry)
        init_img = str(entry.pop("init_img"))
        source = entry.pop("source_prompt")
        if not isinstance(source, str):
            raise ConfigError(f"{where}: source_prompt must be a string, got {source!r}")
        targets = as_prompt_list(entry.pop("target_prompts"), f"{where}: target_prompts")
        item_id = str(entry.pop("id", None) or entry_id(init_img))
        return Item(
            id=item_id,
            image_path=str(find_image(init_img, path.parent)),
            source_prompt=source,
            target_prompts=targets,
            extras=entry,
        )
