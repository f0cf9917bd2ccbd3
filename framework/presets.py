"""Where the shipped configs are, and the preset names of a group: the standard library only, so
that the CLI's help can list presets without loading OmegaConf."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The folder of the shipped configs: $EDITFRIENDLY_CONFIG_DIR, the source tree's
    ``configs/``, or the copy installed as package data."""
    env = os.environ.get("EDITFRIENDLY_CONFIG_DIR")
    if env:
        return Path(env)
    source = Path(__file__).resolve().parent.parent / "configs"
    if (source / "experiment").is_dir():
        return source
    try:
        import editfriendly_configs  # installed copy of configs/ (see pyproject.toml)

        return Path(next(iter(editfriendly_configs.__path__)))
    except ImportError:
        return source


def preset_names(group: str) -> list[str]:
    """The preset files of a group (``configs/<group>/*.yaml``), by name."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
