"""The ``editfriendly`` command, every subcommand's parser and handler: ``edit`` one photo,
``list`` the plugins, ``run`` an experiment, ``compare`` runs, serve the ``demo``.

The handlers are thin: they turn arguments into calls of the engine (:mod:`framework.edit`,
the runner, the report, the demo), which is imported only when its command runs, so building
the parser loads no torch, Lightning, matplotlib or Gradio (it reads the demo's default folder
from :mod:`framework.demo`, whose module level imports only the standard library). The engine
never imports this module (tests/test_cli.py checks both).

User errors (bad files, bad options, impossible step counts) print one ``error:`` line and
exit with status 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from framework.errors import ConfigError, EditFriendlyError, InputError
from framework.naming import slug
from framework.outputs import check_output_dir, make_output_dir
from framework.presets import preset_names

SIZE_POLICY = (
    "Any image size and mode (grayscale, RGBA, palette, 16-bit, ...) is accepted: it is converted "
    "to RGB (transparency over white) and, by default, center-cropped to a square and resized to "
    "the model's resolution (512 for SD 1.x), as the paper's code does. --size N or WxH instead "
    "scales the image to cover that size and center-crops it; sides must be multiples of the "
    "model's size multiple (64 for Stable Diffusion)."
)


def backbone_help() -> str:
    """The --backbone help: every preset of ``configs/backbone/``, the default marked."""
    from framework.schema import EditConfig  # the standard library only

    default = str(EditConfig().backbone)
    names = [f"{n} (default)" if n == default else n for n in preset_names("backbone")]
    return (
        f"a preset ({', '.join(names) or default}), a registered backbone, a hub id (owner/name) or a "
        "local diffusers folder. digits is the trained model that ships with the project (no download); "
        "tiny is random (its edits are noise: for tests)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``editfriendly`` parser with every subcommand (argparse only: nothing heavy loads)."""
    parser = argparse.ArgumentParser(
        prog="editfriendly",
        description="Edit real images with edit-friendly DDPM inversion (Huberman-Spiegelglas "
        "et al., CVPR 2024) and the methods it is compared with.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_edit_parser(sub)
    add_list_parser(sub)
    add_run_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
    return parser


def add_edit_parser(sub: argparse._SubParsersAction) -> None:
    """``editfriendly edit``: one image, one inversion, one or more target prompts."""
    edit = sub.add_parser(
        "edit",
        help="invert one image and edit it toward one or more target prompts",
        description="Invert IMAGE under the source prompt and regenerate it under each target "
        "prompt. " + SIZE_POLICY,
        epilog="Extra key=value arguments override the config, e.g. inverter.guidance_scale=2 "
        "editor.guidance_scale=9 backbone.dtype=float16 inverter=ddpm_edit_friendly_reference. "
        f"Inverter presets (inverter=NAME): {', '.join(preset_names('inverter'))}. "
        f"Editor presets (editor=NAME): {', '.join(preset_names('editor'))}. "
        "`editfriendly list` shows every plugin's options.",
    )
    edit.add_argument("--image", required=True, help="the input image file")
    edit.add_argument("--source", required=True, help="a prompt describing the input image")
    edit.add_argument(
        "--target", action="append", required=True, help="a target prompt (repeat for several)"
    )
    edit.add_argument("--backbone", help=backbone_help())
    edit.add_argument("--out", default=None, help="output folder (default: outputs/<image name>)")
    edit.add_argument("--seed", type=int, help="random seed (default 0)")
    edit.add_argument(
        "--steps",
        type=int,
        help="number of inference steps N (default 100, or the preset's: 50 for zero_shot); "
        "without --skip the skip keeps its proportion (36 of 100 -> 7 of 20, round half up)",
    )
    edit.add_argument(
        "--skip",
        type=int,
        help="T_skip: steps skipped at the noisy end (default 36, or the preset's: 12 for "
        "prompt_to_prompt_ef, 0 for ddim and zero_shot)",
    )
    edit.add_argument("--size", help="N or WxH: output size in pixels instead of the default policy")
    edit.add_argument("--device", help="cuda, cuda:1, cpu, mps or auto (default)")
    edit.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    edit.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def add_list_parser(sub: argparse._SubParsersAction) -> None:
    """``editfriendly list``: the registered plugins and presets."""
    lst = sub.add_parser("list", help="list every registered plugin with its options and defaults")
    lst.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``editfriendly run``: an experiment config over a dataset."""
    run = sub.add_parser(
        "run",
        help="run an experiment config: many images x methods x sweeps, on any number of devices",
        description="Run every method (and sweep point) of an experiment config over a dataset with "
        "Lightning's Trainer.predict; writes <output_dir>/results.csv, summary.csv, images/ and "
        "config.yaml (and config_history/). Running it again on the same output_dir does only the missing rows; "
        "a run of another configuration into it is refused unless --force.",
        epilog="Overrides: key=value, e.g. output_dir=runs/x seed=1 trainer.devices=2 logger.name=none.",
    )
    run.add_argument("config", help="an experiment YAML file or a name in configs/experiment/")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    run.add_argument(
        "--force",
        action="store_true",
        help="run even when output_dir holds a run of another configuration (its rows are kept; "
        "without --force such a run is refused; adding methods needs no --force)",
    )
    # REMAINDER: options may come after the overrides too (cmd_run picks --no-progress out of them)
    run.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="config overrides")


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """``editfriendly compare``: a report over one or more run directories."""
    p = sub.add_parser(
        "compare",
        help="compare run directories: methods × metrics table, CLIP-vs-LPIPS scatter, image grids",
        description="Read RUN_DIR/results.csv of each run and write report.md, report.html, summary.csv, "
        "the CLIP-vs-LPIPS scatter (the paper's Figure 10) and image grids (input | each method) to --out.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or results.csv files)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/compare, or compare_<a>_vs_<b> beside the runs)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--items", nargs="+", metavar="ID", help="item ids to show in image grids")
    sel.add_argument("--sample", type=int, default=4, metavar="N", help="grids for N items drawn at random (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the item sample (default 0)")
    p.add_argument("--metrics", nargs="+", metavar="COL", help="metric columns (default: detected)")
    p.add_argument("--params", nargs="+", metavar="COL", help="parameter columns (default: detected)")
    p.add_argument("--x", help="scatter x column (default: the run config's compare.x, else lpips)")
    p.add_argument("--y", help="scatter y column (default: the run config's compare.y, else clip_score)")
    p.add_argument(
        "--wandb", action="store_true", help="also log the report to wandb (offline unless --wandb-mode online)"
    )
    p.add_argument(
        "--no-wandb", action="store_true", help="do not log to wandb even if a run's config has a wandb logger"
    )
    p.add_argument("--wandb-project", help="wandb project (default: the run's logger.project or editfriendly)")
    p.add_argument("--wandb-mode", choices=["offline", "online", "disabled"], help="wandb mode (default offline)")


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``editfriendly demo``: the web page (argparse only: Gradio loads in :func:`cmd_demo`)."""
    from framework.demo import DEFAULT_OUT, DEFAULT_TIME_LIMIT_S  # demo.py imports only the standard library

    p = sub.add_parser(
        "demo",
        help="serve a web page to invert and edit an image interactively",
        description="Serve a Gradio page: upload an image (or click a shipped example), type the "
        "source and target prompts, pick an inverter and an editor, and compare the reconstruction "
        "and the edits side by side. Nothing is fetched from the network.",
    )
    p.add_argument(
        "--backbone",
        help="a preset (digits, tiny, sd14, ...), a registered backbone, a hub id or a local "
        "diffusers folder (default: digits where it is available, otherwise tiny)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument(
        "--share",
        choices=("no", "yes"),
        default="no",
        help="'yes' asks Gradio for a public share link, which contacts Gradio's servers and "
        "downloads their tunnel client; 'no' (default) serves locally only",
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output folder: every file the demo writes goes under it (default {DEFAULT_OUT})",
    )
    p.add_argument("--device", help="cuda, cuda:1, cpu, mps or auto (default)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        metavar="SECONDS",
        help=f"stop a request that runs longer than this and tell its user (default {DEFAULT_TIME_LIMIT_S:g}); "
        "requests run one at a time, so this is also the longest any user waits for another's",
    )




def cmd_edit(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from framework.backbone import load_prompt_rules, resolve_device
    from framework.config import backbone_config, compose, literal, save_config_history
    from framework.edit import check_inversion_needed, invert_and_edit
    from framework.images import fit_image, load_image, parse_size, pil_to_tensor, tensor_to_pil
    from framework.progress import interactive, progress_bars
    from framework.prompts import check_edit_prompts
    from framework.random import check_seed
    from framework.registry import BACKBONES, EDITORS, INVERTERS
    from framework.schedule import check_steps

    layer: dict = {}
    if args.backbone:
        layer["backbone"] = backbone_config(args.backbone)
    for key, value in (("num_steps", args.steps), ("skip", args.skip), ("seed", args.seed)):
        if value is not None:
            layer[key] = value
    # flags are text as typed (literal); key=value overrides are configuration (interpolated)
    cfg = compose(overrides=args.overrides, extra_layers=[literal(layer)], kind="edit")  # typos: exit 2
    if args.device:
        cfg.backbone.device = literal(args.device)
    check_seed(cfg.seed)
    check_steps(int(cfg.num_steps), int(cfg.skip))
    # Validate everything cheap before the (slow) model load.
    if "device" in cfg.backbone:
        resolve_device(cfg.backbone.device)
    inverter = INVERTERS.build(cfg.inverter)
    editor = EDITORS.build(cfg.editor)
    check_inversion_needed(inverter, editor)  # before the model loads
    targets = list(args.target)
    if not targets:
        raise InputError("give at least one --target prompt")
    size = parse_size(args.size)
    pil = load_image(args.image)
    out = Path(args.out) if args.out else Path("outputs") / Path(args.image).stem
    check_output_dir(out)

    # prompts the text encoder cannot take are refused before the model loads, where the
    # tokenizer can be read alone (invert_and_edit checks them again, and warns about words
    # the model has never seen)
    check_edit_prompts(load_prompt_rules(cfg.backbone), args.source, targets, (inverter, editor), warn=False)

    logging.getLogger(__name__).info("loading backbone %s", dict(cfg.backbone))
    backbone = BACKBONES.build(cfg.backbone)
    image = pil_to_tensor(fit_image(pil, size, backbone.resolution, backbone.size_multiple))
    for key, value in backbone.resolved_options().items():  # config.yaml records the values used
        cfg.backbone[key] = literal(value)
    # the record holds the prompts and the file name exactly as given (never interpolated)
    cfg.image = literal(str(args.image))
    cfg.source_prompt = literal(args.source)
    cfg.target_prompts = literal(targets)
    cfg.size = f"{image.shape[-1]}x{image.shape[-2]}"
    cfg.device = str(resolve_device(cfg.backbone.device))

    with progress_bars(not args.no_progress and interactive()):
        result = invert_and_edit(
            backbone,
            inverter,
            editor,
            image,
            args.source,
            targets,
            num_steps=int(cfg.num_steps),
            skip=int(cfg.skip),
            seed=int(cfg.seed),
        )
    # The folder is made only now: a failed edit leaves nothing behind.
    make_output_dir(out)
    save_config_history(cfg, out)
    tensor_to_pil(image)[0].save(out / "input.png")
    stem = Path(args.image).stem
    lines = []
    for k, (target, img) in enumerate(zip(targets, tensor_to_pil(result.images))):
        path = out / f"{stem}_{k:02d}_{slug(target)}.png"
        img.save(path)
        lines.append(
            {
                "image": str(args.image),
                "output": str(path),
                "source_prompt": args.source,
                "target_prompt": target,
                "seed": int(cfg.seed),
                "num_steps": int(cfg.num_steps),
                "skip": int(cfg.skip),
                "backbone": backbone.describe(),
                # to_container: list-valued options (e.g. plug_and_play's layers) as JSON lists
                "inverter": OmegaConf.to_container(cfg.inverter, resolve=True),
                "editor": OmegaConf.to_container(cfg.editor, resolve=True),
                "num_targets": len(targets),
                "inversion_seconds": round(result.inversion_seconds, 4),
                "edit_seconds": round(result.edit_seconds, 4),
                "inversion_nfe": result.inversion_nfe,
                "edit_nfe": result.edit_nfe,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
        print(path)
    with open(out / "edits.jsonl", "a", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
    print(
        f"inversion {result.inversion_seconds:.2f}s ({result.inversion_nfe} network evaluations), "
        f"editing {result.edit_seconds:.2f}s ({result.edit_nfe}) for {len(targets)} target(s); "
        f"wrote {out}",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from framework.config import preset_names
    from framework.registry import ALL, describe_options

    listing = {}
    for kind, registry in ALL.items():
        listing[kind] = {}
        for name in registry.names():
            cls = registry.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            listing[kind][name] = {
                "description": doc[0] if doc else "",
                "options": {o: {"type": t, "default": d} for o, t, d in describe_options(cls.Options)},
            }
    presets = {g: preset_names(g) for g in ("backbone", "inverter", "editor")}
    if args.json:
        print(json.dumps({"plugins": listing, "presets": presets}, indent=2, default=str))
        return 0
    for kind, plugins in listing.items():
        print(f"{kind}:")
        if not plugins:
            print("  (none)")
        for name, info in plugins.items():
            print(f"  {name}: {info['description']}")
            for opt, spec in info["options"].items():
                print(f"      {opt} ({spec['type']}) = {spec['default']!r}")
    print("presets:")
    for group, names in presets.items():
        print(f"  {group}: {', '.join(names) or '(none)'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``editfriendly run CONFIG [--no-progress] [--force] [key=value ...]``."""
    from omegaconf import OmegaConf

    from framework.config import compose
    from framework.experiment.run import apply_method_overrides, find_experiment, run_experiment

    rest = list(args.overrides)
    for flag in ("--no-progress", "--force"):  # flags may come after the overrides too
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
    # the file and the overrides against the schema: a misspelt key exits 2 before any work
    cfg = compose(experiment=experiment, overrides=overrides, kind="run")
    apply_method_overrides(cfg, method_overrides)
    if args.no_progress:
        trainer = OmegaConf.to_container(cfg.trainer) if "trainer" in cfg else {}
        cfg.trainer = {**trainer, "enable_progress_bar": False}
    return run_experiment(cfg, experiment, force=bool(getattr(args, "force", False)), progress=not args.no_progress)


def cmd_compare(args: argparse.Namespace) -> int:
    """``editfriendly compare RUN_DIR ...``: write the report, print the paths of what it wrote."""
    import importlib.util

    missing = [m for m in ("matplotlib",) if importlib.util.find_spec(m) is None]
    if missing:  # before reading anything
        raise ConfigError(
            f"editfriendly compare needs {', '.join(missing)}: pip install 'editfriendly[report]'"
        )
    from framework.report import compare
    from framework.report.runs import read_run, wandb_logger

    settings = None
    if not args.no_wandb:  # --wandb, or a run whose config logs to wandb
        logger = wandb_logger(read_run(d) for d in args.run_dirs)
        if args.wandb or logger:
            settings = {
                "project": args.wandb_project or logger.get("project") or "editfriendly",
                "mode": args.wandb_mode or logger.get("mode") or "offline",
                "entity": logger.get("entity"),
            }
    if args.sample is not None and args.sample < 0:
        raise InputError(f"--sample must be >= 0, got {args.sample}")
    result = compare(
        args.run_dirs,
        args.out,
        items=args.items,
        sample=args.sample if args.sample is not None else 4,
        seed=args.seed,
        metrics=args.metrics,
        params=args.params,
        x=args.x,
        y=args.y,
        wandb=settings,
    )
    print(result["report_md"])
    print(result["report_html"])
    if result["scatter"]:
        print(result["scatter"])
    for path in result["grids"].values():
        print(path)
    if result["wandb_dir"]:
        print(f"wandb: {result['wandb_dir']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``editfriendly demo``: load the backbone, build the page and serve it until interrupted."""
    from framework.demo import DemoEngine, build_app, configure_env, launch

    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if not 0 < args.time_limit < float("inf"):
        raise InputError(f"--time-limit must be a positive number of seconds, got {args.time_limit:g}")
    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc}") from None
    configure_env(out)
    try:  # before the (slow) model load
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "editfriendly demo needs Gradio: pip install 'editfriendly[demo]' (or pip install gradio)"
        ) from None
    engine = DemoEngine.load(args.backbone, out, device=args.device)
    engine.time_limit = args.time_limit
    for folder in engine.remove_partial_outputs():
        print(f"removed the unfinished output folder {folder}", flush=True)
    app = build_app(engine)
    print(f"editfriendly demo: backbone {engine.backbone_name}, writing under {out}", flush=True)
    launch(app, engine, host=args.host, port=args.port, share=args.share == "yes")
    return 0


#: subcommand name -> handler
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "edit": cmd_edit,
    "list": cmd_list,
    "run": cmd_run,
    "compare": cmd_compare,
    "demo": cmd_demo,
}


def skip_records_handled_below(record: logging.LogRecord) -> bool:
    """A root-handler filter: drop records that a logger below the root already printed.

    Lightning (``lightning.pytorch``) and huggingface_hub attach their own stream handlers and
    still propagate to the root, so with ``logging.basicConfig`` each of their lines came out
    twice. Records of loggers without a handler of their own pass.
    """
    name = record.name
    while name:
        logger = logging.Logger.manager.loggerDict.get(name)
        if isinstance(logger, logging.Logger):
            if logger.handlers:
                return False
            if not logger.propagate:
                return True
        name = name.rpartition(".")[0]
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``editfriendly ARGV``; returns the exit status (2 for a user error, 1 for a failed write,
    130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(skip_records_handled_below)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return HANDLERS[args.command](args)
    except EditFriendlyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", 2))  # 1 for a failed write (framework.outputs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
