"""Name-based plugin registries.

Every plugin is a class with an ``Options`` dataclass (its options and their defaults, the
paper's where the paper gives them) and a constructor taking one ``Options`` instance.
``Registry.build({"name": ..., **options})`` validates the options against that dataclass
with OmegaConf's structured configs, so unknown options and badly typed values are errors
that name the offending key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.errors import ConfigError

T = TypeVar("T", bound=type)


@dataclasses.dataclass
class NoOptions:
    """Options of a plugin that takes none."""


class Registry:
    """A mapping from plugin names to plugin classes of one kind (inverter, editor, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._plugins: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator registering a plugin under ``name``; duplicates are an error."""

        def decorator(cls: T) -> T:
            if name in self._plugins:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {self._plugins[name].__module__})"
                )
            options = getattr(cls, "Options", None)
            if options is None:
                cls.Options = NoOptions  # type: ignore[attr-defined]
            elif not dataclasses.is_dataclass(options):
                raise TypeError(f"{cls.__name__}.Options must be a dataclass")
            cls.registered_name = name  # type: ignore[attr-defined]
            self._plugins[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        _load_plugins()
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def get(self, name: str) -> type:
        """The plugin class registered as ``name``."""
        _load_plugins()
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def options(self, cfg: Mapping[str, Any] | DictConfig | str) -> tuple[type, Any]:
        """Validate ``cfg`` (a mapping with ``name``, or just a name) into (class, Options)."""
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        if not isinstance(cfg, Mapping):
            raise ConfigError(
                f"a {self.kind} config must be a mapping with a 'name' key, got {cfg!r}"
            )
        if "name" not in cfg:
            raise ConfigError(
                f"a {self.kind} config needs a 'name' key; known {self.kind}s: {', '.join(self.names())}"
            )
        options = dict(cfg)
        name = options.pop("name")
        cls = self.get(str(name))
        return cls, validate_options(cls.Options, options, f"{self.kind} {name!r}")

    def build(self, cfg: Mapping[str, Any] | DictConfig | str, **kwargs: Any) -> Any:
        """Instantiate the plugin that ``cfg['name']`` names with the rest of ``cfg`` as options."""
        cls, options = self.options(cfg)
        return cls(options, **kwargs)


def validate_options(options_cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Merge ``values`` into ``options_cls``'s defaults, rejecting unknown keys and bad types.
    ``values`` are taken as data: a string holding ``${...}`` is kept as it is, not interpolated."""
    fields = {f.name for f in dataclasses.fields(options_cls)}
    for key in values:
        if key not in fields:
            accepted = ", ".join(sorted(fields)) or "(no options)"
            raise ConfigError(f"unknown option {key!r} for {what}; accepted options: {accepted}")
    from framework.config import literal

    try:
        # values are data: text that looks like an interpolation stays text
        merged = OmegaConf.merge(OmegaConf.structured(options_cls), literal(dict(values)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"bad value for option {key!r} of {what}: {msg}") from None


def describe_options(options_cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) for each option of a plugin, for ``editfriendly list``."""
    rows = []
    for f in dataclasses.fields(options_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f.name, str(typ), default))
    return rows


_loaded = False


def _load_plugins() -> None:
    """Import :mod:`plugins` once, which registers every built-in plugin explicitly."""
    global _loaded
    if not _loaded:
        _loaded = True
        import plugins  # noqa: F401  (explicit imports inside register everything)


INVERTERS = Registry("inverter")
EDITORS = Registry("editor")
BACKBONES = Registry("backbone")
METRICS = Registry("metric")
DATASETS = Registry("dataset")

ALL = {
    "backbones": BACKBONES,
    "inverters": INVERTERS,
    "editors": EDITORS,
    "metrics": METRICS,
    "datasets": DATASETS,
}
