"""The experiment runner: ``editfriendly run CONFIG [key=value ...]``.

``Trainer.predict`` (any accelerator, devices, strategy and nodes Lightning supports) runs
:class:`EditModule` over the items of a :class:`~framework.experiment.data.EditDataModule`; each
``predict_step`` takes one item, inverts it once per shared inversion
(:func:`framework.experiment.plan.inversion_groups`), runs every method and sweep point and every
target from it, decodes, scores with the configured metrics, and returns rows; the
:class:`ResultsWriter` callback saves the images and appends the rows
(:mod:`framework.experiment.results` describes the crash-safe, resumable scheme). Rank 0 then
merges ``results.csv`` and ``summary.csv`` and logs them.

Determinism: the seed of an item is a hash of the run seed and the item id (and the seed
index for ``seeds: S``), so rows and images do not depend on the rank, the number of
processes or the order. All noise is drawn on the CPU (framework.random).

Tracking: ``logger: {name: wandb, mode: offline}`` (the default; ``wandb sync
<output_dir>/wandb/offline-run-*`` uploads later), ``{name: csv}`` or ``{name: none}``. The
wandb table is built by rank 0 after every rank has finished, from the merged results and the
images on disk, so images from every rank reach it (on several nodes ``output_dir`` must be on a
shared file system, as it must for the results anyway).

The Trainer runs with ``inference_mode=False`` (predict then uses ``torch.no_grad``), so an
editor that needs gradients can switch them on with ``torch.enable_grad()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from framework.errors import ConfigError, EditFriendlyError
from framework.experiment.data import EditDataModule, Item, build_dataset, fit_mask, item_seed
from framework.experiment.plan import Variant, expand_methods, inversion_groups, safe_name, sweep_columns
from framework.experiment.results import (
    OPTIONAL_COLUMNS,
    PartWriter,
    parts_dir,
    columns_for,
    done_keys,
    merge_rows,
    read_rows,
    summarize,
    summary_columns,
    write_csv,
)

log = logging.getLogger(__name__)

#: test hook: a process exits abruptly (no cleanup) after writing this many items
CRASH_ENV = "EDITFRIENDLY_RUN_CRASH_AFTER"
TRAINER_DEFAULTS = {"accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1}
_USER_WANDB_DATA_DIR = os.environ.get("WANDB_DATA_DIR")
LOGGER_DEFAULTS = {"name": "wandb", "mode": "offline", "project": "editfriendly"}
#: logger keys the runner reads itself: how many rows/items get images in wandb, and whether
#: to compute and save a reconstruction (the edit with the source prompt) of every variant when
#: no metric needs one
LOGGER_RUNNER_KEYS = ("max_table_images", "reconstructions")
#: top-level keys a run config may have (key=value overrides of other keys are refused)
RUN_KEYS = (
    "backbone", "inverter", "editor", "num_steps", "skip", "seed", "data", "methods", "metrics",
    "trainer", "logger", "output_dir", "image_size", "threads",
)
#: keys that may change between runs into one output_dir (they do not change any row)
RUNTIME_KEYS = ("trainer", "logger", "output_dir", "threads")


# ----------------------------------------------------------------------------- config


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


def resolve_data_path(data: dict[str, Any], experiment: Path | None) -> dict[str, Any]:
    """Make ``data.path`` absolute: as given (from the working directory), else beside the
    experiment file, else under the project root (the folder holding ``configs/``)."""
    from framework.config import config_dir

    data = dict(data)
    for key in ("path", "image_root", "captions"):
        value = data.get(key)
        if not value or Path(value).is_absolute():
            continue
        candidates = [Path(value)]
        if experiment is not None:
            candidates.append(experiment.parent / value)
        candidates.append(config_dir().parent / value)
        for c in candidates:
            if c.exists():
                data[key] = str(c.resolve())
                break
    return data


def find_experiment(config: str) -> Path:
    """A path to an experiment YAML, or the name of one in ``configs/experiment/``. A folder of
    that name (e.g. a run's output folder in the working directory) is not a config file."""
    from framework.config import config_dir

    p = Path(config)
    if p.is_file():
        return p
    named = config_dir() / "experiment" / f"{config}.yaml"
    if named.exists():
        return named
    known = sorted(x.stem for x in (config_dir() / "experiment").glob("*.yaml"))
    raise ConfigError(f"experiment config not found: {config} (a YAML file, or one of: {', '.join(known) or 'none'})")


# ----------------------------------------------------------------------------- module


def _timed(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return text[:500]


def item_dir(item_id: str) -> str:
    """The relative folder of an item id (path components made safe)."""
    safe = "/".join(safe_name(part) for part in item_id.replace("\\", "/").split("/") if part not in ("", ".", "..")) or "item"
    if safe != item_id:  # keep ids that differ only in unsafe characters apart
        safe += "-" + hashlib.sha1(item_id.encode()).hexdigest()[:6]
    return safe


class EditModule(pl.LightningModule):
    """predict_step(item) -> rows (dicts; ``_image``/``_input`` hold PIL images to save)."""

    def __init__(
        self,
        backbone_cfg: dict[str, Any],
        variants: Sequence[Variant],
        metric_cfgs: Sequence[dict[str, Any]],
        output_dir: str,
        seed: int,
        image_size: Any = None,
        save_reconstructions: bool = False,
        show_steps: bool = False,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone_cfg = dict(backbone_cfg)
        self.variants = list(variants)
        self.groups = inversion_groups(self.variants)
        self.metric_cfgs = list(metric_cfgs)
        self.output_dir = str(output_dir)
        self.run_seed = int(seed)
        self.image_size = image_size
        self.save_reconstructions = bool(save_reconstructions)
        self.show_steps = bool(show_steps)
        self.threads = threads
        self.backbone: Any = None

    # Lightning moves the (parameter-free) module to its device before this hook.
    def on_predict_start(self) -> None:
        from framework.backbone import load_backbone
        from framework.registry import EDITORS, INVERTERS

        device = self.device
        if self.threads:
            # after Lightning's own choice (DDP on CPUs: cores // processes): float sums depend
            # on the thread count, so 1 and N processes agree only with the same count
            torch.set_num_threads(self.threads)
        self.backbone = load_backbone(self.backbone_cfg, device=device)
        self.inverters = {json.dumps(v.inverter, sort_keys=True): INVERTERS.build(v.inverter) for v in self.variants}
        self.editors = {json.dumps(v.editor, sort_keys=True): EDITORS.build(v.editor) for v in self.variants}
        self.metrics = build_metrics(self.metric_cfgs)
        for m in self.metrics:
            m.setup(device)
        self.needs_reconstruction = self.save_reconstructions or any(m.needs_reconstruction for m in self.metrics)
        self.done = done_keys(self.output_dir)

    def predict_step(self, item: Item | None, batch_idx: int = 0) -> list[dict[str, Any]]:
        if item is None:  # an idle rank's placeholder (more devices than items)
            return []
        from framework.progress import progress_bars

        # rank 0 shows the denoising steps of the current item under the items bar
        with torch.no_grad(), progress_bars(self.show_steps and self.global_rank == 0):
            return self.process(item)

    # -- one item
    def _missing(self, item: Item) -> list[Variant]:
        """Variants with any row of this item not yet done (they are redone as a whole)."""
        out = []
        for v in self.variants:
            keys = [
                (item.id, v.label, v.setting, k, s) for k in range(len(item.target_prompts)) for s in range(v.seeds)
            ]
            if any(key not in self.done for key in keys):
                out.append(v)
        return out

    def _row(self, item: Item, v: Variant, k: int, s: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "item_id": item.id,
            "method": v.method,
            "variant": v.label,
            "setting": v.setting,
            "target_index": k,
            "target_prompt": item.target_prompts[k],
            "source_prompt": item.source_prompt,
            "seed_index": s,
            "seed": item_seed(self.run_seed, item.id, s),
            "num_steps": v.num_steps,
            "skip": v.skip,
            "status": "ok",
            "error": "",
            "input_path": "",
            "output_path": "",
        }
        row.update(v.sweep)
        for key, value in item.extras.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                row[f"data.{key}"] = value
        return row

    def process(self, item: Item) -> list[dict[str, Any]]:
        from framework.cli import slug
        from framework.images import fit_image, load_image, parse_size, pil_to_tensor, tensor_to_pil
        from framework.metrics import MetricInput
        from framework.pipeline import seeds_for

        todo = self._missing(item)
        if not todo:
            return []
        backbone = self.backbone
        device = backbone.device
        idir = item_dir(item.id)
        input_rel = f"images/inputs/{idir}.png"

        def failed(variants: Sequence[Variant], error: str, input_path: str = "") -> list[dict[str, Any]]:
            rows = []
            for v in variants:
                for s in range(v.seeds):
                    for k in range(len(item.target_prompts)):
                        row = self._row(item, v, k, s)
                        row.update(status="failed", error=error, input_path=input_path)
                        rows.append(row)
            return rows

        # load the image (and mask) lazily: a bad file fails this item only
        try:
            pil = load_image(item.image_path)
            fitted = fit_image(pil, parse_size(self.image_size), backbone.resolution, backbone.size_multiple)
            image = pil_to_tensor(fitted)
            mask = fit_mask(item.mask(), pil.size, fitted.size) if item.mask is not None else None
            if not item.target_prompts:
                raise ConfigError("the item has no target prompts")
            x0 = backbone.encode_image(image.to(device))
        except Exception as exc:  # noqa: BLE001 - isolate the item
            log.warning("item %s failed: %s", item.id, _error_text(exc))
            return failed(todo, _error_text(exc))
        input_image = tensor_to_pil(image)[0]

        results: dict[tuple[str, int], dict[str, Any]] = {}
        errors: dict[tuple[str, int], str] = {}
        for group in self.groups:
            members = [v for v in group.members if v in todo]
            if not members:
                continue
            s = group.seed_index
            inv_gen, _ = seeds_for(item_seed(self.run_seed, item.id, s))
            inverter = self.inverters[json.dumps(group.inverter, sort_keys=True)]
            try:
                nfe0, t0 = backbone.nfe, _timed(device)
                inversion = inverter.invert(
                    backbone, x0, item.source_prompt, num_steps=group.num_steps, skip=group.skip, generator=inv_gen
                )
                inv_seconds, inv_nfe = _timed(device) - t0, backbone.nfe - nfe0
            except Exception as exc:  # noqa: BLE001
                log.warning("inversion of %s failed: %s", item.id, _error_text(exc))
                for v in members:
                    errors[(v.label, s)] = _error_text(exc)
                continue
            for v in members:
                editor = self.editors[json.dumps(v.editor, sort_keys=True)]
                try:
                    _, edit_gen = seeds_for(item_seed(self.run_seed, item.id, s))
                    nfe0, t0 = backbone.nfe, _timed(device)
                    latents = editor.edit(
                        backbone, inversion, item.source_prompt, list(item.target_prompts), skip=v.skip, generator=edit_gen
                    )
                    edit_seconds, edit_nfe = _timed(device) - t0, backbone.nfe - nfe0
                    images = backbone.decode(latents).float().cpu()
                    recon = None
                    if self.needs_reconstruction:
                        _, rec_gen = seeds_for(item_seed(self.run_seed, item.id, s))
                        rec = editor.edit(
                            backbone, inversion, item.source_prompt, [item.source_prompt], skip=v.skip, generator=rec_gen
                        )
                        recon = backbone.decode(rec).float().cpu()
                except Exception as exc:  # noqa: BLE001
                    log.warning("edit of %s by %s failed: %s", item.id, v.label, _error_text(exc))
                    errors[(v.label, s)] = _error_text(exc)
                    continue
                results[(v.label, s)] = {
                    "images": images,
                    "recon": recon,
                    "timing": {
                        "inversion_seconds": inv_seconds,
                        "inversion_nfe": inv_nfe,
                        "edit_seconds": edit_seconds,
                        "edit_nfe": edit_nfe,
                        "num_targets": len(item.target_prompts),
                    },
                }

        rows: list[dict[str, Any]] = []
        source = image.float().cpu()
        for v in todo:
            outs = [results.get((v.label, s)) for s in range(v.seeds)]
            if any(o is None for o in outs):
                err = next(errors[(v.label, s)] for s in range(v.seeds) if (v.label, s) in errors)
                rows += failed([v], err, input_rel)
                continue
            samples = torch.stack([o["images"] for o in outs], dim=1) if v.seeds > 1 else None  # (K, S, 3, H, W)
            values: dict[int, list[dict[str, Any]]] = {s: [{} for _ in item.target_prompts] for s in range(v.seeds)}
            metric_errors: list[str] = []
            for metric in self.metrics:
                wants_samples = metric.needs_samples and samples is not None
                for s in range(1 if wants_samples else v.seeds):
                    batch = MetricInput(
                        source_image=source,
                        edited_images=outs[s]["images"],
                        source_prompt=item.source_prompt,
                        target_prompts=list(item.target_prompts),
                        mask=mask,
                        reconstruction=outs[s]["recon"],
                        timing=dict(outs[s]["timing"]),
                        samples=samples if metric.needs_samples else None,
                        extras={"item_id": item.id, "seed": item_seed(self.run_seed, item.id, s), **item.extras},
                    )
                    try:
                        got = metric.compute(batch)
                        if len(got) != len(item.target_prompts):
                            raise RuntimeError(f"returned {len(got)} rows for {len(item.target_prompts)} edits")
                    except Exception as exc:  # noqa: BLE001 - a metric bug must not lose the edit
                        name = getattr(metric, "registered_name", type(metric).__name__)
                        metric_errors.append(f"metric {name}: {_error_text(exc)}")
                        continue
                    for target_s in range(v.seeds) if wants_samples else [s]:
                        for k, d in enumerate(got):
                            values[target_s][k].update(d)
            for s in range(v.seeds):
                pils = tensor_to_pil(outs[s]["images"])
                suffix = f"_s{s}" if v.seeds > 1 else ""
                recon_rel, recon_pil = "", None
                if outs[s]["recon"] is not None and self.save_reconstructions:
                    recon_rel = f"images/{v.dirname}/{idir}/reconstruction{suffix}.png"
                    recon_pil = tensor_to_pil(outs[s]["recon"])[0]
                for k, target in enumerate(item.target_prompts):
                    if (item.id, v.label, v.setting, k, s) in self.done:
                        continue
                    row = self._row(item, v, k, s)
                    row["output_path"] = f"images/{v.dirname}/{idir}/{k:02d}_{slug(target)}{suffix}.png"
                    row["input_path"] = input_rel
                    row["error"] = "; ".join(metric_errors)
                    row.update({c: _plain_number(x) for c, x in values[s][k].items()})
                    row["_image"] = pils[k]
                    if recon_rel:
                        row["reconstruction_path"] = recon_rel
                        row["_reconstruction"] = recon_pil
                    rows.append(row)
        if rows:
            rows[0]["_input"] = input_image
        return rows


def _plain_number(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


# ----------------------------------------------------------------------------- writer


def save_image(img: Image.Image, path: Path) -> None:
    """Write a PNG atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


class ResultsWriter(BasePredictionWriter):
    """Saves each row's images, then appends the row to this rank's part file."""

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.part: PartWriter | None = None
        self.items_written = 0
        crash = os.environ.get(CRASH_ENV)
        self.crash_after = int(crash) if crash else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.part = PartWriter(self.output_dir, trainer.global_rank)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.part is not None
        if not prediction:
            return
        for row in prediction:
            row = dict(row)
            inp = row.pop("_input", None)
            img = row.pop("_image", None)
            rec = row.pop("_reconstruction", None)
            if inp is not None and row.get("input_path"):
                save_image(inp, self.output_dir / row["input_path"])
            if rec is not None and row.get("reconstruction_path"):
                save_image(rec, self.output_dir / row["reconstruction_path"])
            if img is not None and row.get("output_path"):
                save_image(img, self.output_dir / row["output_path"])
            self.part.write(row)
        self.items_written += 1
        if self.crash_after is not None and self.items_written >= self.crash_after:
            os._exit(17)  # simulate a killed run: no cleanup, no merge

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.part is not None:
            self.part.close()
            self.part = None
        trainer.strategy.barrier("editfriendly-results")


# ----------------------------------------------------------------------------- logging


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


# ----------------------------------------------------------------------------- command


@dataclasses.dataclass
class RunOutcome:
    """What a finished run reports (rank 0)."""

    rows: list[dict[str, Any]]  # every merged row (also rows of other settings kept from earlier runs)
    failed: list[dict[str, Any]]  # failed rows of this config
    summary: list[dict[str, Any]]
    columns: list[str]
    results_csv: Path
    summary_csv: Path


def finalize(
    output_dir: Path, variants: Sequence[Variant], metric_cols: Sequence[str], items: Sequence[Item]
) -> RunOutcome:
    """Merge the part files into results.csv and summary.csv (rank 0, after every rank ended)."""
    order = {v.label: v.index for v in variants}
    wanted = {v.label: v.setting for v in variants}
    ids = {i.id for i in items}
    rows = merge_rows(read_rows(output_dir), order)
    sweep = sweep_columns(variants)
    mcols = list(metric_cols)
    known = set(columns_for([], sweep, [])) | set(OPTIONAL_COLUMNS)
    for r in rows:  # metric columns the metrics did not announce
        for k in r:
            if k not in mcols and k not in known and not k.startswith("data."):
                mcols.append(k)
    columns = columns_for(rows, sweep, mcols)
    results_csv = write_csv(output_dir / "results.csv", rows, columns)
    current = [r for r in rows if wanted.get(r["variant"]) == r["setting"] and r["item_id"] in ids]
    # every row of results.csv is summarised (rows of another setting, kept from an earlier run
    # with --force, form groups of their own: the summary is keyed by variant and setting)
    summary = summarize(rows, sweep, mcols)
    summary_csv = write_csv(output_dir / "summary.csv", summary, summary_columns(sweep, mcols))
    failed = [r for r in current if r.get("status") != "ok"]
    return RunOutcome(rows, failed, summary, columns, results_csv, summary_csv)


def _diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two plain configs differ (``seed: 0 -> 1``), for error messages."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff_paths(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        show = lambda v: (json.dumps(v, default=str) if not isinstance(v, str) else v)[:60]  # noqa: E731
        return [f"{prefix.rstrip('.')}: {show(old)} -> {show(new)}"]
    return []


def config_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How the run config ``new`` differs from ``old`` beyond what may change between runs
    into one output_dir: the runtime keys (trainer, logger, output_dir) and methods added or
    left out. A method kept under its name must be unchanged."""
    def strip(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS and k != "methods"}

    diffs = _diff_paths(strip(old), strip(new))
    old_methods = {str(m.get("name")): m for m in old.get("methods") or [] if isinstance(m, dict)}
    for m in new.get("methods") or []:
        name = str(m.get("name"))
        if isinstance(m, dict) and name in old_methods:
            diffs += _diff_paths(old_methods[name], m, f"methods.{name}.")
    return diffs


def check_earlier_run(output_dir: Path, plain: dict[str, Any], force: bool) -> None:
    """Refuse to run into a folder that holds a run of another configuration (unless ``force``).

    The earlier run's config is its ``config.yaml``; rows (``parts/``, ``results.csv``) make
    it a run. Adding methods is allowed (the new rows go beside the old ones), as is another
    trainer or logger; anything that changes the rows of an existing method or the items
    (backbone, data, seed, metrics, a method's options, ...) is refused.
    """
    config = output_dir / "config.yaml"
    has_rows = (output_dir / "results.csv").is_file() or any(parts_dir(output_dir).glob("rows-*.jsonl"))
    if force or not has_rows or not config.is_file():
        return
    try:
        old = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    except Exception:  # noqa: BLE001 - an unreadable record is a conflict too
        old = {}
    diffs = config_conflicts(old if isinstance(old, dict) else {}, plain)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ConfigError(
            f"output_dir {output_dir} holds a run of another configuration ({shown}); choose another "
            "output_dir, or add --force to run into it anyway (its rows are kept; the new ones go "
            "beside them, summarised apart by setting)"
        )


def run_experiment(cfg: DictConfig, experiment: Path | None = None, force: bool = False, progress: bool = True) -> int:
    """Run a composed experiment config; returns the exit status (1 when any row failed).

    ``force``: run even into an output_dir holding a run of another configuration.
    """
    from framework.cli import check_output_dir, check_seed, make_output_dir
    from framework.config import save_config_history

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    if "data" not in plain or not isinstance(plain["data"], dict):
        raise ConfigError("the experiment needs data: {name: yaml_list|pie_bench|folder, path: ...}")
    plain["data"] = resolve_data_path(plain["data"], experiment)
    output_dir = Path(str(plain.get("output_dir") or "runs/experiment"))
    seed = check_seed(plain.get("seed", 0))
    backbone_cfg = plain.get("backbone")
    if backbone_cfg is None:
        raise ConfigError("the experiment needs a backbone, e.g. backbone: {name: tiny}")
    context = {"backbone": backbone_cfg, "seed": seed, "image_size": plain.get("image_size")}
    variants = expand_methods(plain, context)
    metric_cfgs = metric_configs(plain)
    metrics = build_metrics(metric_cfgs)  # validates names and options before any work
    trainer_cfg = {**TRAINER_DEFAULTS, **dict(plain.get("trainer") or {})}
    plain["trainer"] = trainer_cfg
    plain["metrics"] = metric_cfgs
    plain.setdefault("logger", dict(LOGGER_DEFAULTS))
    dataset = build_dataset(plain["data"])
    items = dataset.items()
    if not items:
        raise ConfigError(f"the dataset {plain['data']} has no items")
    for key in ("callbacks", "logger", "inference_mode", "use_distributed_sampler"):
        if key in trainer_cfg:
            raise ConfigError(f"trainer.{key} is set by the runner; remove it from the config")

    threads = plain.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer (CPU threads per process) or null, got {threads!r}")
    check_output_dir(output_dir, "output_dir")
    check_earlier_run(output_dir, plain, force)
    logger_cfg = plain.get("logger")
    opts = logger_cfg if isinstance(logger_cfg, dict) else {}
    max_images = int(opts.get("max_table_images", 1000))
    recon = opts.get("reconstructions", "auto")
    if recon not in ("auto", True, False):
        raise ConfigError(f"logger.reconstructions must be auto, true or false, got {recon!r}")
    # auto: save (and log) the reconstructions that a metric computes anyway
    save_recon = recon is True or (recon == "auto" and any(m.needs_reconstruction for m in metrics))
    created = not output_dir.exists()
    make_output_dir(output_dir, "output_dir")
    logger = build_logger(logger_cfg, output_dir, output_dir.name)
    writer = ResultsWriter(output_dir)
    callbacks: list[Any] = [writer]
    show = progress and trainer_cfg.get("enable_progress_bar", True) is not False
    if show:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar())  # tqdm, so that the steps bar nests under it
    try:
        trainer = pl.Trainer(
            **trainer_cfg,
            logger=logger if logger is not None else False,
            callbacks=callbacks,
            inference_mode=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=str(output_dir),
            use_distributed_sampler=False,  # EditDataModule shards the items itself
        )
    except Exception as exc:  # noqa: BLE001 - TypeError, ValueError, MisconfigurationException
        raise ConfigError(f"bad trainer config {trainer_cfg}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if trainer.is_global_zero:
        save_config_history(OmegaConf.create(plain), output_dir)
    if logger is not None:
        logger.log_hyperparams(plain)  # rank 0 only (Lightning's loggers are rank-zero)
    module = EditModule(
        backbone_cfg, variants, metric_cfgs, str(output_dir), seed, plain.get("image_size"),
        save_reconstructions=save_recon, show_steps=show, threads=threads,
    )
    data = EditDataModule(items)
    try:
        trainer.predict(module, datamodule=data, return_predictions=False)
    except EditFriendlyError:
        # e.g. weights not found: a folder this invocation made and no rank wrote a row into
        # is removed, so that a failed first run leaves nothing behind
        if trainer.is_global_zero and created and not read_rows(output_dir):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    if not trainer.is_global_zero:
        return 0
    metric_cols = [c for m in metrics for c in getattr(m, "columns", ())]
    outcome = finalize(output_dir, variants, metric_cols, items)
    if logger is not None:
        log_results(logger, plain, outcome.rows, outcome.summary, outcome.columns, output_dir, max_images)
    total = sum(1 for r in outcome.rows)
    print(f"wrote {outcome.results_csv} ({total} rows) and {outcome.summary_csv}", file=sys.stderr)
    if outcome.failed:
        by_item: dict[str, str] = {}
        for r in outcome.failed:
            by_item.setdefault(str(r["item_id"]), str(r.get("error") or "unknown error"))
        print(f"{len(outcome.failed)} of {total} rows failed ({len(by_item)} items):", file=sys.stderr)
        for item_id, err in by_item.items():
            print(f"  {item_id}: {err}", file=sys.stderr)
        return 1
    return 0


def apply_method_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``methods.<index or name>.<dotted key>=value`` overrides (e.g. methods.ef_text.num_steps=10).

    A ``num_steps`` override without a ``skip`` override of the same method keeps the
    proportion of the method's skip (36 of 100 -> 7 of 20, round half up)."""
    methods = cfg.get("methods")
    parsed_items = []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".", 2)
        if not sep or len(parts) < 3 or methods is None:
            raise ConfigError(f"a method override looks like methods.<index|name>.<key>=value, got {item!r}")
        which, rest = parts[1], parts[2]
        names = [str(m.get("name")) for m in methods]
        if which.isdigit() and int(which) < len(methods):
            index = int(which)
        elif which in names:
            index = names.index(which)
        else:
            raise ConfigError(f"{item!r}: no method {which!r}; methods are {', '.join(names)} (or their index)")
        parsed_items.append((index, rest, OmegaConf.from_dotlist([f"v={value}"])["v"]))
    skips = {index for index, rest, _ in parsed_items if rest == "skip"}
    for index, rest, parsed in parsed_items:
        if rest == "num_steps" and index not in skips:
            skip = scaled_method_skip(methods[index], parsed)
            OmegaConf.update(methods[index], "skip", skip, merge=False, force_add=True)
        OmegaConf.update(methods[index], rest, parsed, merge=True, force_add=True)


def scaled_method_skip(method: Any, num_steps: Any) -> Any:
    """The skip of a ``methods`` entry when an override sets only its num_steps."""
    from framework.config import apply_settings

    current = {k: method.get(k) for k in ("num_steps", "skip")}
    return apply_settings(current, {"num_steps": num_steps}).get("skip")


def cmd_run(args: argparse.Namespace) -> int:
    """``editfriendly run CONFIG [--no-progress] [--force] [key=value ...]``."""
    from framework.config import check_override_keys, compose, load_yaml

    rest = list(args.overrides)
    for flag in ("--no-progress", "--force"):
        if flag in rest:
            setattr(args, flag[2:].replace("-", "_"), True)
            rest = [o for o in rest if o != flag]
    flags = [o for o in rest if o.startswith("-")]
    if flags:
        raise ConfigError(
            f"unknown option {flags[0]!r} for run; accepted: --no-progress, --force, then key=value overrides"
        )
    experiment = find_experiment(args.config)
    overrides = [o for o in rest if not o.startswith("methods.")]
    method_overrides = [o for o in rest if o.startswith("methods.")]
    check_override_keys(overrides, set(RUN_KEYS) | set(load_yaml(experiment)), "run")
    cfg = compose(experiment=experiment, overrides=overrides)
    apply_method_overrides(cfg, method_overrides)
    if args.no_progress:
        cfg.trainer = {**(OmegaConf.to_container(cfg.trainer) if "trainer" in cfg else {}), "enable_progress_bar": False}
    return run_experiment(cfg, experiment, force=bool(getattr(args, "force", False)), progress=not args.no_progress)
