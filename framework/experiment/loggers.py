"""Experiment tracking: the Lightning logger of a run, and what rank 0 logs to it at the end."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image

from framework.errors import ConfigError
from framework.experiment.plan import item_dir

_USER_WANDB_DATA_DIR = os.environ.get("WANDB_DATA_DIR")
LOGGER_DEFAULTS = {"name": "wandb", "mode": "offline", "project": "editfriendly"}
#: logger keys the runner reads itself: how many rows/items get images in wandb, and whether
#: to compute and save a reconstruction (the edit with the source prompt) of every variant when
#: no metric needs one
LOGGER_RUNNER_KEYS = ("max_table_images", "reconstructions")


def build_logger(cfg: Any, output_dir: Path, run_name: str) -> Any:
    """``logger`` config -> a Lightning logger (wandb offline by default), or None."""
    if cfg is None:
        cfg = dict(LOGGER_DEFAULTS)
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    name = str(cfg.pop("name", "wandb")).lower()
    for key in LOGGER_RUNNER_KEYS:  # read by the runner, not by the logger class
        cfg.pop(key, None)
    if name in ("none", "false", "off", "null"):
        return None
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        # keys of other loggers (mode, project, ...) are ignored: switching logger.name=csv keeps working
        extra = {k: cfg[k] for k in ("version", "flush_logs_every_n_steps", "prefix") if k in cfg}
        return CSVLogger(save_dir=str(cfg.get("save_dir", output_dir)), name=cfg.get("run_name", "csv_logs"), **extra)
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = str(cfg.pop("mode", "offline"))
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode must be offline, online or disabled, got {mode!r}")
        kwargs = {"project": cfg.pop("project", "editfriendly"), "save_dir": str(cfg.pop("save_dir", output_dir))}
        kwargs["name"] = cfg.pop("run_name", run_name)
        # Pass the mode to wandb.init itself: Lightning's offline flag only sets WANDB_MODE, which
        # a wandb singleton created earlier in the process (another run, a compare) never re-reads.
        kwargs["mode"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        # wandb stages the media of logged tables (our images) as artifact files until `wandb sync`;
        # keep them inside the run folder instead of the user's ~/.local/share/wandb
        if not _USER_WANDB_DATA_DIR:
            os.environ["WANDB_DATA_DIR"] = str(Path(kwargs["save_dir"]) / "wandb" / "data")
        return WandbLogger(offline=(mode == "offline"), **kwargs, **cfg)
    raise ConfigError(f"unknown logger {name!r}; accepted: wandb, csv, none")


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
    elif isinstance(logger, CSVLogger):
        for step, s in enumerate(summary):
            metrics = {f"{s['variant']}/{k}": float(v) for k, v in s.items() if k.endswith("_mean") and v is not None}
            metrics.update({f"{s['variant']}/ok": float(s["ok"]), f"{s['variant']}/failed": float(s["failed"])})
            logger.log_metrics(metrics, step=step)
        logger.save()
    logger.finalize("success")


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
