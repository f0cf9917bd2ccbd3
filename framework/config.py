"""OmegaConf composition of run configurations.

Layers, later ones winning: ``configs/defaults.yaml``, the group presets it selects
(``configs/backbone/*.yaml``, ``configs/inverter/*.yaml``, ``configs/editor/*.yaml``), an
experiment file, then ``key=value`` overrides from the command line.

A group value (``backbone``, ``inverter``, ``editor``; also inside each entry of ``methods``)
may be a string or a mapping. A string names a preset file ``configs/<group>/<string>.yaml``
or, if there is none, a registered plugin. A mapping needs a ``name``. When a later layer
names another plugin than an earlier one, it replaces that group wholesale (options of one
plugin mean nothing to another); with the same plugin the options merge. Finally each group is
validated against its plugin's options dataclass and completed with its defaults, so the saved
config is fully resolved.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.errors import ConfigError

GROUPS = ("backbone", "inverter", "editor")


def config_dir() -> Path:
    """The folder of the shipped configs: $EDITFRIENDLY_CONFIG_DIR, the source tree's
    ``configs/``, or the copy installed as package data."""
    env = os.environ.get("EDITFRIENDLY_CONFIG_DIR")
    if env:
        return Path(env)
    source = Path(__file__).resolve().parent.parent / "configs"
    if (source / "defaults.yaml").exists():
        return source
    try:
        import editfriendly_configs  # installed copy of configs/ (see pyproject.toml)

        return Path(next(iter(editfriendly_configs.__path__)))
    except ImportError:
        return source


def load_yaml(path: str | Path) -> DictConfig:
    """Load one YAML mapping; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"could not parse config file {path}: {exc}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return cfg


def preset_names(group: str) -> list[str]:
    """The preset files of a group, by name."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def group_node(group: str, value: Any) -> dict[str, Any]:
    """Normalize a group value (preset name, plugin name or mapping) to a plain mapping."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        preset = config_dir() / group / f"{value}.yaml"
        if preset.exists():
            node = OmegaConf.to_container(load_yaml(preset), resolve=True)
            assert isinstance(node, dict)
            if "name" not in node:
                raise ConfigError(f"preset {preset} has no 'name' key")
            return node
        return {"name": value}
    if isinstance(value, Mapping):
        node = dict(value)
        if "name" not in node:
            if "preset" in node:
                base = group_node(group, node.pop("preset"))
                return {**base, **node}
            raise ConfigError(f"the {group} config needs a 'name' key (or a preset name), got {node}")
        return node
    raise ConfigError(f"the {group} config must be a name or a mapping, got {value!r}")


def merge_group(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Later wins; another plugin name replaces the group, the same name merges options."""
    if old is None or old.get("name") != new.get("name"):
        return dict(new)
    return {**old, **new}


def _container(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config layer must be a mapping, got {cfg!r}")
    return cfg


def merge_layers(layers: Iterable[Mapping[str, Any] | DictConfig]) -> dict[str, Any]:
    """Merge config layers with the group rule above and OmegaConf's merge for the rest."""
    result: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for layer in layers:
        layer = _container(layer)
        rest = {}
        for key, value in layer.items():
            if key in GROUPS and value is not None:
                if isinstance(value, Mapping) and "name" not in value and "preset" not in value and key in groups:
                    groups[key] = {**groups[key], **value}  # options only: keep the plugin
                else:
                    groups[key] = merge_group(groups.get(key), group_node(key, value))
            elif key == "methods" and value is not None:
                rest[key] = [normalize_method(m, i) for i, m in enumerate(_as_list(value, "methods"))]
            else:
                rest[key] = value
        try:
            merged = OmegaConf.merge(OmegaConf.create(result), OmegaConf.create(rest))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"could not merge config: {exc}") from None
        result = _container(merged)
        if "methods" in rest:  # lists replace, never merge element-wise
            result["methods"] = rest["methods"]
    result.update(groups)
    return result


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be a list, got {value!r}")
    return value


def normalize_method(method: Any, index: int) -> dict[str, Any]:
    """Normalize the inverter and editor of one ``methods`` entry."""
    if isinstance(method, DictConfig):
        method = OmegaConf.to_container(method, resolve=True)
    if not isinstance(method, Mapping):
        raise ConfigError(f"methods[{index}] must be a mapping, got {method!r}")
    out = dict(method)
    for group in ("inverter", "editor"):
        if group in out:
            out[group] = group_node(group, out[group])
    return out


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> one config layer (dotted keys nest; values parse as YAML)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad[0]!r}")
    layer: dict[str, Any] = {}
    dotted = []
    for item in overrides:
        key, value = item.split("=", 1)
        if key in GROUPS:  # a group selection: backbone=tiny
            layer[key] = OmegaConf.create({"v": value})["v"] if value.startswith("{") else value
        else:
            dotted.append(item)
    try:
        rest = OmegaConf.to_container(OmegaConf.from_dotlist(dotted), resolve=False)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {exc}") from None
    assert isinstance(rest, dict)
    for group in GROUPS:  # backbone.dtype=float16 only changes options of the chosen plugin
        if group in rest and isinstance(rest[group], dict):
            if group in layer:
                layer[group] = {**group_node(group, layer[group]), **rest.pop(group)}
    layer.update(rest)
    return layer


def suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (difflib), or ``""``."""
    norm = {c.replace("-", "").replace("_", "").lower(): c for c in choices}
    key = word.replace("-", "").replace("_", "").lower()
    if key in norm:
        return f"; did you mean {norm[key]!r}?"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_override_keys(overrides: Sequence[str], known: Iterable[str], command: str) -> None:
    """Reject ``key=value`` overrides whose top-level key the command does not read.

    A misspelt key (``ouput_dir=x``) would otherwise be accepted and ignored. Only the top
    level is checked here; plugin options are checked against their dataclasses.
    """
    known = sorted(set(known))
    for item in overrides:
        key = item.split("=", 1)[0].split(".", 1)[0].strip()
        if "=" in item and key and key not in known:
            raise ConfigError(
                f"unknown config key {key!r} in {item!r}{suggest(key, known)} "
                f"({command} reads: {', '.join(known)})"
            )


def compose(
    experiment: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: str | Path | None = None,
    extra_layers: Sequence[Mapping[str, Any]] = (),
) -> DictConfig:
    """Compose defaults, the experiment file, extra layers (CLI flags) and overrides."""
    layers: list[Any] = [load_yaml(defaults or config_dir() / "defaults.yaml")]
    if experiment is not None:
        layers.append(load_yaml(experiment))
    layers.extend(extra_layers)
    layers.append(parse_overrides(overrides))
    return resolve(merge_layers(layers))


def resolve(cfg: Mapping[str, Any]) -> DictConfig:
    """Validate every plugin group (top level and per method) and fill in its defaults."""
    from framework.registry import BACKBONES, EDITORS, INVERTERS

    registries = {"backbone": BACKBONES, "inverter": INVERTERS, "editor": EDITORS}
    out = dict(cfg)
    for group, registry in registries.items():
        if group in out:
            out[group] = full_options(registry, out[group])
    if "methods" in out:
        methods = []
        for m in out["methods"]:
            m = dict(m)
            for group in ("inverter", "editor"):
                if group in m:
                    m[group] = full_options(registries[group], m[group])
            methods.append(m)
        out["methods"] = methods
    try:
        return OmegaConf.create(out)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def full_options(registry: Any, node: Mapping[str, Any]) -> dict[str, Any]:
    """``{"name": ..., **every option with its default}`` after validating ``node``."""
    import dataclasses

    _, options = registry.options(dict(node))
    return {"name": node["name"], **dataclasses.asdict(options)}


def backbone_config(name_or_path: str) -> dict[str, Any]:
    """What ``--backbone`` accepts: a preset, a registered backbone, a hub id or a folder."""
    from framework.registry import BACKBONES

    if (config_dir() / "backbone" / f"{name_or_path}.yaml").exists() or name_or_path in BACKBONES.names():
        return group_node("backbone", name_or_path)
    if is_pixel_model_folder(name_or_path):
        return {"name": "pixel_ddpm", "model": name_or_path}
    if "/" not in name_or_path and "\\" not in name_or_path and not Path(name_or_path).exists():
        # Not a folder and not owner/name: a typo of a preset, not a hub id worth a lookup.
        names = sorted(set(preset_names("backbone")) | set(BACKBONES.names()))
        hint = suggest(name_or_path, names)
        if hint:
            raise ConfigError(
                f"unknown backbone {name_or_path!r}{hint} (presets and backbones: {', '.join(names)}; "
                "or a hub id owner/name, or a local diffusers folder)"
            )
    return {"name": "stable_diffusion", "model": name_or_path}


def is_pixel_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a local diffusers folder of an unconditional pixel model (a
    ``DDPMPipeline``/``DDIMPipeline``, or a ``UNet2DModel`` config at its root or in ``unet/``)."""
    import json

    folder = Path(path)
    if not folder.is_dir():
        return False
    try:
        index = folder / "model_index.json"
        if index.exists():
            return json.loads(index.read_text()).get("_class_name") in ("DDPMPipeline", "DDIMPipeline")
        for config in (folder / "unet" / "config.json", folder / "config.json"):
            if config.exists():
                return json.loads(config.read_text()).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError):
        return False
    return False


def save_config(cfg: DictConfig | Mapping[str, Any], path: str | Path) -> Path:
    """Write the resolved config as YAML (the record kept beside every output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def save_config_history(cfg: DictConfig | Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``folder/config.yaml`` (the latest config) and keep every invocation's copy.

    Each call also writes ``folder/config_history/NNN-<UTC time>.yaml`` (NNN counts up), so a
    later run never erases the record of an earlier one. Returns the history copy.
    """
    folder = Path(folder)
    save_config(cfg, folder / "config.yaml")
    history = folder / "config_history"
    history.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-", 1)[0]) for p in history.glob("*.yaml") if p.name.split("-", 1)[0].isdigit()]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return save_config(cfg, history / f"{max(numbers, default=0) + 1:03d}-{stamp}.yaml")
