"""What an experiment runs: methods expanded over their sweeps, and the shared inversions.

A ``methods`` entry is ``{name, inverter, editor, num_steps, skip, sweep, seeds}``; missing
``inverter``/``editor``/``num_steps``/``skip`` come from the top level of the config. ``sweep``
maps dotted keys (``skip``, ``num_steps``, ``seeds``, ``inverter.<option>``, ``editor.<option>``,
or ``inverter``/``editor`` to swap the plugin) to lists of values; the method runs once per point
of their Cartesian product (a :class:`Variant`). ``seeds: S`` makes S edits per target, the s-th
with the item seed of index s (its own inversion too, as the inversion is random).

Each item is inverted once per distinct (inverter config, num_steps, seed index); the
inversion is computed with the smallest ``skip`` of the variants that share it (of all the
configured variants, not only the missing ones, so a resumed run computes the same thing).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework import schema
from framework.config import full_options, group_node, literal
from framework.errors import ConfigError
from framework.naming import slug

METHOD_KEYS = set(schema.METHOD_KEYS)


@dataclass
class Variant:
    """One method at one sweep point."""

    method: str  # the method's name
    sweep: dict[str, Any]  # swept key -> value at this point (empty without a sweep)
    inverter: dict[str, Any]  # fully resolved inverter config
    editor: dict[str, Any]  # fully resolved editor config
    num_steps: int
    skip: int
    seeds: int  # S edits per target
    setting: str = ""  # short hash of everything that determines the outputs
    index: int = 0  # position in the plan (for a stable order)

    @property
    def label(self) -> str:
        """``method`` or ``method[key=value,...]`` (the ``variant`` column)."""
        if not self.sweep:
            return self.method
        return f"{self.method}[{','.join(f'{k}={_fmt(v)}' for k, v in self.sweep.items())}]"

    @property
    def dirname(self) -> str:
        """A folder name for this variant's images."""
        if not self.sweep:
            return safe_name(self.method)
        return safe_name(self.method + "__" + "_".join(f"{k}-{_fmt(v)}" for k, v in self.sweep.items()))

    def inversion_key(self) -> str:
        """What decides the inversion (besides the seed): inverter config and num_steps."""
        return json.dumps([self.inverter, self.num_steps], sort_keys=True)

    @property
    def inversion_group(self) -> str:
        """10 hex digits of :meth:`inversion_key` (the ``inversion_group`` column): in a run, the
        rows of one item with the same value and seed index were edited from one inversion."""
        return hashlib.sha1(self.inversion_key().encode()).hexdigest()[:10]


@dataclass
class InversionGroup:
    """Variants that share one inversion of an item at seed index ``seed_index``."""

    inverter: dict[str, Any]
    num_steps: int
    skip: int  # the smallest skip of the members (of all configured variants)
    seed_index: int
    members: list[Variant] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    if isinstance(value, Mapping):
        return str(value.get("name", json.dumps(dict(value), sort_keys=True)))
    return str(value)


def safe_name(text: str) -> str:
    """A path-safe name (letters, digits, ``._-=``; ``..`` removed): :func:`framework.naming.slug`'s path style."""
    return slug(text, style="path")


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig,)) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def expand_methods(cfg: Mapping[str, Any] | DictConfig, context: Mapping[str, Any] | None = None) -> list[Variant]:
    """Expand ``cfg.methods`` (or a single method from the top-level groups) into variants.

    ``context`` (backbone, seed, ...) enters each variant's ``setting`` hash, which keys the
    rows of results.csv: a changed setting is a different row, never a stale one.
    """
    from framework.registry import EDITORS, INVERTERS

    cfg = _plain(cfg)
    methods = cfg.get("methods")
    if methods is None:
        methods = [{"name": "default"}]
    if not isinstance(methods, list) or not methods:
        raise ConfigError("methods must be a non-empty list of {name, inverter, editor, num_steps, skip, sweep}")
    variants: list[Variant] = []
    names: set[str] = set()
    for k, method in enumerate(methods):
        if not isinstance(method, Mapping):
            raise ConfigError(f"methods[{k}] must be a mapping, got {method!r}")
        unknown = set(method) - METHOD_KEYS
        if unknown:
            raise ConfigError(
                f"methods[{k}] has unknown keys {sorted(unknown)}; accepted: {', '.join(sorted(METHOD_KEYS))}"
            )
        name = str(method.get("name") or f"method{k}")
        if name in names:
            raise ConfigError(f"two methods are named {name!r}; give each method a distinct name")
        names.add(name)
        base = {
            "inverter": method.get("inverter", cfg.get("inverter")),
            "editor": method.get("editor", cfg.get("editor")),
            "num_steps": method.get("num_steps", cfg.get("num_steps", schema.DEFAULT_NUM_STEPS)),
            "skip": method.get("skip", cfg.get("skip", schema.DEFAULT_SKIP)),
            "seeds": method.get("seeds", 1),
        }
        for group in ("inverter", "editor"):
            if base[group] is None:
                raise ConfigError(f"method {name!r} needs an {group} (or a top-level {group})")
            base[group] = group_node(group, base[group])
        sweep = method.get("sweep") or {}
        if not isinstance(sweep, Mapping):
            raise ConfigError(f"method {name!r}: sweep must map keys to lists of values, got {sweep!r}")
        keys = list(sweep)
        values = []
        for key in keys:
            vals = sweep[key]
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"method {name!r}: sweep.{key} must be a non-empty list, got {vals!r}")
            head = key.split(".", 1)[0]
            if head not in ("inverter", "editor", "num_steps", "skip", "seeds") or (
                head in ("num_steps", "skip", "seeds") and "." in key
            ):
                raise ConfigError(
                    f"method {name!r}: cannot sweep {key!r}; sweep skip, num_steps, seeds, inverter, editor, "
                    "inverter.<option> or editor.<option>"
                )
            values.append(vals)
        for point in itertools.product(*values) if keys else [()]:
            # base and the sweep values are resolved already: literal() keeps their text as it is
            node = OmegaConf.create(literal(json.loads(json.dumps(base))))
            for key, value in zip(keys, point):
                if key in ("inverter", "editor"):
                    node[key] = literal(group_node(key, value))
                else:
                    OmegaConf.update(node, key, literal(value), merge=False)
            plain = OmegaConf.to_container(node, resolve=True)
            inverter = full_options(INVERTERS, literal(plain["inverter"]))
            editor = full_options(EDITORS, literal(plain["editor"]))
            num_steps, skip, seeds = (_int(plain[k], f"method {name!r} {k}") for k in ("num_steps", "skip", "seeds"))
            if seeds < 1:
                raise ConfigError(f"method {name!r}: seeds must be >= 1, got {seeds}")
            if not 0 <= skip < num_steps:
                raise ConfigError(
                    f"method {name!r}: need 0 <= skip < num_steps, got skip={skip}, num_steps={num_steps}"
                )
            v = Variant(name, dict(zip(keys, point)), inverter, editor, num_steps, skip, seeds, index=len(variants))
            v.setting = setting_hash(v, context or {})
            variants.append(v)
    labels = [v.label for v in variants]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ConfigError(f"sweep points repeat: {sorted(dup)}")
    folders: dict[str, Variant] = {}
    for v in variants:  # names that differ only in characters a file name cannot hold
        other = folders.setdefault(v.dirname, v)
        if other.label != v.label:
            a, b = (other.method, v.method) if other.method != v.method else (other.label, v.label)
            raise ConfigError(
                f"methods {a!r} and {b!r} would write their images to one folder (images/{v.dirname}/); "
                "rename one of them"
            )
    return variants


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return int(value)


def setting_hash(v: Variant, context: Mapping[str, Any]) -> str:
    """12 hex digits over the inverter, editor, steps, skip and the run context."""
    blob = json.dumps(
        {
            "inverter": v.inverter,
            "editor": v.editor,
            "num_steps": v.num_steps,
            "skip": v.skip,
            "context": dict(context),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def inversion_groups(variants: Sequence[Variant]) -> list[InversionGroup]:
    """Group variants by (inverter config, num_steps, seed index), each with its smallest skip."""
    groups: dict[tuple[str, int], InversionGroup] = {}
    for v in variants:
        for s in range(v.seeds):
            key = (v.inversion_key(), s)
            if key not in groups:
                groups[key] = InversionGroup(v.inverter, v.num_steps, v.skip, s)
            g = groups[key]
            g.skip = min(g.skip, v.skip)
            g.members.append(v)
    return list(groups.values())


def sweep_columns(variants: Sequence[Variant]) -> list[str]:
    """Every swept key, in order of first appearance (one results.csv column each)."""
    cols: list[str] = []
    for v in variants:
        for key in v.sweep:
            if key not in cols:
                cols.append(key)
    return cols


def metric_configs(cfg: Any) -> list[dict[str, Any]]:
    """``metrics`` entries (a name or ``{name: ..., options...}``) -> mappings."""
    raw = cfg.get("metrics") or []
    if OmegaConf.is_config(raw):
        raw = OmegaConf.to_container(raw, resolve=True)
    if isinstance(raw, (str, dict)):
        raw = [raw]
    out = []
    for k, m in enumerate(raw):
        if isinstance(m, str):
            out.append({"name": m})
        elif isinstance(m, dict) and "name" in m:
            out.append(dict(m))
        else:
            raise ConfigError(f"metrics[{k}] must be a metric name or a mapping with 'name', got {m!r}")
    return out


def build_metrics(cfgs: Sequence[dict[str, Any]]) -> list[Any]:
    from framework.registry import METRICS

    return [METRICS.build(m) for m in cfgs]


def item_dir(item_id: str) -> str:
    """The relative folder of an item id (path components made safe)."""
    parts = [part for part in item_id.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    safe = "/".join(safe_name(part) for part in parts) or "item"
    if safe != item_id:  # keep ids that differ only in unsafe characters apart
        safe += "-" + hashlib.sha1(item_id.encode()).hexdigest()[:6]
    return safe
