"""The ``editfriendly`` command: ``edit`` one photo, ``list`` the plugins (and, as they land,
``run`` experiments and ``compare`` runs).

User errors (bad files, bad options, impossible step counts) print one ``error:`` line and
exit with status 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from framework.errors import EditFriendlyError, InputError

SIZE_POLICY = (
    "Any image size and mode (grayscale, RGBA, palette, 16-bit, ...) is accepted: it is converted "
    "to RGB (transparency over white) and, by default, center-cropped to a square and resized to "
    "the model's resolution (512 for SD 1.x), as the paper's code does. --size N or WxH instead "
    "scales the image to cover that size and center-crops it; sides must be multiples of the "
    "model's size multiple (64 for Stable Diffusion)."
)


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:limit].rstrip("-") or "empty"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="editfriendly",
        description="Edit real images with edit-friendly DDPM inversion (Huberman-Spiegelglas "
        "et al., CVPR 2024) and the methods it is compared with.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    edit = sub.add_parser(
        "edit",
        help="invert one image and edit it toward one or more target prompts",
        description="Invert IMAGE under the source prompt and regenerate it under each target "
        "prompt. " + SIZE_POLICY,
        epilog="Extra key=value arguments override the config, e.g. inverter.guidance_scale=2 "
        "editor.guidance_scale=9 backbone.dtype=float16 inverter=ddpm_edit_friendly_reference.",
    )
    edit.add_argument("--image", required=True, help="the input image file")
    edit.add_argument("--source", required=True, help="a prompt describing the input image")
    edit.add_argument(
        "--target", action="append", required=True, help="a target prompt (repeat for several)"
    )
    edit.add_argument(
        "--backbone",
        help="a preset (sd14 [default], sd15, sd21, tiny, tiny_v), a registered backbone, a hub "
        "id or a local diffusers folder",
    )
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

    lst = sub.add_parser("list", help="list every registered plugin with its options and defaults")
    lst.add_argument("--json", action="store_true", help="print JSON instead of text")

    from framework import commands

    commands.add_subcommands(sub)
    return parser


def check_seed(seed: object, what: str = "seed") -> int:
    """A seed torch's generators take: an integer in [-2**63, 2**64 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{what} must be an integer, got {seed!r}")
    if not -(2**63) <= seed < 2**64:
        raise InputError(f"{what} {seed} does not fit in 64 bits; use an integer in 0..{2**64 - 1}")
    return seed


def check_output_dir(path: Path, what: str = "output folder") -> None:
    """Fail early (before any model loads) when ``path`` cannot be created or written to.

    Creates nothing: the folder is made only when there is something to write into it.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"cannot create the {what} {path}: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot create the {what} {path}: {probe} is not writable")


def make_output_dir(path: Path, what: str = "output folder") -> Path:
    """``mkdir -p`` with one clear error instead of an OSError traceback."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the {what} {path}: {exc.strerror or exc}") from None
    return Path(path)


#: top-level keys ``edit`` reads from its config (``key=value`` overrides of others are typos)
EDIT_KEYS = ("backbone", "inverter", "editor", "num_steps", "skip", "seed")


def cmd_edit(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from framework.backbone import resolve_device
    from framework.config import backbone_config, check_override_keys, compose, save_config_history
    from framework.images import fit_image, load_image, parse_size, pil_to_tensor, tensor_to_pil
    from framework.edit import invert_and_edit
    from framework.progress import progress_bars
    from framework.registry import BACKBONES, EDITORS, INVERTERS
    from framework.schedule import check_steps

    check_override_keys(args.overrides, EDIT_KEYS, "edit")
    layer: dict = {}
    if args.backbone:
        layer["backbone"] = backbone_config(args.backbone)
    for key, value in (("num_steps", args.steps), ("skip", args.skip), ("seed", args.seed)):
        if value is not None:
            layer[key] = value
    cfg = compose(overrides=args.overrides, extra_layers=[layer])
    if args.device:
        cfg.backbone.device = args.device
    check_seed(cfg.seed)
    check_steps(int(cfg.num_steps), int(cfg.skip))
    # Validate everything cheap before the (slow) model load.
    if "device" in cfg.backbone:
        resolve_device(cfg.backbone.device)
    inverter = INVERTERS.build(cfg.inverter)
    editor = EDITORS.build(cfg.editor)
    targets = list(args.target)
    if not targets:
        raise InputError("give at least one --target prompt")
    size = parse_size(args.size)
    pil = load_image(args.image)
    out = Path(args.out) if args.out else Path("outputs") / Path(args.image).stem
    check_output_dir(out)

    logging.getLogger(__name__).info("loading backbone %s", dict(cfg.backbone))
    backbone = BACKBONES.build(cfg.backbone)
    image = pil_to_tensor(fit_image(pil, size, backbone.resolution, backbone.size_multiple))
    cfg.image = str(args.image)
    cfg.source_prompt = args.source
    cfg.target_prompts = targets
    cfg.size = f"{image.shape[-1]}x{image.shape[-2]}"
    cfg.device = str(resolve_device(cfg.backbone.device))

    with progress_bars(not args.no_progress):
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
    handlers = {"edit": cmd_edit, "list": cmd_list}
    from framework import commands

    handlers.update(commands.HANDLERS)
    try:
        return handlers[args.command](args)
    except EditFriendlyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
