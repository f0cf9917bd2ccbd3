"""The shape of the ``edit`` and ``run`` configs: every key, its default, and the check that
rejects the keys nothing reads.

This module is the one home of the run-level defaults (``num_steps``, ``skip``, ``seed``, the
default plugins, the trainer and logger defaults): :func:`framework.config.compose` starts
from :class:`EditConfig`, the experiment runner fills a missing ``trainer``/``logger`` from
:class:`ExperimentConfig`, and :meth:`framework.sampling.Editor.edit` takes its default ``skip``
from here. Plugin options (``inverter.*``, ``editor.*``, ``backbone.*``, ``data.*``, a metric's
options) are not listed here: each plugin's options dataclass checks them.

A misspelt key would otherwise be read by nobody and the run would silently do something else
than asked (on a cluster that costs GPU-hours), so :func:`check_edit` and :func:`check_experiment`
raise :class:`~framework.errors.ConfigError` (exit status 2) naming the key, the closest valid
key and where it was found, before any model loads::

    error: unknown key 'ouput_dir' in the experiment config c.yaml; did you mean 'output_dir'?
    (accepted: backbone, compare, data, ...)

Lightning is imported only to list ``pl.Trainer``'s arguments, when a ``trainer`` mapping is
checked (``run`` loads Lightning anyway); checking an ``edit`` config imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from framework.errors import ConfigError

#: the paper's 100 inference steps
DEFAULT_NUM_STEPS = 100
#: T_skip: the edit starts at step num_steps - skip (the paper's 36 of 100)
DEFAULT_SKIP = 36


@dataclass
class EditConfig:
    """What ``editfriendly edit`` reads (and the base layer of every composed config).

    A group (``backbone``, ``inverter``, ``editor``) is a preset name (``configs/<group>/``), a
    registered plugin name or a mapping with ``name`` and options.
    """

    backbone: Any = "sd14"
    inverter: Any = "ddpm_edit_friendly"
    editor: Any = "text"
    num_steps: int = DEFAULT_NUM_STEPS
    skip: int = DEFAULT_SKIP
    seed: int = 0


@dataclass
class TrainerConfig:
    """The runner's defaults for ``pl.Trainer``; any other ``pl.Trainer`` argument may be added,
    except those the runner sets itself (:data:`RUNNER_TRAINER_KEYS`)."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1


#: ``pl.Trainer`` arguments the runner sets itself
RUNNER_TRAINER_KEYS = ("callbacks", "logger", "inference_mode", "use_distributed_sampler")


@dataclass
class LoggerConfig:
    """The default logger (wandb, offline) and the keys every logger accepts.

    ``name`` selects a logger (a preset in ``configs/logger/``: ``wandb``, ``csv``, ``none``);
    the keys each logger takes besides these are in :data:`LOGGER_KEYS`.
    """

    name: str = "wandb"
    mode: str = "offline"
    project: str = "editfriendly"


#: keys every logger config takes: where its files go and its run name, how many rows/items get
#: images in the logger's tables, and whether to save a reconstruction of every variant when no
#: metric needs one (``auto``, true or false; read by the runner, not by the logger class)
COMMON_LOGGER_KEYS = ("name", "save_dir", "run_name", "max_table_images", "reconstructions")
#: the runner's defaults of the common keys it reads itself (the logger classes never see them)
RUNNER_LOGGER_DEFAULTS: dict[str, Any] = {"max_table_images": 1000, "reconstructions": "auto"}
#: what each logger accepts on top of :data:`COMMON_LOGGER_KEYS` (wandb: also the arguments of
#: ``WandbLogger`` and ``wandb.init``, see :func:`logger_keys`)
LOGGER_KEYS: dict[str, tuple[str, ...]] = {
    "wandb": ("mode", "project"),
    "csv": ("version", "flush_logs_every_n_steps", "prefix"),
    "none": (),
}
#: spellings of "no logger"
NO_LOGGER = ("none", "false", "off", "null")


@dataclass
class MethodConfig:
    """One entry of ``methods``: an inverter and an editor with their run settings, optionally
    swept over ``sweep: {key: [values]}`` (skip, num_steps, seeds, inverter, editor,
    ``inverter.<option>``, ``editor.<option>``)."""

    name: str | None = None
    inverter: Any = None  # default: the top-level inverter
    editor: Any = None  # default: the top-level editor
    num_steps: int | None = None  # default: the top-level num_steps
    skip: int | None = None  # default: the top-level skip
    seeds: int = 1  # seeds per item (each its own inversion noise)
    sweep: dict[str, list[Any]] = field(default_factory=dict)


#: what ``sweep`` may vary: these keys, and ``inverter.<option>`` / ``editor.<option>``
SWEEP_KEYS = ("skip", "num_steps", "seeds", "inverter", "editor")


@dataclass
class CompareConfig:
    """Axes of the trade-off scatter ``editfriendly compare`` draws for this run."""

    x: str | None = None
    y: str | None = None


@dataclass
class ExperimentConfig(EditConfig):
    """What ``editfriendly run`` reads: the edit keys (the defaults of every method) plus the
    dataset, the methods, the metrics, the Lightning trainer, the logger and where to write."""

    data: Any = None  # {name: yaml_list|pie_bench|folder|digits, ...}: the dataset plugin's options
    methods: list[MethodConfig] | None = None  # default: one method of the top-level groups
    metrics: list[Any] = field(default_factory=list)  # metric names or {name, options...}
    compare: CompareConfig | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = field(default_factory=lambda: dataclasses.asdict(LoggerConfig()))
    output_dir: str = "runs/experiment"
    image_size: Any = None  # resize inputs to this (int or [h, w]); default: the backbone's
    threads: int | None = None  # CPU threads per process (default: torch's)


#: keys that may change between runs into one output_dir (they change no row of results.csv)
RUNTIME_KEYS = ("trainer", "logger", "output_dir", "threads")


def keys_of(schema: type) -> tuple[str, ...]:
    """The field names of a schema dataclass."""
    return tuple(f.name for f in dataclasses.fields(schema))


EDIT_KEYS = keys_of(EditConfig)
RUN_KEYS = keys_of(ExperimentConfig)
METHOD_KEYS = keys_of(MethodConfig)


def defaults(schema: type) -> dict[str, Any]:
    """The defaults of a schema dataclass as plain data (the groups as preset names)."""
    return dataclasses.asdict(schema())


def trainer_defaults() -> dict[str, Any]:
    return defaults(TrainerConfig)


def logger_defaults() -> dict[str, Any]:
    return defaults(LoggerConfig)


#: an experiment's top-level defaults (``output_dir``, ``seed``, ...), as plain data
RUN_DEFAULTS: dict[str, Any] = defaults(ExperimentConfig)


def suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (difflib), or ``""``."""
    choices = list(choices)
    norm = {c.replace("-", "").replace("_", "").lower(): c for c in choices}
    key = word.replace("-", "").replace("_", "").lower()
    if key in norm:
        return f"; did you mean {norm[key]!r}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(node: Mapping[str, Any], accepted: Iterable[str], where: str) -> None:
    """Raise on the first key of ``node`` not in ``accepted``, naming it, the closest accepted
    key and ``where`` (e.g. ``"trainer in the experiment config c.yaml"``)."""
    accepted = sorted(set(accepted))
    for key in node:
        if str(key) not in accepted:
            raise ConfigError(
                f"unknown key {str(key)!r} in {where}{suggest(str(key), accepted)} (accepted: {', '.join(accepted)})"
            )


@lru_cache(maxsize=1)
def trainer_keys() -> tuple[str, ...]:
    """Every ``pl.Trainer`` argument the config may set (imports Lightning)."""
    import lightning.pytorch as pl

    params = inspect.signature(pl.Trainer.__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
    return tuple(sorted((names | set(keys_of(TrainerConfig))) - set(RUNNER_TRAINER_KEYS)))


@lru_cache(maxsize=1)
def _wandb_keys() -> tuple[str, ...]:
    """Arguments of Lightning's ``WandbLogger`` and of ``wandb.init`` (what a wandb logger
    config may pass on)."""
    names: set[str] = set()
    try:
        from lightning.pytorch.loggers import WandbLogger

        names |= set(inspect.signature(WandbLogger.__init__).parameters)
    except ImportError:  # pragma: no cover - lightning is a dependency of run
        pass
    try:
        import wandb

        names |= set(inspect.signature(wandb.init).parameters)
    except ImportError:  # pragma: no cover - wandb is a dependency of run
        pass
    names -= {"self", "kwargs", "offline", "name"}  # offline: from mode; name: our run_name
    return tuple(sorted(names))


def logger_keys(name: str) -> tuple[str, ...] | None:
    """The keys a logger config of logger ``name`` accepts (None: not a known logger)."""
    name = name.lower()
    if name in NO_LOGGER:
        name = "none"
    if name not in LOGGER_KEYS:
        return None
    extra = _wandb_keys() if name == "wandb" else ()
    return tuple(sorted({*COMMON_LOGGER_KEYS, *LOGGER_KEYS[name], *extra}))


def check_logger(node: Any, where: str) -> None:
    """A ``logger`` value: a logger name, ``false`` (no logger), null (the default logger) or a
    mapping with ``name`` (default wandb) and that logger's keys."""
    if node is None:
        return
    if node is False or isinstance(node, str):
        name = "none" if node is False else node
        if logger_keys(name) is None:
            raise ConfigError(f"unknown logger {name!r} in {where}{suggest(name, LOGGER_KEYS)}; "
                              f"accepted: {', '.join(LOGGER_KEYS)}")
        return
    if not isinstance(node, Mapping):
        raise ConfigError(f"logger in {where} must be a logger name or a mapping with 'name', got {node!r}")
    name = str(node.get("name", LoggerConfig.name))
    keys = logger_keys(name)
    if keys is None:
        raise ConfigError(f"unknown logger {name!r} in {where}{suggest(name, LOGGER_KEYS)}; "
                          f"accepted: {', '.join(LOGGER_KEYS)}")
    check_keys(node, keys, f"the {name} logger config in {where}")


def check_method(method: Any, index: int, where: str) -> None:
    """One ``methods`` entry: its keys and its sweep's keys."""
    if not isinstance(method, Mapping):
        return  # the runner's plan names the shape it needs
    label = f"methods[{index}]" + (f" ({method['name']})" if method.get("name") else "")
    check_keys(method, METHOD_KEYS, f"{label} in {where}")
    sweep = method.get("sweep")
    if isinstance(sweep, Mapping):
        for key in sweep:
            head, _, option = str(key).partition(".")
            if head not in SWEEP_KEYS or (option and head not in ("inverter", "editor")):
                raise ConfigError(
                    f"cannot sweep {str(key)!r} in {label} in {where}{suggest(str(key), SWEEP_KEYS)} "
                    "(sweep skip, num_steps, seeds, inverter, editor, inverter.<option> or editor.<option>)"
                )


def check_edit(node: Mapping[str, Any], where: str) -> None:
    """The top-level keys of an ``edit`` config layer."""
    check_keys(node, EDIT_KEYS, where)


def check_experiment(node: Mapping[str, Any], where: str) -> None:
    """An experiment config layer (a file, the command line's overrides, or the composed
    whole): its top-level keys, ``trainer``, ``logger``, ``compare`` and each ``methods``
    entry. Plugin options are left to the plugins' dataclasses."""
    check_keys(node, RUN_KEYS, where)
    trainer = node.get("trainer")
    if isinstance(trainer, Mapping):
        for key in RUNNER_TRAINER_KEYS:
            if key in trainer:
                raise ConfigError(f"trainer.{key} in {where} is set by the runner; remove it from the config")
        check_keys(trainer, trainer_keys(), f"trainer in {where}")
    elif trainer is not None:
        raise ConfigError(f"trainer in {where} must be a mapping of pl.Trainer arguments, got {trainer!r}")
    if "logger" in node:
        check_logger(node["logger"], where)
    compare = node.get("compare")
    if isinstance(compare, Mapping):
        check_keys(compare, keys_of(CompareConfig), f"compare in {where}")
    elif compare is not None:
        raise ConfigError(
            f"compare in {where} must be a mapping like {{x: shape_iou, y: color_reached}}, got {compare!r}"
        )
    methods = node.get("methods")
    if isinstance(methods, list):
        for k, method in enumerate(methods):
            check_method(method, k, where)
