"""Figure 7 of the paper: shifting the noise maps shifts the image (edit-friendly) or destroys it (native).

For generated images (sampled from the model with DDPM, keeping the native x_T and noise maps)
and for real images (inverted), x_T and every noise map are shifted horizontally by several
amounts with the ``shift`` editor, the image is regenerated, and the distance between the
shifted input and the regenerated image is measured on the part of the image the shift keeps
(the uncovered strip is excluded). Distance: LPIPS where its weights load (images >= 64 px),
else the mean squared error. Noise spaces compared:

- generated images: ``native`` (the sampling noise itself) and ``edit_friendly`` (inversion);
- real images: ``edit_friendly`` and, when the ``cycle_diffusion`` inverter is registered,
  its native-looking maps (``native``).

Outputs in --out: ``shift.csv`` (kind, noise_space, image, shift, distance), ``shift_plot.png``
(mean distance against the shift) and ``shift_grid.png`` (one image of each kind, shifted).

    python scripts/shift_experiment.py --model models/digits16 --out docs/figures
    python scripts/shift_experiment.py --model tiny_pixel --steps 10 --num-images 1 --out /tmp/s
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
from framework.inversion import Inversion
from framework.random import make_generator, randn


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny_pixel", help="backbone: a pixel model folder, preset or registered name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=100, help="inference steps N")
    p.add_argument("--shifts", default="0,1,2,4", help="comma-separated horizontal shifts in pixels")
    p.add_argument("--border", default="wrap", choices=["noise", "reflect", "wrap"], help="shift border policy")
    p.add_argument("--num-images", type=int, default=4, help="generated images and real images, each")
    p.add_argument(
        "--real",
        default="digits",
        help="real images: 'digits' (scikit-learn), 'photos' (its sample photos) or a folder",
    )
    p.add_argument("--metric", default="auto", choices=["auto", "mse", "lpips"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- inputs
def real_images(spec: str, n: int, resolution: int, seed: int) -> torch.Tensor:
    """(n, 3, R, R) real images in [-1, 1]: digits (colored anew), sample photos, or a folder."""
    if spec == "digits":
        from scripts.train_pixel_ddpm import digits_dataset

        data = digits_dataset(resolution, "random", seed + 12345)  # other colors than training
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
        return data[idx]
    if spec == "photos":
        from PIL import Image
        from sklearn.datasets import load_sample_images

        from framework.images import fit_image, pil_to_tensor

        photos = [
            pil_to_tensor(fit_image(Image.fromarray(a), None, resolution, 1)) for a in load_sample_images().images
        ]
        return torch.cat([photos[i % len(photos)] for i in range(n)])
    from scripts.train_pixel_ddpm import folder_dataset

    return folder_dataset(spec, resolution)[:n]


def sample_native(backbone, n: int, steps: int, generator: torch.Generator) -> Inversion:
    """Sample n images with DDPM (η = 1), keeping x_N..x_0 and the noise maps used: an
    Inversion of the generated images in their native noise space."""
    from framework.sampling import reverse_process

    schedule = backbone.schedule(steps, 1.0)
    shape = (n, backbone.channels, backbone.resolution, backbone.resolution)
    x_T = randn(shape, generator, backbone.device)
    xts = torch.empty((steps + 1, *shape))
    zs = torch.zeros((steps, *shape))
    xts[steps] = x_T

    def keep(i: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        xts[i] = x.cpu()
        zs[i - 1] = z.cpu()
        return z

    with torch.no_grad():
        xts[0] = reverse_process(
            backbone, x_T, schedule, steps, None, None, 1.0, generator=generator, noise_fn=keep
        ).cpu()
    return Inversion(
        xts=xts, zs=zs, timesteps=schedule.timesteps, num_steps=steps, skip=0, eta=1.0,
        method="native", source_prompt=[""] * n, guidance_scale=1.0,
    )


def row(inv: Inversion, b: int) -> Inversion:
    """The inversion of image b of a batch."""
    import dataclasses

    return dataclasses.replace(
        inv, xts=inv.xts[:, b : b + 1], zs=None if inv.zs is None else inv.zs[:, b : b + 1],
        source_prompt=inv.source_prompt[b : b + 1],
    )


# ----------------------------------------------------------------------------- distance
def make_distance(kind: str, resolution: int, device: str):
    """(name, fn(a, b) -> float) on images (1, 3, H, W) in [-1, 1]."""
    if kind in ("auto", "lpips") and resolution >= 64:
        try:
            import lpips

            net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
            return "lpips", lambda a, b: float(net(a.to(device), b.to(device)).mean())
        except Exception as exc:  # weights missing offline
            if kind == "lpips":
                raise InputError(f"LPIPS weights could not be loaded ({exc}); use --metric mse") from None
    elif kind == "lpips":
        raise InputError(f"LPIPS needs images of at least 64 px, the model makes {resolution} px; use --metric mse")
    return "mse", lambda a, b: float(((a - b) ** 2).mean())


def shift_image(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.roll(x, d, dims=-1)


def kept(x: torch.Tensor, d: int) -> torch.Tensor:
    """The columns a horizontal shift by d keeps (the uncovered strip dropped)."""
    return x[..., d:] if d >= 0 else x[..., :d]


# ----------------------------------------------------------------------------- main
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

    try:
        shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--shifts must be comma-separated integers, got {args.shifts!r}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(args.model, device=args.device)
    if not getattr(backbone, "pixel_space", False):
        raise InputError(f"the shift experiment needs an unconditional pixel model, got {type(backbone).__name__}")
    res = backbone.resolution
    metric, distance = make_distance(args.metric, res, args.device)
    g = make_generator(args.seed)
    ef = INVERTERS.build({"name": "ddpm_edit_friendly"})
    native_real = INVERTERS.build({"name": "cycle_diffusion"}) if "cycle_diffusion" in INVERTERS.names() else None

    # the inversions of every image, per kind and noise space
    cases: dict[tuple[str, str], tuple[torch.Tensor, Inversion]] = {}
    native = sample_native(backbone, args.num_images, args.steps, g)
    generated = native.x0.to(backbone.device)
    cases[("generated", "native")] = (generated, native)
    cases[("generated", "edit_friendly")] = (
        generated,
        ef.invert(backbone, generated, "", num_steps=args.steps, generator=g),
    )
    real = backbone.encode_image(real_images(args.real, args.num_images, res, args.seed).to(backbone.device))
    cases[("real", "edit_friendly")] = (real, ef.invert(backbone, real, "", num_steps=args.steps, generator=g))
    if native_real is not None:
        cases[("real", "native")] = (real, native_real.invert(backbone, real, "", num_steps=args.steps, generator=g))
    else:
        print("note: no cycle_diffusion inverter registered: real images use edit-friendly maps only", file=sys.stderr)

    rows: list[dict] = []
    examples: dict[tuple[str, str], list[torch.Tensor]] = {}
    for (kind, space), (x0, inv) in cases.items():
        for d in shifts:
            editor = EDITORS.build({"name": "shift", "dx": d, "dy": 0, "border": args.border})
            for b in range(x0.shape[0]):
                with torch.no_grad():
                    y = editor.edit(backbone, row(inv, b), "", [], skip=0, generator=make_generator(args.seed + b))
                target = shift_image(x0[b : b + 1], d)
                img_t, img_y = backbone.decode(target), backbone.decode(y)
                rows.append({
                    "kind": kind, "noise_space": space, "image": b, "shift": d,
                    "distance": distance(kept(img_t, d), kept(img_y, d)),
                })
                if b == 0:
                    examples.setdefault((kind, space), []).append(img_y.cpu())
    with open(out / "shift.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["kind", "noise_space", "image", "shift", "distance"])
        writer.writeheader()
        writer.writerows(rows)

    # plot: mean distance vs shift
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    for (kind, space) in cases:
        means = [
            sum(r["distance"] for r in rows if (r["kind"], r["noise_space"], r["shift"]) == (kind, space, d))
            / args.num_images
            for d in shifts
        ]
        ax.plot(shifts, means, marker="o", ls="-" if space == "edit_friendly" else "--", label=f"{kind}, {space}")
    ax.set_xlabel("shift (pixels)")
    ax.set_ylabel(f"{metric.upper()} to the shifted input")
    ax.set_title("Shifting the noise maps", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "shift_plot.png")
    plt.close(fig)

    # grid: rows (kind, space), columns: input shifted by each d, regenerated
    keys = list(cases)
    fig, axes = plt.subplots(
        len(keys), len(shifts) + 1, figsize=(1.1 * (len(shifts) + 1) + 1.2, 1.15 * len(keys)), dpi=110, squeeze=False
    )
    for r, key in enumerate(keys):
        x0 = cases[key][0][:1]
        axes[r][0].imshow(tensor_to_pil(backbone.decode(x0).cpu())[0], interpolation="nearest")
        axes[r][0].set_ylabel(f"{key[0]}\n{key[1]}", fontsize=7)
        for c, d in enumerate(shifts):
            axes[r][c + 1].imshow(tensor_to_pil(examples[key][c])[0], interpolation="nearest")
            if r == 0:
                axes[r][c + 1].set_title(f"shift {d}", fontsize=8)
        if r == 0:
            axes[r][0].set_title("input", fontsize=8)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "shift_grid.png")
    plt.close(fig)
    print(f"wrote {out / 'shift.csv'}, {out / 'shift_plot.png'}, {out / 'shift_grid.png'} ({metric})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
