"""Figure 8 of the paper: color strokes in the edit-friendly noise space versus SDEdit.

Each real image is inverted once (edit-friendly). A mask B and a color M are chosen (a strokes
file, or automatically: the bright part of the upper half of the image, painted in the palette
color farthest from its current mean color). Then

- ``color_strokes`` regenerates with z_i + s·B⊙(M − x̂0) on steps [T1, T2] for each strength s;
- ``sdedit`` paints B⊙M onto the image, noises it to round(strength·N) and denoises, for each
  strength.

Measured per output: ``mse_outside`` (fidelity: mean squared error to the input outside the
mask) and ``color_mse_inside`` (mean squared error to M inside the mask). Outputs in --out:
``color.csv``, ``color_grid.png`` (input, strokes, color strokes at each s, SDEdit at each
strength) and ``color_tradeoff.png`` (fidelity against color error, per method).

    python scripts/color_experiment.py --model models/digits16 --out docs/figures
    python scripts/color_experiment.py --model tiny_pixel --steps 10 --num-images 1 --out /tmp/c
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework.errors import EditFriendlyError, InputError
from framework.random import make_generator

PALETTE = torch.tensor(
    [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [-1, 1, 1], [1, -1, 1]], dtype=torch.float32
)  # red, green, blue, yellow, cyan, magenta in [-1, 1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny_pixel", help="backbone: a pixel model folder, preset or registered name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=100, help="inference steps N")
    p.add_argument("--num-images", type=int, default=3)
    p.add_argument("--real", default="digits", help="'digits', 'photos' or a folder of images")
    p.add_argument("--strokes", default=None, help="an RGBA strokes image for every input (default: automatic)")
    p.add_argument("--strengths", default="1,2,4", help="color-strokes strengths s")
    p.add_argument("--sdedit", default="0.2,0.4,0.6", help="SDEdit strengths (fraction of N noised)")
    p.add_argument("--t1", type=float, default=0.05, help="T1 as a fraction of N (least noisy modified step)")
    p.add_argument("--t2", type=float, default=0.3, help="T2 as a fraction of N (noisiest modified step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None


def auto_strokes(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask: pixels of the upper half brighter than the image mean; M: the palette color
    farthest from their mean color. image (1, 3, H, W) -> (1, 1, H, W), (1, 3, H, W)."""
    lum = image.mean(1, keepdim=True)
    h = image.shape[-2]
    mask = (lum > lum.mean()).float()
    mask[..., h // 2 :, :] = 0
    if not mask.any():
        mask[..., : h // 2, :] = 1
    mean = (image * mask).sum((0, 2, 3)) / mask.sum()
    color = PALETTE[(PALETTE - mean).norm(dim=1).argmax()]
    return mask, color.view(1, 3, 1, 1).expand_as(image).clone()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except EditFriendlyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from framework.backbone import load_backbone
    from framework.images import tensor_to_pil
    from framework.registry import EDITORS, INVERTERS
    from plugins.editors.color_strokes import load_stroke_files
    from scripts.shift_experiment import real_images

    strengths = floats(args.strengths, "--strengths")
    sd_strengths = floats(args.sdedit, "--sdedit")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(args.model, device=args.device)
    if not getattr(backbone, "pixel_space", False):
        raise InputError(f"the color experiment needs an unconditional pixel model, got {type(backbone).__name__}")
    res, n = backbone.resolution, args.steps
    t1 = max(1, round(args.t1 * n))
    t2 = max(t1, round(args.t2 * n))
    images = real_images(args.real, args.num_images, res, args.seed)
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    rows: list[dict] = []
    grid: list[list[tuple[str, torch.Tensor]]] = []
    for b in range(images.shape[0]):
        image = images[b : b + 1]
        if args.strokes:
            mask, colors = load_stroke_files((res, res), strokes=args.strokes)
        else:
            mask, colors = auto_strokes(image)
        x0 = backbone.encode_image(image.to(backbone.device))
        inv = inverter.invert(backbone, x0, "", num_steps=n, generator=make_generator(args.seed + b))
        painted = backbone.decode(mask * colors + (1 - mask) * backbone.decode(x0))
        panels = [("input", backbone.decode(x0)), ("strokes", painted)]

        def record(
            method: str, s: float, y: torch.Tensor, b: int, image: torch.Tensor, mask: torch.Tensor,
            colors: torch.Tensor, panels: list,
        ) -> None:
            img = backbone.decode(y).cpu()
            inside = mask.bool().expand_as(img)
            rows.append({
                "image": b, "method": method, "strength": s,
                "mse_outside": float(((img - image) ** 2)[~inside].mean()),
                "color_mse_inside": float(((img - colors) ** 2)[inside].mean()),
            })
            panels.append((f"{'ours' if method == 'color_strokes' else 'SDEdit'} {s:g}", img))

        for s in strengths:
            cls, opts = EDITORS.options({"name": "color_strokes", "strength": s, "start_step": t1, "end_step": t2})
            with torch.no_grad():
                y = cls(opts, mask=mask, colors=colors).edit(backbone, inv, "", [], skip=0, generator=make_generator(b))
            record("color_strokes", s, y, b, image, mask, colors, panels)
        for s in sd_strengths:
            cls, opts = EDITORS.options({"name": "sdedit", "strength": s})
            with torch.no_grad():
                y = cls(opts, mask=mask, colors=colors).edit(backbone, inv, "", [], skip=0, generator=make_generator(b))
            record("sdedit", s, y, b, image, mask, colors, panels)
        grid.append(panels)

    with open(out / "color.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "method", "strength", "mse_outside", "color_mse_inside"])
        writer.writeheader()
        writer.writerows(rows)

    cols = len(grid[0])
    fig, axes = plt.subplots(len(grid), cols, figsize=(0.95 * cols, 1.05 * len(grid) + 0.2), dpi=110, squeeze=False)
    for r, panels in enumerate(grid):
        for c, (title, img) in enumerate(panels):
            axes[r][c].imshow(tensor_to_pil(img)[0], interpolation="nearest")
            if r == 0:
                axes[r][c].set_title(title, fontsize=7)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "color_grid.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    for method, label, values in (
        ("color_strokes", "color strokes (ours)", strengths),
        ("sdedit", "SDEdit", sd_strengths),
    ):
        xs, ys = [], []
        for s in values:
            sel = [r for r in rows if r["method"] == method and r["strength"] == s]
            xs.append(sum(r["color_mse_inside"] for r in sel) / len(sel))
            ys.append(sum(r["mse_outside"] for r in sel) / len(sel))
        ax.plot(xs, ys, marker="o", label=label)
        for x, y, s in zip(xs, ys, values):
            ax.annotate(f"{s:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("color error inside the mask (MSE to M)")
    ax.set_ylabel("change outside the mask (MSE)")
    ax.set_title("Color strokes vs SDEdit", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "color_tradeoff.png")
    plt.close(fig)
    print(f"wrote {out / 'color.csv'}, {out / 'color_grid.png'}, {out / 'color_tradeoff.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
