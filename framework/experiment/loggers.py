"""Experiment tracking: the Lightning logger of a run, and what rank 0 logs to it at the end."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image

from framework import schema
from framework.errors import ConfigError
from framework.experiment.plan import item_dir

#: the logger of a run whose config has no ``logger`` entry
LOGGER_DEFAULTS = schema.logger_defaults()
#: logger keys the runner reads itself: how many rows/items get images in wandb, and whether
#: to compute and save a reconstruction (the edit with the source prompt) of every variant when
#: no metric needs one
LOGGER_RUNNER_KEYS = ("max_table_images", "reconstructions")
#: other spellings of ``none``
LOGGER_ALIASES = {name: "none" for name in schema.NO_LOGGER if name != "none"}
WANDB_MODES = ("offline", "online", "disabled")

#: logger name -> builder(options, output_dir, run_name) -> a Lightning logger or None. The
#: options are the preset ``configs/logger/<name>.yaml`` (each logger's defaults) updated with
#: the run config's ``logger`` keys.
LOGGER_BUILDERS: dict[str, Callable[[dict[str, Any], Path, str], Any]] = {}


def _builder(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        LOGGER_BUILDERS[name] = fn
        return fn

    return register


def logger_preset(name: str) -> dict[str, Any]:
    """The defaults of logger ``name``: its preset ``configs/logger/<name>.yaml``."""
    from framework.config import config_dir, load_yaml

    path = config_dir() / "logger" / f"{name}.yaml"
    if name not in LOGGER_BUILDERS or not path.is_file():
        raise ConfigError(f"unknown logger {name!r}; accepted: {', '.join(sorted(LOGGER_BUILDERS))}")
    preset = OmegaConf.to_container(load_yaml(path), resolve=True)
    assert isinstance(preset, dict)
    return preset


def logger_options(cfg: Any) -> tuple[str, dict[str, Any]]:
    """A run config's ``logger`` (a name, a mapping with ``name``, or None for the default) ->
    (logger name, its preset updated with the given keys; ``name`` and the runner's own keys
    left out)."""
    if cfg is None:
        cfg = dict(LOGGER_DEFAULTS)
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, (str, bool)):
        cfg = {"name": str(cfg)}
    if not isinstance(cfg, dict):
        raise ConfigError(f"logger must be a logger name or a mapping with 'name', got {cfg!r}")
    given = {k: v for k, v in cfg.items() if k not in LOGGER_RUNNER_KEYS}  # read by the runner
    name = str(given.pop("name", LOGGER_DEFAULTS["name"])).lower()
    name = LOGGER_ALIASES.get(name, name)
    options = logger_preset(name)
    options.pop("name", None)
    options.update(given)
    return name, options


#: library messages a run does not pass on to the user: (logger name, text the message holds)
QUIET_RECORDS = (("lightning.pytorch.utilities.rank_zero", "litlogger"),)  # Lightning's advert for its cloud logger
#: library warnings a run does not pass on: (category, start of the message as a regex)
QUIET_WARNINGS = (
    # Lightning's own pytree helper (2.6) builds LeafSpec, which torch (2.14) deprecates: once per predict loop
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


def _drop_quiet_record(record: logging.LogRecord) -> bool:
    text = str(record.msg)
    return not any(record.name == name and part in text for name, part in QUIET_RECORDS)


def quiet_libraries() -> None:
    """Keep the libraries' tips and deprecation notices about their own code (:data:`QUIET_RECORDS`,
    :data:`QUIET_WARNINGS`) out of a run's output; everything else still shows. Idempotent; each
    process of a run calls it."""
    import warnings

    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in {name for name, _ in QUIET_RECORDS}:
        logger = logging.getLogger(name)
        if _drop_quiet_record not in logger.filters:
            logger.addFilter(_drop_quiet_record)


def build_logger(cfg: Any, output_dir: Path, run_name: str) -> Any:
    """``logger`` config -> a Lightning logger (wandb offline by default), or None.

    Leaves the process environment alone: wandb's mode and verbosity go to ``wandb.init``."""
    name, options = logger_options(cfg)
    return LOGGER_BUILDERS[name](options, Path(output_dir), run_name)


@_builder("none")
def _no_logger(options: dict[str, Any], output_dir: Path, run_name: str) -> None:
    return None


@_builder("csv")
def _csv_logger(options: dict[str, Any], output_dir: Path, run_name: str) -> Any:
    from lightning.pytorch.loggers import CSVLogger

    # only the preset's keys: keys of other loggers (mode, project, ...) are ignored
    return CSVLogger(
        save_dir=str(options["save_dir"] or output_dir),
        name=options["run_name"],
        version=options["version"],
        prefix=options["prefix"],
        flush_logs_every_n_steps=options["flush_logs_every_n_steps"],
    )


@_builder("wandb")
def _wandb_logger(options: dict[str, Any], output_dir: Path, run_name: str) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    options = dict(options)
    mode = str(options.pop("mode"))
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode must be {', '.join(WANDB_MODES[:-1])} or {WANDB_MODES[-1]}, got {mode!r}")
    kwargs: dict[str, Any] = {
        "project": options.pop("project"),
        "save_dir": str(options.pop("save_dir") or output_dir),
        "name": options.pop("run_name") or run_name,
        # the mode goes to wandb.init itself (Lightning's ``offline`` flag would set WANDB_MODE in
        # os.environ, which a wandb singleton created earlier in the process never re-reads)
        "mode": mode,
    }
    if "settings" not in options and "WANDB_SILENT" not in os.environ:
        import wandb

        kwargs["settings"] = wandb.Settings(silent=True)
    logger = WandbLogger(**kwargs, **options)
    # Lightning passes anonymous=None to wandb.init, which wandb (0.31) answers with "The
    # anonymous setting has no effect" on every run: leave the argument out when it says nothing
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", False) is None:
        del init["anonymous"]
    return logger


@contextlib.contextmanager
def wandb_staging(save_dir: str | Path) -> Iterator[None]:
    """Within the block, wandb stages the media of logged tables (our images, kept as artifact
    files until ``wandb sync``) under ``<save_dir>/wandb/data`` instead of the user's
    ~/.local/share/wandb, unless the user set ``WANDB_DATA_DIR``. wandb (0.31) reads that
    folder from the environment only, so it is set for the block and restored after it."""
    if os.environ.get("WANDB_DATA_DIR"):
        yield
        return
    os.environ["WANDB_DATA_DIR"] = str(Path(save_dir) / "wandb" / "data")
    try:
        yield
    finally:
        os.environ.pop("WANDB_DATA_DIR", None)


def log_results(
    logger: Any,
    cfg: dict[str, Any],
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    columns: list[str],
    output_dir: Path,
    max_images: int,
) -> None:
    """Log the resolved config, the table of rows (with images), per-item grids and the summary.

    wandb: ``results`` is a table whose ``input``, ``output`` and ``reconstruction`` cells are
    images (for the first ``max_images`` rows), ``grids`` one image per item (the first
    ``max_images`` items; see :func:`item_grid`), ``summary`` the summary table, and the run
    summary holds every ``<variant>/<metric>_mean``. wandb keeps logged tables in a run
    artifact (staged under ``<output_dir>/wandb/data`` until ``wandb sync``; the copy under
    ``files/media/table`` is wandb's text-only stub), and the grid PNGs under
    ``files/media/images/``.
    """
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        with wandb_staging(logger.save_dir):
            _log_to_wandb(logger, rows, summary, columns, output_dir, max_images)
    elif isinstance(logger, CSVLogger):
        for step, s in enumerate(summary):
            metrics = {f"{s['variant']}/{k}": float(v) for k, v in s.items() if k.endswith("_mean") and v is not None}
            metrics.update({f"{s['variant']}/ok": float(s["ok"]), f"{s['variant']}/failed": float(s["failed"])})
            logger.log_metrics(metrics, step=step)
        logger.save()
    logger.finalize("success")


def _log_to_wandb(
    logger: Any,
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    columns: list[str],
    output_dir: Path,
    max_images: int,
) -> None:
    import wandb

    image_cols = {"input": "input_path", "output": "output_path", "reconstruction": "reconstruction_path"}
    table_cols = [c for c in columns if c not in image_cols.values()]
    table = wandb.Table(columns=table_cols + list(image_cols))
    for n, row in enumerate(rows):
        pics = []
        for key in image_cols.values():
            path = output_dir / str(row.get(key) or "")
            pics.append(wandb.Image(str(path)) if row.get(key) and path.is_file() and n < max_images else None)
        table.add_data(*[_table_cell(row.get(c)) for c in table_cols], *pics)
    scols = list(summary[0]) if summary else []
    stable = wandb.Table(columns=scols, data=[[_table_cell(s.get(c)) for c in scols] for s in summary])
    grids = {}  # one key per item: grids differ in size (targets, seeds)
    for item_id in list(dict.fromkeys(str(r["item_id"]) for r in rows))[:max_images]:
        grid, caption = item_grid([r for r in rows if str(r["item_id"]) == item_id], output_dir)
        if grid is not None:
            grids[f"grids/{item_dir(item_id)}"] = wandb.Image(grid, caption=caption)
    run = logger.experiment
    run.log({"results": table, "summary": stable, **grids})
    for s in summary:
        for key, value in s.items():
            if key.endswith("_mean") and value is not None:
                run.summary[f"{s['variant']}/{key}"] = value
    run.finish()


def item_grid(rows: Sequence[dict[str, Any]], output_dir: Path) -> tuple[Image.Image | None, str]:
    """One item's images as one picture: a row per (target, seed index), a column per variant.

    Column 0 is the input, then each variant's edit (its reconstruction, when saved, in a
    first row beside the input). Missing images (failed rows) stay grey. Returns the grid and a
    caption naming the columns and rows, or (None, "") when the item has no image on disk.
    """

    def load(rel: Any) -> Image.Image | None:
        path = output_dir / str(rel or "")
        return Image.open(path).convert("RGB") if rel and path.is_file() else None

    variants = list(dict.fromkeys(str(r["variant"]) for r in rows))
    lines = sorted({(int(r["target_index"]), int(r["seed_index"])) for r in rows})
    inp = next((img for r in rows if (img := load(r.get("input_path"))) is not None), None)
    cells: dict[tuple[int, int], Image.Image] = {}
    recon_row = any(r.get("reconstruction_path") for r in rows)
    offset = 1 if recon_row else 0
    prompts = {}
    for r in rows:
        line = lines.index((int(r["target_index"]), int(r["seed_index"]))) + offset
        prompts[line] = f"{r.get('target_prompt', '')}" + (f" (seed {r['seed_index']})" if int(r["seed_index"]) else "")
        col = variants.index(str(r["variant"])) + 1
        img = load(r.get("output_path"))
        if img is not None:
            cells[(line, col)] = img
        rec = load(r.get("reconstruction_path"))
        if rec is not None and int(r["target_index"]) == 0 and int(r["seed_index"]) == 0:
            cells[(0, col)] = rec
    if inp is not None:
        cells[(0, 0)] = inp
    if not cells:
        return None, ""
    w, h = next(iter(cells.values())).size
    pad = 2
    n_rows, n_cols = len(lines) + offset, len(variants) + 1
    grid = Image.new("RGB", (n_cols * (w + pad) + pad, n_rows * (h + pad) + pad), (128, 128, 128))
    for (line, col), img in cells.items():
        grid.paste(img.resize((w, h)), (pad + col * (w + pad), pad + line * (h + pad)))
    head = "columns: input, " + ", ".join(variants)
    body = "; ".join(f"row {k + 1}: {prompts[k]}" for k in sorted(prompts))
    caption = f"{rows[0]['item_id']} ({head}; {'row 1: reconstructions; ' if recon_row else ''}{body})"
    return grid, caption


def _table_cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
