"""The experiment runner: ``editfriendly run CONFIG [key=value ...]``.

``Trainer.predict`` (any accelerator, devices, strategy and nodes Lightning supports) runs
:class:`~framework.experiment.module.EditModule` over the items of a
:class:`~framework.experiment.data.EditDataModule`; each ``predict_step`` takes one item and
returns its rows; the :class:`~framework.experiment.writer.ResultsWriter` callback saves the
images and appends the rows (:mod:`framework.experiment.results` describes the crash-safe,
resumable scheme, :mod:`framework.experiment.resume` which rows a resumed run reuses). Rank 0
holds the output folder's lock (:mod:`framework.experiment.lock`) for the whole run, merges
``results.csv`` and ``summary.csv`` (:func:`finalize`), logs them
(:mod:`framework.experiment.loggers`) and says how many rows it computed and reused.

Determinism: the seed of an item is a hash of the run seed and the item id (and the seed
index for ``seeds: S``), so rows and images do not depend on the rank, the number of
processes or the order. All noise is drawn on the CPU (framework.random).

Tracking: ``logger: {name: wandb, mode: offline}`` (the default; ``wandb sync
<output_dir>/wandb/offline-run-*`` uploads later), ``{name: csv}`` or ``{name: none}``; each
logger's defaults are its preset in ``configs/logger/``. The wandb table is built by rank 0
after every rank has finished, from the merged results and the images on disk, so images from
every rank reach it (on several nodes ``output_dir`` must be on a shared file system, as it
must for the results anyway).

The Trainer runs with ``inference_mode=False`` (predict then uses ``torch.no_grad``), so an
editor that needs gradients can switch them on with ``torch.enable_grad()``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from framework import schema
from framework.config import read_yaml_data
from framework.dataset import Item, build_dataset
from framework.errors import ConfigError, EditFriendlyError
from framework.experiment.data import EditDataModule, shard
from framework.experiment.lock import TOKEN_ENV, RunLock, join_run
from framework.experiment.loggers import LOGGER_DEFAULTS, build_logger, log_results, quiet_libraries
from framework.experiment.module import EditModule
from framework.experiment.plan import Variant, build_metrics, expand_methods, metric_configs, sweep_columns
from framework.experiment.results import (
    OPTIONAL_COLUMNS,
    columns_for,
    current_rows,
    merge_rows,
    parts_dir,
    read_rows,
    write_csv,
)
from framework.experiment.resume import ItemDigest, ResumePlan, item_digests, plan_resume
from framework.experiment.writer import ResultsWriter
from framework.stats import summarize, summary_columns

log = logging.getLogger(__name__)

#: the trainer of a run whose config sets none of these (framework.schema.TrainerConfig)
TRAINER_DEFAULTS = schema.trainer_defaults()


# ----------------------------------------------------------------------------- config


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
    output_dir: Path,
    variants: Sequence[Variant],
    metric_cols: Sequence[str],
    items: Sequence[Item],
    digests: dict[str, ItemDigest] | None = None,
) -> RunOutcome:
    """Merge the part files into results.csv and summary.csv (rank 0, after every rank ended).

    Only rows computed from the items as they are now are merged (``digests``: item id ->
    :class:`~framework.experiment.resume.ItemDigest`, computed here when not given); rows of
    removed or edited items stay in the part files only."""
    order = {v.label: v.index for v in variants}
    wanted = {v.label: v.setting for v in variants}
    ids = {i.id for i in items}
    if digests is None:
        digests = item_digests(items)
    current = current_rows(read_rows(output_dir), {k: d.item for k, d in digests.items()})
    rows = merge_rows(current, order)
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

        def show(v: Any) -> str:
            return (json.dumps(v, default=str) if not isinstance(v, str) else v)[:60]

        return [f"{prefix.rstrip('.')}: {show(old)} -> {show(new)}"]
    return []


def config_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How the run config ``new`` differs from ``old`` beyond what may change between runs
    into one output_dir: the runtime keys (trainer, logger, output_dir) and methods added or
    left out. A method kept under its name must be unchanged."""
    def strip(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if k not in schema.RUNTIME_KEYS and k != "methods"}

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
        old = read_yaml_data(config)  # written resolved: read as it is, nothing interpolated again
    except Exception:
        old = {}
    diffs = config_conflicts(old if isinstance(old, dict) else {}, plain)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ConfigError(
            f"output_dir {output_dir} holds a run of another configuration ({shown}); choose another "
            "output_dir, or add --force to run into it anyway (its rows are kept; the new ones go "
            "beside them, summarised apart by setting)"
        )


def plan_prompt_check(
    backbone_cfg: dict[str, Any], variants: Sequence[Variant], items: Sequence[Item]
) -> dict[str, str] | None:
    """Check every item's prompts and every method's prompt options against the backbone's text
    encoder before the trainer starts (:func:`framework.prompts.check_run_prompts`): a bad option
    is a ConfigError, bad items are returned ({item id: error}, recorded as failed). None when
    the backbone's tokenizer cannot be read without loading the model: each process then checks
    with the loaded model, before its first item."""
    from framework.backbone import load_prompt_rules
    from framework.prompts import check_run_prompts
    from framework.registry import EDITORS, INVERTERS

    rules = load_prompt_rules(backbone_cfg)
    if rules is None:
        return None
    methods = [(v.label, (INVERTERS.build(v.inverter), EDITORS.build(v.editor))) for v in variants]
    return check_run_prompts(rules, methods, items)


#: where cluster launchers put a process's global rank (or its node's rank)
LAUNCHER_RANK_VARIABLES = (
    "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK",
)


def claim_folder(output_dir: Path) -> RunLock | None:
    """Lock ``output_dir`` for this run, unless this process joins a run that holds it: a process
    the trainer started (it carries the run's token) or a process that a cluster launcher started
    as another rank than 0. Raises FolderInUseError (exit 2) when another run holds the folder."""
    if os.environ.get(TOKEN_ENV):
        join_run(output_dir)
        return None
    if launcher_rank() > 0:
        return None
    return RunLock(output_dir).acquire()


def launcher_rank() -> int:
    """The global rank that a cluster launcher (torchrun, SLURM, MPI, Lightning's variables)
    gave this process, 0 when none did."""
    for name in LAUNCHER_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    return 0


def take_over(output_dir: Path, plain: dict[str, Any], force: bool) -> None:
    """Under the lock, before any work: refuse a folder of another configuration (unless
    ``force``) and remove the temporary files a killed run left."""
    from framework.outputs import remove_temp_files

    check_earlier_run(output_dir, plain, force)
    remove_temp_files(output_dir)


def run_experiment(
    cfg: DictConfig,
    experiment: Path | None = None,
    force: bool = False,
    progress: bool = True,
    callbacks: Sequence[pl.Callback] = (),
) -> int:
    """Run a composed experiment config; returns the exit status (1 when any row failed).

    ``force``: run even into an output_dir holding a run of another configuration.
    ``callbacks``: more Lightning callbacks, called after the :class:`ResultsWriter` (so in
    ``on_predict_batch_end`` the item's rows are on disk; the tests kill a run this way).
    """
    from framework.config import save_config_history
    from framework.outputs import (
        WRITE_ERRNOS,
        OutputWriteError,
        check_output_dir,
        make_output_dir,
        write_error,
    )
    from framework.progress import interactive
    from framework.random import check_seed

    quiet_libraries()

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    if "data" not in plain or not isinstance(plain["data"], dict):
        raise ConfigError("the experiment needs data: {name: yaml_list|pie_bench|folder, path: ...}")
    plain["data"] = resolve_data_path(plain["data"], experiment)
    output_dir = Path(str(plain.get("output_dir") or schema.RUN_DEFAULTS["output_dir"]))
    seed = check_seed(plain.get("seed", schema.RUN_DEFAULTS["seed"]))
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
    for key in schema.RUNNER_TRAINER_KEYS:  # also checked by compose(kind="run"); run_experiment is public
        if key in trainer_cfg:
            raise ConfigError(f"trainer.{key} is set by the runner; remove it from the config")

    prompt_problems = plan_prompt_check(backbone_cfg, variants, items)

    threads = plain.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer (CPU threads per process) or null, got {threads!r}")
    check_output_dir(output_dir, "output_dir")
    logger_cfg = plain.get("logger")
    opts = logger_cfg if isinstance(logger_cfg, dict) else {}
    opts = {**schema.RUNNER_LOGGER_DEFAULTS, **opts}
    max_images = int(opts["max_table_images"])
    recon = opts["reconstructions"]
    if recon not in ("auto", True, False):
        raise ConfigError(f"logger.reconstructions must be auto, true or false, got {recon!r}")
    # auto: save (and log) the reconstructions that a metric computes anyway
    save_recon = recon is True or (recon == "auto" and any(m.needs_reconstruction for m in metrics))
    digests = item_digests(items)  # what each item's rows are computed from (framework.experiment.resume)
    created = not output_dir.exists()
    make_output_dir(output_dir, "output_dir")
    # the process that starts the run holds the folder's lock for the whole run (before the
    # trainer exists, so that a refused run prints nothing but its error line)
    lock = claim_folder(output_dir)
    try:
        if lock is not None:
            take_over(output_dir, plain, force)
        logger = build_logger(logger_cfg, output_dir, output_dir.name)
        writer = ResultsWriter(output_dir)
        all_callbacks: list[pl.Callback] = [writer]
        # progress bars on a terminal only (Lightning's items bar on stdout, the steps bar on stderr)
        show = progress and trainer_cfg.get("enable_progress_bar", True) is not False
        show = show and interactive(sys.stdout, sys.stderr)
        if show:
            from lightning.pytorch.callbacks import TQDMProgressBar

            all_callbacks.append(TQDMProgressBar())  # tqdm, so that the steps bar nests under it
        all_callbacks += list(callbacks)
        try:
            trainer = pl.Trainer(
                **{**trainer_cfg, **({} if show else {"enable_progress_bar": False})},
                logger=logger if logger is not None else False,
                callbacks=all_callbacks,
                inference_mode=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                default_root_dir=str(output_dir),
                use_distributed_sampler=False,  # EditDataModule shards the items itself
            )
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else exc
            raise ConfigError(f"bad trainer config {trainer_cfg}: {first_line}") from None
        if lock is not None and not trainer.is_global_zero:  # a launcher variable this code does not know
            lock.release()
            lock = None
        elif lock is None and trainer.is_global_zero and not os.environ.get(TOKEN_ENV):
            lock = RunLock(output_dir).acquire()
            take_over(output_dir, plain, force)
        if trainer.is_global_zero:
            save_config_history(plain, output_dir)  # resolved already: written as it is
        # rank 0 checks every item (for the message); another rank only the items it runs
        mine = items
        if not trainer.is_global_zero:
            mine = [i for i in shard(items, trainer.global_rank, trainer.world_size) if i is not None]
        resume = plan_resume(output_dir, read_rows(output_dir), variants, mine, digests)
        if logger is not None:
            logger.log_hyperparams(plain)  # rank 0 only (Lightning's loggers are rank-zero)
        module = EditModule(
            backbone_cfg, variants, metric_cfgs, str(output_dir), seed, plain.get("image_size"),
            save_reconstructions=save_recon, show_steps=show, threads=threads, done=resume.done, digests=digests,
            prompt_problems=prompt_problems,
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
            return 0  # rank 0 reports (a process ending with another status would get rank 0 killed)
        if writer.errors:  # a full disk or an I/O error on some process: one line, exit 1
            more = len(writer.errors) - 1
            raise writer.error or OutputWriteError.from_message(
                writer.errors[0] + (f" (and {more} more processes failed to write)" if more else "")
            )
        metric_cols = [c for m in metrics for c in getattr(m, "columns", ())]
        outcome = finalize(output_dir, variants, metric_cols, items, digests)
        if logger is not None:
            log_results(logger, plain, outcome.rows, outcome.summary, outcome.columns, output_dir, max_images)
    except OSError as exc:  # a full disk or an I/O error outside the writer: one line, exit 1
        if isinstance(exc, EditFriendlyError) or exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(output_dir, exc) from None
    finally:
        if lock is not None:
            lock.release()
        close_process_group()
    return report(outcome, resume)


def close_process_group() -> None:
    """Destroy this process' torch.distributed group, if a multi-process run made one, once the
    run's collectives are over: its communication threads are then joined here, not torn down
    with the interpreter (which aborted a process now and then: "terminate called without an
    active exception", exit -6, after a correct error line)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report(outcome: RunOutcome, resume: ResumePlan) -> int:
    """Print what the run wrote, computed and reused (and why it recomputed rows, and which
    rows failed) to stderr; the exit status (1 when a row of this configuration failed)."""
    total = len(outcome.rows)
    kept = total - resume.todo - resume.reused
    counts = f"{resume.todo} computed, {resume.reused} reused"
    if kept > 0:
        counts += f", {kept} of other settings kept"
    print(f"wrote {outcome.results_csv} ({total} rows: {counts}) and {outcome.summary_csv}", file=sys.stderr)
    why = resume.describe()
    if why:
        print(why, file=sys.stderr)
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
        head = rest.split(".", 1)[0]
        if head not in schema.METHOD_KEYS:
            raise ConfigError(
                f"unknown key {head!r} in {item!r}{schema.suggest(head, schema.METHOD_KEYS)} "
                f"(a method takes: {', '.join(sorted(schema.METHOD_KEYS))})"
            )
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
