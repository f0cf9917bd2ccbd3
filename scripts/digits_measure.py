"""Measure the shipped ``digits`` model: what the README and the tests' thresholds quote.

Prints and writes (``--out``, JSON) the classifier's held-out accuracy, the prompt-following
rates (generation from held-out prompts read back by the classifier), the reconstruction error
of edit-friendly and CycleDiffusion inversions, and foreground-colour edit rates (colour reached,
shape IoU, attributes kept) of the rows of docs/digits.md's foreground-edit table: edit-friendly,
CycleDiffusion and DDIM text edits, Prompt-to-Prompt and Plug-and-Play on edit-friendly and DDIM
inversions.

    python scripts/digits_measure.py --n 24 --out docs/figures/digits_measure.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (label, inverter, editor, skip): the rows of docs/digits.md's foreground-edit table, 100 steps
ROWS = [
    (
        "edit-friendly + text",
        {"name": "ddpm_edit_friendly", "guidance_scale": 3.5},
        {"name": "text", "guidance_scale": 7.5},
        36,
    ),
    (
        "edit-friendly + text (target guidance 15)",
        {"name": "ddpm_edit_friendly", "guidance_scale": 3.5},
        {"name": "text", "guidance_scale": 15},
        36,
    ),
    (
        "edit-friendly + text (skip 0)",
        {"name": "ddpm_edit_friendly", "guidance_scale": 3.5},
        {"name": "text", "guidance_scale": 7.5},
        0,
    ),
    (
        "CycleDiffusion + text",
        {"name": "cycle_diffusion", "guidance_scale": 3.5},
        {"name": "text", "guidance_scale": 7.5},
        36,
    ),
    ("DDIM + text", {"name": "ddim"}, {"name": "text", "guidance_scale": 7.5}, 0),
    ("DDIM stopped early + text", {"name": "ddim"}, {"name": "text", "guidance_scale": 7.5}, 36),
    (
        "edit-friendly + Prompt-to-Prompt (0.6 / 0.2)",
        {"name": "ddpm_edit_friendly", "guidance_scale": 3.5},
        {"name": "prompt_to_prompt", "guidance_scale": 7.5, "cross_replace_steps": 0.6, "self_replace_steps": 0.2},
        12,
    ),
    (
        "DDIM + Prompt-to-Prompt (0.8 / 0.4)",
        {"name": "ddim"},
        {"name": "prompt_to_prompt", "guidance_scale": 7.5, "cross_replace_steps": 0.8, "self_replace_steps": 0.4},
        0,
    ),
    (
        "edit-friendly + Plug-and-Play",
        {"name": "ddpm_edit_friendly", "guidance_scale": 3.5},
        {"name": "plug_and_play", "guidance_scale": 7.5, "negative_prompt": ""},
        0,
    ),
    (
        "DDIM + Plug-and-Play",
        {"name": "ddim"},
        {"name": "plug_and_play", "guidance_scale": 7.5, "negative_prompt": ""},  # SD's does not fit 16 tokens
        0,
    ),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=24, help="held-out digits per edit row (0: no edit rows)")
    p.add_argument("--prompts", type=int, default=50, help="held-out prompts for prompt following")
    p.add_argument("--model", default=None, help="a model folder (default: the shipped digits model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="", help="only the edit rows whose label contains this text")
    p.add_argument("--skip-basics", action="store_true", help="skip prompt following and reconstruction")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from framework.backbone import load_backbone
    from framework.digits_eval import classifier, edit_cases, edit_rates, prompt_following, run_edits
    from framework.registry import EDITORS, INVERTERS

    opts = {"model": args.model} if args.model else {}
    backbone = load_backbone("digits", device="cpu", **opts)
    result: dict = {"classifier_heldout_accuracy": classifier(backbone.resolution).heldout_accuracy()}
    print("classifier held-out accuracy", result["classifier_heldout_accuracy"], flush=True)
    if not args.skip_basics:
        result["prompt_following"] = prompt_following(backbone, n=args.prompts)
        print("prompt following", result["prompt_following"], flush=True)

    cases = edit_cases(max(args.n, 8), "fg")
    if not args.skip_basics:
        recon = {}
        for name in ("ddpm_edit_friendly", "cycle_diffusion"):
            inv = INVERTERS.build({"name": name, "guidance_scale": 3.5})
            text = EDITORS.build({"name": "text", "guidance_scale": 3.5})
            errs = []
            for k, (image, source, _) in enumerate(cases[:8]):
                x0 = backbone.encode_image(image)
                inversion = inv.invert(backbone, x0, source, num_steps=100, skip=0,
                                       generator=torch.Generator().manual_seed(k))
                out = text.edit(backbone, inversion, source, [source], skip=0)
                errs.append(float((out - x0).abs().max()))
            recon[name] = max(errs)
        result["reconstruction_max_abs_error"] = recon
        print("reconstruction", recon, flush=True)

    rows = []
    for label, inv_cfg, ed_cfg, skip in ROWS if args.n > 0 else []:
        if args.rows not in label:
            continue
        start = time.perf_counter()
        edited = run_edits(backbone, INVERTERS.build(inv_cfg), EDITORS.build(ed_cfg), cases[:args.n], 100, skip)
        r = edit_rates(cases[:args.n], edited)
        row = {
            "method": label,
            "skip": skip,
            "target_guidance": ed_cfg["guidance_scale"],
            "n": args.n,
            "color_reached": r["color_reached"],
            "shape_iou": r["shape_iou"],
            "fg_reached": r["attr_reached"],
            "kept": r["attr_kept"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result["fg_edits"] = rows
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
