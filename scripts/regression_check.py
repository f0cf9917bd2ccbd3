"""Record every inverter × editor output on the offline models, and compare two recordings.

A refactor of the numerical core must not change a single bit of any result. This script runs
every registered inverter with every registered editor (a few steps, skip 0 and skip > 0) on
the offline models (``tiny``, ``tiny_v``, ``digits``; ``tiny_pixel`` and ``gaussian`` with the
prompt-free editors), on fixed inputs and seeds, and saves every output tensor (the inversion's
x_i, noise maps, coupled sequence and per-step unconditional embeddings, and every edit), the
network-evaluation counts and the messages of combinations that refuse to run, to one file:

    python scripts/regression_check.py record before.pt
    python scripts/regression_check.py record after.pt
    python scripts/regression_check.py compare before.pt after.pt

``compare`` lists every entry that is missing on one side or differs (``torch.equal``, so a
difference of one ulp counts) and exits 1 if there is any. Both recordings should be made with
the same thread count (``--threads``, default 1) on the same machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the inverters' options that keep the run short (null-text: 2 iterations per step)
INVERTER_OPTIONS: dict[str, dict[str, Any]] = {"null_text": {"num_inner_steps": 2}}
NUM_STEPS = 6
SKIPS = (0, 2)
PROMPT_FREE = ("shift", "color_strokes", "sdedit")
PROMPTS = {
    "digits": ("a red seven on a black background", ["a blue seven on a black background",
                                                     "a red three on a black background"]),
    "default": ("a photo of a cat", ["a photo of a dog", "a photo of a tiger"]),
}
#: Prompt-to-Prompt's blend and equalizer words, Plug-and-Play's negative prompt, per backbone
WORDS = {"digits": (("red", "blue"), ""), "default": (("cat", "dog"), "ugly, blurry, black, low res, unrealistic")}


def editor_configs(strokes: str | None, words: tuple[str, str], negative: str) -> dict[str, dict[str, Any]]:
    """Every registered editor with options that exercise its main path."""
    return {
        "text": {"name": "text"},
        "prompt_to_prompt": {"name": "prompt_to_prompt", "blend_words": [words[0]], "equalizer_words": [words[1]],
                             "equalizer_weights": [2.0]},
        "plug_and_play": {"name": "plug_and_play", "negative_prompt": negative},
        "zero_shot": {"name": "zero_shot", "cross_attention_guidance": 0.1},
        "shift": {"name": "shift", "dx": 2, "dy": -1},
        "color_strokes": {"name": "color_strokes", "strokes": strokes, "start_step": 1, "end_step": 5},
        "sdedit": {"name": "sdedit", "strokes": strokes, "strength": 0.5},
        "flowedit": {"name": "flowedit", "n_max": 4, "n_min": 1},
    }


def input_x0(backbone: Any, name: str) -> torch.Tensor:
    """A fixed input: a smooth synthetic picture (a data sample for ``gaussian``)."""
    if name == "gaussian":
        return backbone.sample_data(1, torch.Generator().manual_seed(3))
    r = backbone.resolution
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
    img = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy]).clamp(-1, 1)[None]
    return backbone.encode_image(img)


def write_strokes(folder: Path, size: int) -> str:
    """An RGBA strokes image: a blue square in the upper left quarter."""
    arr = np.zeros((size, size, 4), dtype=np.uint8)
    arr[size // 8: size // 2, size // 8: size // 2] = (20, 40, 230, 255)
    path = folder / f"strokes{size}.png"
    Image.fromarray(arr, "RGBA").save(path)
    return str(path)


def record(out: Path, threads: int, only: list[str] | None) -> None:
    from framework.backbone import load_backbone
    from framework.registry import EDITORS, INVERTERS
    from framework.sampling import reverse_process

    torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="regression-"))
    inverters = INVERTERS.names()
    editors = EDITORS.names()
    # backbone: (inverters, editors, skips); the v-prediction model runs the editors whose code
    # differs by prediction type, the unconditional ones the prompt-free editors
    plan = {
        "tiny": (inverters, editors, SKIPS),
        "digits": (inverters, editors, SKIPS),
        "tiny_v": (inverters, ["text", "zero_shot", *PROMPT_FREE], SKIPS[1:]),
        "tiny_pixel": (inverters, list(PROMPT_FREE), SKIPS),
        "gaussian": (inverters, ["sdedit"], SKIPS),
        "tiny_sd3": (inverters, ["text", "flowedit", *PROMPT_FREE], SKIPS[1:]),  # a flow model
    }
    started = time.perf_counter()
    for bname, (invs, eds, skips) in plan.items():
        if only and bname not in only:
            continue
        backbone = load_backbone(bname, device="cpu")
        x0 = input_x0(backbone, bname)
        source, targets = PROMPTS.get(bname, PROMPTS["default"])
        if not backbone.conditional:
            source, targets = "", [""]
        strokes = None if bname == "gaussian" else write_strokes(tmp, backbone.resolution)
        words, negative = WORDS.get(bname, WORDS["default"])
        configs = editor_configs(strokes, words, negative)
        results[f"{bname}/x0"] = x0.cpu()
        for iname in invs:
            for skip in skips:
                key = f"{bname}/{iname}/skip{skip}"
                inverter = INVERTERS.build({"name": iname, **INVERTER_OPTIONS.get(iname, {})})
                try:
                    inv = inverter.invert(backbone, x0, source, num_steps=NUM_STEPS, skip=skip,
                                          generator=torch.Generator().manual_seed(11))
                except Exception as exc:  # a combination that refuses to run: its message is the result
                    results[f"{key}/error"] = f"{type(exc).__name__}: {exc}"
                    continue
                results[f"{key}/nfe"] = inv.nfe
                for field in ("xts", "zs", "coupled", "uncond_embeddings"):
                    value = getattr(inv, field)
                    if value is not None:
                        results[f"{key}/{field}"] = value.detach().cpu().clone()
                for ename in eds:
                    ekey = f"{key}/{ename}"
                    editor = EDITORS.build(configs[ename])
                    nfe0 = backbone.nfe
                    try:
                        edited = editor.edit(backbone, inv, source, targets, skip=skip,
                                             generator=torch.Generator().manual_seed(5))
                    except Exception as exc:
                        results[f"{ekey}/error"] = f"{type(exc).__name__}: {exc}"
                        continue
                    results[f"{ekey}/out"] = edited.detach().cpu().clone()
                    results[f"{ekey}/nfe"] = backbone.nfe - nfe0
        # inverters with a steps_offset option, on the timesteps shifted by it (and an edit of each)
        for iname in invs:
            cls, _ = INVERTERS.options({"name": iname})
            if "steps_offset" not in getattr(cls.Options, "__dataclass_fields__", {}):
                continue
            key = f"{bname}/{iname}/steps_offset0"
            try:
                inv = INVERTERS.build({"name": iname, "steps_offset": 0, **INVERTER_OPTIONS.get(iname, {})}).invert(
                    backbone, x0, source, num_steps=NUM_STEPS, skip=1, generator=torch.Generator().manual_seed(13))
                results[f"{key}/xts"] = inv.xts.detach().cpu().clone()
                results[f"{key}/timesteps"] = inv.timesteps.cpu().clone()
                ename = "text" if backbone.conditional else "sdedit"
                results[f"{key}/{ename}/out"] = EDITORS.build(configs[ename]).edit(
                    backbone, inv, source, targets, skip=1, generator=torch.Generator().manual_seed(6)).cpu()
            except Exception as exc:
                results[f"{key}/error"] = f"{type(exc).__name__}: {exc}"
        # the plain reverse pass and the batched noise-map extraction
        schedule = backbone.schedule(NUM_STEPS, 1.0)
        cond = backbone.encode_prompt([source]) if backbone.conditional else None
        uncond = backbone.null_condition() if backbone.conditional else None
        xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)).to(backbone.device)
        results[f"{bname}/reverse_process"] = reverse_process(
            backbone, xT, schedule, NUM_STEPS, cond, uncond, 2.0, generator=torch.Generator().manual_seed(4)
        ).cpu()
        for iname in ("ddpm_edit_friendly", "cycle_diffusion"):
            inv = INVERTERS.build({"name": iname, "timestep_batch": 3}).invert(
                backbone, torch.cat([x0, x0.flip(-1)]), source, num_steps=NUM_STEPS, skip=1,
                generator=torch.Generator().manual_seed(12))
            results[f"{bname}/{iname}/batched/xts"] = inv.xts.cpu()
            results[f"{bname}/{iname}/batched/zs"] = inv.zs.cpu()
            results[f"{bname}/{iname}/batched/nfe"] = inv.nfe
        if bname == "digits":
            from framework.digits_eval import generate

            results["digits/generate"] = generate(backbone, [source, *targets], seed=1, num_steps=NUM_STEPS)
        print(f"{bname}: done at {time.perf_counter() - started:.1f} s", flush=True)
    torch.save(results, out)
    errors = sum(1 for k in results if k.endswith("/error"))
    print(f"{len(results)} entries ({errors} refusals) -> {out} in {time.perf_counter() - started:.1f} s")


def compare(before: Path, after: Path) -> int:
    a = torch.load(before, weights_only=False)
    b = torch.load(after, weights_only=False)
    problems = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            problems.append(f"{key}: only in {'before' if key in a else 'after'}")
            continue
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor):
            if va.dtype != vb.dtype or va.shape != vb.shape or not torch.equal(va, vb):
                diff = (va.double() - vb.double()).abs().max().item() if va.shape == vb.shape else "shape"
                problems.append(f"{key}: differs (max abs difference {diff})")
        elif va != vb:
            problems.append(f"{key}: {va!r} != {vb!r}")
    for p in problems:
        print(p)
    print(f"{len(set(a) | set(b))} entries compared, {len(problems)} differ")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run everything and save the outputs")
    r.add_argument("out", type=Path)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--only", nargs="*", help="backbones to run (default: all)")
    c = sub.add_parser("compare", help="compare two recordings bit for bit")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        record(args.out, args.threads, args.only)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    raise SystemExit(main())
