"""OmegaConf composition of run configurations.

Layers, later ones winning: the defaults (:class:`framework.schema.EditConfig`, the one home of
every run-level default), the group presets they select (``configs/backbone/*.yaml``,
``configs/inverter/*.yaml``, ``configs/editor/*.yaml``), an experiment file, then ``key=value``
overrides from the command line. ``compose(kind="edit"|"run")`` checks every layer's keys against
the schema (:mod:`framework.schema`) first: a misspelt key is an error naming it.

Run settings carried by presets. A preset file may hold the reserved key ``settings`` (e.g.
``settings: {num_steps: 50, skip: 0}``): the run settings of the paper the preset comes from.
Composition strips it from the plugin's options and applies it as a layer just above the
defaults: the inverter preset's settings, then the editor preset's (the editor's win
where both set a key), then every explicit source: the experiment file, the command line (flags
and ``key=value`` together), and, for a ``methods`` entry, the entry's own ``num_steps``/``skip``
(see :func:`run_settings`). A layer that sets ``num_steps`` without ``skip`` keeps the
proportion of the skip below it: ``skip' = floor(skip * N' / N + 1/2)`` (round half up, at most
``N' - 1``), so ``--steps 20`` alone runs 36 of 100 as 7 of 20.

Per-backbone values and editor options carried by presets. A preset may hold the reserved key
``backbones: {<backbone plugin name>: {...}}``: option values (and ``settings``) that replace the
preset's own when that backbone runs, e.g. ``backbones: {digits: {guidance_scale: 7.5}}`` in
``configs/editor/text.yaml``. An inverter preset may hold ``editor: {...}``: options for the
editor of its edits (the reference's target guidance, Prompt-to-Prompt's replace steps), set on
whichever editor has them; inside its ``backbones`` block too. An editor option then takes,
later winning: the schema default < the editor preset < the editor preset's ``backbones.<b>`` <
the inverter preset's ``editor`` < the inverter preset's ``backbones.<b>.editor`` < any value
given explicitly (``editor.guidance_scale=``, an experiment file's mapping naming the plugin).
Composition notes which options came from a preset file (the hidden key ``_from_preset``, never
saved) so that only those are replaced; see :func:`preset_pair`.

A group value (``backbone``, ``inverter``, ``editor``; also inside each entry of ``methods``)
may be a string or a mapping. A string names a preset file ``configs/<group>/<string>.yaml``
or, if there is none, a registered plugin. A mapping needs a ``name``. When a later layer
names another plugin than an earlier one, it replaces that group wholesale (options of one
plugin mean nothing to another); with the same plugin the options merge. Finally each group is
validated against its plugin's options dataclass and completed with its defaults, so the saved
config is fully resolved.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework import schema
from framework.errors import ConfigError
from framework.presets import config_dir, preset_names
from framework.schema import suggest

GROUPS = ("backbone", "inverter", "editor")
#: like a group, ``logger`` is replaced wholesale when a later layer names another logger (a
#: wandb ``mode`` means nothing to the csv logger), and a string names the logger
LOGGER = "logger"
#: reserved key of a preset file: the run settings it carries (not a plugin option)
SETTINGS = "settings"
#: what ``settings`` may set
SETTING_KEYS = ("num_steps", "skip")
#: reserved key of a preset file: per-backbone values, ``backbones: {<backbone name>: {...}}``
BACKBONES_KEY = "backbones"
#: reserved key of an inverter preset: options for the editor of edits made from its inversions
EDITOR_KEY = "editor"
#: reserved key of an editor preset: the inverter its edits use where the configuration names none
INVERTER_KEY = "inverter"
#: hidden key of a composed group: the options whose value came from a preset file (the values a
#: preset's ``backbones`` block and an inverter preset's ``editor`` may replace)
FROM_PRESET = "_from_preset"
#: keys of a group node that are not plugin options
RESERVED = (SETTINGS, BACKBONES_KEY, FROM_PRESET)


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


def group_node(group: str, value: Any) -> dict[str, Any]:
    """Normalize a group value (preset name, plugin name or mapping) to a plain mapping of the
    plugin's name and options (a preset's ``settings``, ``backbones`` and an inverter preset's
    ``editor`` left out: see :func:`preset_node`)."""
    return options_only(group, preset_node(group, value))


def options_only(group: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` without the keys that are not plugin options (see :data:`RESERVED`)."""
    reserved = {"inverter": (*RESERVED, EDITOR_KEY), "editor": (*RESERVED, INVERTER_KEY)}.get(group, RESERVED)
    return {k: v for k, v in node.items() if k not in reserved}


def preset_node(group: str, value: Any) -> dict[str, Any]:
    """:func:`group_node` keeping the preset's ``settings`` (num_steps/skip), ``backbones`` and
    (inverter presets) ``editor``, if it has any, and noting which options came from the file."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        preset = config_dir() / group / f"{value}.yaml"
        if preset.exists():
            node = OmegaConf.to_container(load_yaml(preset), resolve=True)
            assert isinstance(node, dict)
            if "name" not in node:
                raise ConfigError(f"preset {preset} has no 'name' key")
            if SETTINGS in node:
                node[SETTINGS] = check_settings(node[SETTINGS], str(preset))
            check_preset_extras(group, node, str(preset))
            return _mark(node, {k for k in options_only(group, node) if k != "name"})
        return {"name": value}
    if isinstance(value, Mapping):
        node = dict(value)
        if SETTINGS in node:
            node[SETTINGS] = check_settings(node[SETTINGS], f"the {group} config")
        if "name" not in node:
            if "preset" in node:
                base = preset_node(group, node.pop("preset"))
                return merge_group(base, {**node, "name": base["name"]})
            raise ConfigError(f"the {group} config needs a 'name' key (or a preset name), got {node}")
        return node
    raise ConfigError(f"the {group} config must be a name or a mapping, got {value!r}")


def merge_group(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Later wins; another plugin name replaces the group, the same name merges options (and
    the presets' ``settings``, ``backbones`` and ``editor``, key by key). An option ``new`` sets
    itself (not from a preset file) is no longer marked as a preset's."""
    if old is None or old.get("name") != new.get("name"):
        return dict(new)
    out = {**old, **new}
    for key in (SETTINGS, EDITOR_KEY):
        if isinstance(old.get(key), Mapping) and isinstance(new.get(key), Mapping):
            out[key] = {**old[key], **new[key]}
    if isinstance(old.get(BACKBONES_KEY), Mapping) and isinstance(new.get(BACKBONES_KEY), Mapping):
        out[BACKBONES_KEY] = {
            b: {**old[BACKBONES_KEY].get(b, {}), **new[BACKBONES_KEY].get(b, {})}
            for b in {**old[BACKBONES_KEY], **new[BACKBONES_KEY]}
        }
    explicit = set(new) - set(new.get(FROM_PRESET, ())) - set(RESERVED)
    marked = (set(old.get(FROM_PRESET, ())) - explicit) | set(new.get(FROM_PRESET, ()))
    return _mark(out, marked)


def _mark(node: dict[str, Any], marked: set[str]) -> dict[str, Any]:
    """Set the node's :data:`FROM_PRESET` list (left out when empty)."""
    node.pop(FROM_PRESET, None)
    if marked:
        node[FROM_PRESET] = sorted(marked)
    return node


def check_preset_extras(group: str, node: dict[str, Any], where: str) -> None:
    """Validate a preset's ``backbones`` block (a mapping of backbone names to option values,
    ``settings`` and, for inverters, ``editor``) and an inverter preset's ``editor`` mapping."""
    if group == "inverter" and EDITOR_KEY in node and not isinstance(node[EDITOR_KEY], Mapping):
        raise ConfigError(f"{where}: editor must map editor options to values, got {node[EDITOR_KEY]!r}")
    if group == "editor" and INVERTER_KEY in node and not isinstance(node[INVERTER_KEY], str):
        raise ConfigError(f"{where}: inverter must name an inverter preset or plugin, got {node[INVERTER_KEY]!r}")
    blocks = node.get(BACKBONES_KEY)
    if blocks is None:
        return
    if not isinstance(blocks, Mapping) or not all(isinstance(b, Mapping) for b in blocks.values()):
        raise ConfigError(f"{where}: backbones must map backbone names to mappings of values, got {blocks!r}")
    for backbone, block in blocks.items():
        if block.get("name") is not None:
            raise ConfigError(f"{where}: backbones.{backbone} cannot change the plugin's name")
        if SETTINGS in block:
            block[SETTINGS] = check_settings(block[SETTINGS], f"{where}: backbones.{backbone}")
        if EDITOR_KEY in block and (group != "inverter" or not isinstance(block[EDITOR_KEY], Mapping)):
            raise ConfigError(f"{where}: backbones.{backbone}.editor is an inverter preset's mapping of editor options")


def check_settings(settings: Any, where: str) -> dict[str, Any]:
    """Validate a preset's ``settings`` mapping (only ``num_steps``/``skip``, integers)."""
    if isinstance(settings, (DictConfig, ListConfig)):
        settings = OmegaConf.to_container(settings, resolve=True)
    if not isinstance(settings, Mapping):
        raise ConfigError(f"{where}: settings must map {' and/or '.join(SETTING_KEYS)} to integers, got {settings!r}")
    bad = sorted(set(settings) - set(SETTING_KEYS))
    if bad:
        raise ConfigError(f"{where}: settings has unknown keys {bad}; accepted: {', '.join(SETTING_KEYS)}")
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: settings.{key} must be a non-negative integer, got {value!r}")
    return dict(settings)


def scaled_skip(skip: int, num_steps: int, new_steps: int) -> int:
    """``skip`` of ``num_steps`` at the same proportion of ``new_steps``: round half up,
    at most ``new_steps - 1`` (36 of 100 -> 7 of 20; 12 of 100 -> 6 of 50)."""
    if num_steps <= 0 or new_steps <= 0:
        return skip
    return max(0, min((2 * skip * new_steps + num_steps) // (2 * num_steps), new_steps - 1))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def apply_settings(current: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` run settings (num_steps, skip) with ``layer``'s on top. A layer that sets
    ``num_steps`` but not ``skip`` rescales the current skip (:func:`scaled_skip`)."""
    out = dict(current)
    if layer.get("num_steps") is not None:
        new = layer["num_steps"]
        old, skip = current.get("num_steps"), current.get("skip")
        if layer.get("skip") is None and _is_int(new) and _is_int(old) and _is_int(skip):
            out["skip"] = scaled_skip(skip, old, new)
        out["num_steps"] = new
    if layer.get("skip") is not None:
        out["skip"] = layer["skip"]
    return out


def _settings_of(layer: Mapping[str, Any]) -> dict[str, Any]:
    return {k: layer[k] for k in SETTING_KEYS if k in layer and layer[k] is not None}


def run_settings(
    base: Mapping[str, Any],
    groups: Sequence[Mapping[str, Any] | None],
    explicit: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """num_steps and skip from ``base`` (the defaults), then each group's preset ``settings``
    (inverter, then editor), then the ``explicit`` layers in order (experiment file, command
    line, a method entry): each applied with :func:`apply_settings`."""
    current = _settings_of(base)
    for node in groups:
        if node and node.get(SETTINGS):
            current = apply_settings(current, node[SETTINGS])
    for layer in explicit:
        current = apply_settings(current, _settings_of(layer))
    return current


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
                    # options only: keep the plugin
                    groups[key] = merge_group(groups[key], {**value, "name": groups[key].get("name")})
                else:
                    groups[key] = merge_group(groups.get(key), preset_node(key, value))
            elif key == LOGGER and value is not None:
                rest[key] = _merge_logger(result.get(LOGGER), value)
            elif key == "methods" and value is not None:
                rest[key] = [normalize_method(m, i) for i, m in enumerate(_as_list(value, "methods"))]
            else:
                rest[key] = value
        try:
            merged = OmegaConf.merge(OmegaConf.create(result), OmegaConf.create(rest))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"could not merge config: {exc}") from None
        result = _container(merged)
        for key in ("methods", LOGGER):  # lists replace; another logger replaces the mapping
            if key in rest:
                result[key] = rest[key]
    result.update(groups)
    return result


def _merge_logger(old: Any, new: Any) -> Any:
    """A later ``logger`` layer: a name (``logger=csv``) or a mapping naming another logger
    replaces the earlier one; a mapping without a name, or with the same one, adds options."""
    if isinstance(new, str):
        return {"name": new}
    if not isinstance(new, Mapping):
        return new  # false/none and bad values: the schema check names them
    new = dict(new)
    if not isinstance(old, Mapping):
        return new
    if "name" in new and str(new["name"]).lower() != str(old.get("name", schema.LoggerConfig.name)).lower():
        return new
    return {**old, **new}


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
            out[group] = preset_node(group, out[group])
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
                base = preset_node(group, layer[group])
                layer[group] = merge_group(base, {**rest.pop(group), "name": base.get("name")})
    layer.update(rest)
    return layer


#: what each ``compose(kind=...)`` checks a layer with
CHECKS = {"edit": schema.check_edit, "run": schema.check_experiment}


def compose(
    experiment: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: str | Path | None = None,
    extra_layers: Sequence[Mapping[str, Any]] = (),
    kind: str | None = None,
) -> DictConfig:
    """Compose the defaults, the experiment file, extra layers (CLI flags) and overrides.

    ``defaults``: a YAML file to start from instead of :class:`framework.schema.EditConfig`.
    ``kind``: ``"edit"`` or ``"run"`` checks the keys of the experiment file and of the
    overrides (top level and nested: trainer, logger, compare, each method) against the schema
    of that command before anything is merged; None checks nothing (library use).
    """
    if kind is not None and kind not in CHECKS:
        raise ValueError(f"kind must be one of {sorted(CHECKS)} or None, got {kind!r}")
    check = CHECKS.get(kind) if kind else None
    base = load_yaml(defaults) if defaults else OmegaConf.create(schema.defaults(schema.EditConfig))
    layers: list[Any] = [base]
    explicit: list[dict[str, Any]] = []  # where num_steps/skip may be set explicitly
    if experiment is not None:
        layers.append(load_yaml(experiment))
        explicit.append(_container(layers[-1]))
        if check:
            check(explicit[-1], f"the experiment config {experiment}")
    command_line = parse_overrides(overrides)
    if check:
        check(command_line, "the command line's key=value overrides")
    layers.extend(extra_layers)
    layers.append(command_line)
    # flags and key=value overrides are one source: --skip 5 num_steps=20 keeps skip 5
    cli = {}
    for layer in [*extra_layers, command_line]:
        cli.update(_settings_of(_container(layer)))
    explicit.append(cli)
    named = any(INVERTER_KEY in _container(layer) for layer in layers[1:])  # an inverter given explicitly
    cfg = resolve(apply_preset_settings(merge_layers(layers), _container(base), explicit, named))
    if check:
        check(_container(cfg), "the composed config")
    return cfg


def apply_preset_settings(
    cfg: dict[str, Any], base: Mapping[str, Any], explicit: Sequence[Mapping[str, Any]], inverter_named: bool = True
) -> dict[str, Any]:
    """Strip the presets' ``settings`` from the groups of ``cfg`` (top level and per method)
    and set ``num_steps``/``skip`` from :func:`run_settings`; each ``methods`` entry gets its
    own, from its own inverter/editor (or the top-level ones), the explicit layers and then
    the entry's own values. Where no layer above the defaults names an inverter
    (``inverter_named`` false) and the editor's preset names one (its ``inverter`` key, e.g.
    ``none`` for SDEdit and FlowEdit, which read only the encoded image), that inverter is used;
    so is it for a ``methods`` entry without an inverter of its own."""
    backbone = _backbone_name(cfg.get("backbone"))
    if not inverter_named:
        chosen = _editor_inverter(cfg.get("editor"))
        if chosen is not None:
            cfg["inverter"] = chosen
    top = {g: cfg.get(g) if isinstance(cfg.get(g), Mapping) else None for g in ("inverter", "editor")}
    top["inverter"], top["editor"] = preset_pair(top["inverter"], top["editor"], backbone)
    cfg.update(run_settings(base, [top["inverter"], top["editor"]], explicit))
    if isinstance(cfg.get("methods"), list):
        methods = []
        for m in cfg["methods"]:
            m = dict(m)
            own = [m.get(g) if isinstance(m.get(g), Mapping) else None for g in ("inverter", "editor")]
            if own[0] is None and not inverter_named and own[1] is not None:
                own[0] = _editor_inverter(own[1])
            raw = [own[0] or cfg.get("inverter"), own[1] or cfg.get("editor")]
            groups = list(preset_pair(raw[0], raw[1], backbone)) if any(own) else [top["inverter"], top["editor"]]
            m.update(run_settings(base, groups, [*explicit, m]))
            for g, node, mine in zip(("inverter", "editor"), groups, own):
                if mine is not None or (node is not None and node != top[g]):
                    m[g] = _strip(g, node)
            methods.append(m)
        cfg["methods"] = methods
    for g in ("inverter", "editor"):
        if top[g] is not None:
            cfg[g] = _strip(g, top[g])
    return cfg


def _editor_inverter(editor: Any) -> dict[str, Any] | None:
    """The inverter an editor preset names (its ``inverter`` key) as a group node, or None."""
    name = editor.get(INVERTER_KEY) if isinstance(editor, Mapping) else None
    return preset_node("inverter", name) if isinstance(name, str) else None


def _strip(group: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """A group node without ``settings`` and the other preset-only keys."""
    return {k: v for k, v in options_only(group, node).items()}


def _backbone_name(node: Any) -> str | None:
    if isinstance(node, Mapping):
        return None if node.get("name") is None else str(node["name"])
    return None if node is None else str(node)


def _apply_preset_values(
    node: Mapping[str, Any], values: Mapping[str, Any], only: Iterable[str] | None = None
) -> dict[str, Any]:
    """``node`` with ``values`` for the options a preset file set (or nobody set); options given
    explicitly keep their value. ``only``: the option names the plugin has (others are left out)."""
    out = dict(node)
    marked = set(out.get(FROM_PRESET, ()))
    allowed = None if only is None else set(only)
    for key, value in values.items():
        if key in (*RESERVED, EDITOR_KEY, "name") or (allowed is not None and key not in allowed):
            continue
        if key in marked or key not in out:
            out[key] = value
            marked.add(key)
    return _mark(out, marked)


def _with_backbone_block(group: str, node: Mapping[str, Any], backbone: str | None) -> dict[str, Any]:
    """``node`` with its preset's ``backbones.<backbone>`` block applied: option values (where no
    explicit value is given) and ``settings`` (over the preset's own, below every explicit one)."""
    out = dict(node)
    blocks = out.get(BACKBONES_KEY)
    block = blocks.get(backbone) if isinstance(blocks, Mapping) and backbone is not None else None
    if not block:
        return out
    out = _apply_preset_values(out, block)
    if block.get(SETTINGS):
        out[SETTINGS] = {**(out.get(SETTINGS) or {}), **block[SETTINGS]}
    return out


def _editor_options(name: Any) -> list[str] | None:
    import dataclasses

    from framework.registry import EDITORS

    try:
        return [f.name for f in dataclasses.fields(EDITORS.get(str(name)).Options)]
    except Exception:  # an unknown editor: resolve() names it
        return None


def preset_pair(
    inverter: Mapping[str, Any] | None, editor: Mapping[str, Any] | None, backbone: str | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Apply the presets' per-backbone blocks and the inverter preset's editor options.

    An editor option takes, later winning: the editor preset's value < the editor preset's
    ``backbones.<backbone>`` < the inverter preset's ``editor`` (the settings of a combination
    are more specific than an editor's own) < the inverter preset's ``backbones.<backbone>.editor``
    < a value given explicitly (command line, experiment file, a mapping naming the plugin).
    Inverter-carried values reach only editors with that option."""
    inv = _with_backbone_block("inverter", inverter, backbone) if inverter is not None else None
    if editor is None:
        return inv, None
    ed = dict(editor)
    carried = dict(inv.get(EDITOR_KEY) or {}) if inv is not None else {}
    blocks = inv.get(BACKBONES_KEY) if inv is not None else None
    block = blocks.get(backbone) if isinstance(blocks, Mapping) and backbone is not None else None
    fields = _editor_options(ed.get("name"))
    ed = _with_backbone_block("editor", ed, backbone)
    if fields is not None:
        ed = _apply_preset_values(ed, carried, fields)
        if block and block.get(EDITOR_KEY):
            ed = _apply_preset_values(ed, block[EDITOR_KEY], fields)
    return inv, ed


def resolve(cfg: Mapping[str, Any]) -> DictConfig:
    """Validate every plugin group (top level and per method) and fill in its defaults."""
    from framework.registry import BACKBONES, EDITORS, INVERTERS

    registries = {"backbone": BACKBONES, "inverter": INVERTERS, "editor": EDITORS}
    out = dict(cfg)
    # full_options resolves each group's interpolations; literal() keeps the results as they are
    for group, registry in registries.items():
        if group in out:
            out[group] = literal(full_options(registry, out[group]))
    if "methods" in out:
        methods = []
        for m in out["methods"]:
            m = dict(m)
            for group in ("inverter", "editor"):
                if group in m:
                    m[group] = literal(full_options(registries[group], m[group]))
            methods.append(m)
        out["methods"] = methods
    try:
        return OmegaConf.create(out)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def full_options(registry: Any, node: Mapping[str, Any]) -> dict[str, Any]:
    """``{"name": ..., **every option with its default}`` after validating ``node``, a group
    of configuration: its interpolations are resolved (pass text that must be kept as it is
    through :func:`literal`). The result is plain data."""
    import dataclasses

    # a preset's settings (num_steps/skip), backbones and editor blocks are no plugin options;
    # compose applies them
    node = {k: v for k, v in node.items() if k not in (*RESERVED, EDITOR_KEY)}
    try:  # configuration: its interpolations (e.g. ${oc.env:...}) resolve here, once
        node = OmegaConf.to_container(OmegaConf.create(node), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad value in the {registry.kind} config {node}: {str(exc).splitlines()[0]}") from None
    _, options = registry.options(node)
    return {"name": node["name"], **dataclasses.asdict(options)}


def backbone_config(name_or_path: str) -> dict[str, Any]:
    """What ``--backbone`` accepts: a preset, a registered backbone, a hub id or a folder."""
    from framework.registry import BACKBONES

    if (config_dir() / "backbone" / f"{name_or_path}.yaml").exists() or name_or_path in BACKBONES.names():
        return group_node("backbone", name_or_path)
    if is_pixel_model_folder(name_or_path):
        return {"name": "pixel_ddpm", "model": name_or_path}
    if is_text_pixel_model_folder(name_or_path):
        name = "text_pixel_flow" if is_flow_model_folder(name_or_path) else "text_pixel_ddpm"
        return {"name": name, "model": name_or_path}
    if is_sdxl_model_folder(name_or_path):
        return {"name": "sdxl", "model": name_or_path}
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


def is_sdxl_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a local diffusers folder of Stable Diffusion XL (``model_index.json``'s
    ``_class_name`` an SDXL pipeline, or, without an index, a ``text_encoder_2/`` beside ``unet/``)."""
    import json

    folder = Path(path)
    if not folder.is_dir():
        return False
    index = folder / "model_index.json"
    try:
        if index.exists():
            return str(json.loads(index.read_text()).get("_class_name", "")).startswith("StableDiffusionXL")
    except (OSError, ValueError, AttributeError):
        return False
    return (folder / "unet").is_dir() and (folder / "text_encoder_2").is_dir()


def is_text_pixel_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a local folder of a text-conditional pixel model (``unet/`` and
    ``text_encoder/`` without ``vae/``, as ``scripts/train_digits.py`` writes)."""
    folder = Path(path)
    return (
        folder.is_dir()
        and (folder / "unet").is_dir()
        and (folder / "text_encoder").is_dir()
        and not (folder / "vae").exists()
    )


def is_flow_model_folder(path: str | Path) -> bool:
    """Whether the local diffusers folder ``path`` holds a flow-matching model: its
    ``scheduler/scheduler_config.json`` names a ``FlowMatchEulerDiscreteScheduler``
    (``scripts/train_digits.py --objective flow`` writes one)."""
    import json

    try:
        cfg = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("_class_name") == "FlowMatchEulerDiscreteScheduler"


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


def literal(value: Any) -> Any:
    """``value`` (a string, or lists and mappings holding strings) escaped so that OmegaConf keeps
    it as written: ``${`` becomes ``\\${`` (with the backslashes before it doubled), which OmegaConf
    resolves back to ``${``. User text (prompts, captions, file names, whatever a page receives)
    goes into a config through this, so it is never interpolated; configuration the user writes
    (experiment files, ``key=value`` overrides) keeps interpolation."""
    if isinstance(value, str):
        return _INTERPOLATION_START.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", value)
    if isinstance(value, Mapping):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [literal(v) for v in value]
    return value


_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def read_yaml_data(path: str | Path) -> Any:
    """A YAML file as plain data, every string as written (no interpolation): dataset files,
    captions and the ``config.yaml`` records (written resolved). Raises OSError, or ValueError
    naming the place of a syntax error."""
    with open(path, encoding="utf-8") as fh:
        try:
            return yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from None


class _RecordDumper(yaml.SafeDumper):
    """Writes strings that would read back as another type quoted, as OmegaConf does."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    quoted = data in _YAML_BOOLS or _looks_numeric(data)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'" if quoted else None)


_YAML_BOOLS = {w for b in ("y", "yes", "n", "no", "true", "false", "on", "off") for w in (b, b.capitalize(), b.upper())}


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace("_", ""))
    except ValueError:
        return False
    return True


_RecordDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """Plain data as block-style YAML, keys in their order, strings exactly as they are."""
    return yaml.dump(data, Dumper=_RecordDumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def save_config(cfg: DictConfig | Mapping[str, Any], path: str | Path) -> Path:
    """Write a config as YAML (the record kept beside every output).

    A ``DictConfig`` is written resolved (its interpolations were configuration); a plain mapping
    is taken as already resolved and written as it is, so no text in it is interpreted again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else dict(cfg)
    path.write_text(dump_yaml(data), encoding="utf-8")
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
