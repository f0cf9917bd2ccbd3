#!/usr/bin/env python
"""Time edit-friendly inversion and text editing, and show the framework's overhead.

For each phase it prints the wall time, the number of network evaluations (NFE), and the
time those evaluations alone take when run back to back on inputs of the same shapes (the
floor): wall / floor is the overhead of everything that is not the network.

    python scripts/benchmark.py --backbone tiny                      # CPU, no download
    python scripts/benchmark.py --backbone sd14 --dtype float16      # GPU, SD 1.4 weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framework.backbone import load_backbone  # noqa: E402
from framework.registry import EDITORS, INVERTERS  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


@torch.no_grad()
def network_floor(backbone, x0: torch.Tensor, batch: int, nfe: int, t: int = 500) -> float:
    """Seconds for ``nfe`` raw forward passes of batch ``batch`` (the timing floor)."""
    x = torch.randn((batch, *x0.shape[1:]), device=backbone.device)
    cond = backbone.encode_prompt(["a photo"] * batch)
    backbone.model_output(x, t, cond)  # warm-up
    _sync(backbone.device)
    start = time.perf_counter()
    for _ in range(nfe):
        backbone.model_output(x, t, cond)
    _sync(backbone.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny", help="backbone preset, name, hub id or folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--skip", type=int, default=36)
    p.add_argument("--targets", type=int, default=1, help="number of target prompts edited as one batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype)
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    editor = EDITORS.build({"name": "text"})
    res = backbone.resolution
    image = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x0 = backbone.encode_image(image.to(backbone.device))
    targets = [f"a painting of a cat {k}" for k in range(args.targets)]

    def run_invert():
        return inverter.invert(backbone, x0, "a photo", num_steps=args.steps, skip=args.skip,
                               generator=torch.Generator().manual_seed(0))

    inversion = run_invert()  # warm-up (kernels, caches)
    editor.edit(backbone, inversion, "a photo", targets, skip=args.skip)
    inv_times, edit_times = [], []
    for _ in range(args.repeats):
        n0 = backbone.nfe
        dt, inversion = timed(run_invert, backbone.device)
        inv_nfe = backbone.nfe - n0
        inv_times.append(dt)
        n0 = backbone.nfe
        dt, _ = timed(lambda: editor.edit(backbone, inversion, "a photo", targets, skip=args.skip), backbone.device)
        edit_nfe = backbone.nfe - n0
        edit_times.append(dt)
    inv_floor = network_floor(backbone, x0, 2, inv_nfe)
    edit_floor = network_floor(backbone, x0, 2 * args.targets, edit_nfe)
    result = {
        "backbone": backbone.describe(),
        "device": str(backbone.device),
        "steps": args.steps,
        "skip": args.skip,
        "targets": args.targets,
        "inversion": {"seconds": statistics.median(inv_times), "nfe": inv_nfe, "floor_seconds": inv_floor},
        "edit": {"seconds": statistics.median(edit_times), "nfe": edit_nfe, "floor_seconds": edit_floor},
    }
    print(f"backbone {args.backbone} on {backbone.device} ({backbone.describe().get('dtype', '')}), "
          f"{args.steps} steps, skip {args.skip}, {args.targets} target(s), median of {args.repeats}")
    print(f"{'phase':<10}{'wall s':>10}{'NFE':>6}{'floor s':>10}{'wall/floor':>12}")
    for phase in ("inversion", "edit"):
        r = result[phase]
        print(f"{phase:<10}{r['seconds']:>10.3f}{r['nfe']:>6d}{r['floor_seconds']:>10.3f}"
              f"{r['seconds'] / r['floor_seconds']:>12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
