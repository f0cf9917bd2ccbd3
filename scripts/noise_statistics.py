#!/usr/bin/env python
"""Figure 6 of the paper: per-step statistics of the noise maps z_t.

For each step t: the variance of z_t (pooled over samples and pixels) and the correlation
between z_t and z_{t-1} (Pearson, pooled over samples and pixels), for three kinds of maps:

- native: the z_t drawn while sampling x0 from the model (the regular DDPM process, η = --eta);
- edit_friendly: the maps Algorithm 1 extracts from those x0 (``ddpm_edit_friendly``);
- cycle_diffusion: the maps CycleDiffusion extracts from the same x0 (``cycle_diffusion``).

The x0 are sampled from the model itself (prompt ``--prompt``, guidance ``--guidance``; the
paper's Figure 6 uses 10 samples of an unconditional ImageNet model, 100 steps), or, with
``--images DIR``, are the encoded images of a folder (then the native maps still come from
sampling the model). The default backbone is the analytic Gaussian (the paper's 2D example;
``--dim D`` makes it D-dimensional with mean 10 and identity covariance, for smoother
statistics); ``--backbone`` accepts any backbone name, preset, hub id or folder (``tiny``,
``sd14``, ...).

    python scripts/noise_statistics.py --out outputs/noise_statistics             # Gaussian, 10 x 100
    python scripts/noise_statistics.py --backbone sd14 --device cuda --out out/sd  # needs SD weights
    python scripts/noise_statistics.py --samples 4 --steps 20 --out /tmp/ns        # quick

Writes ``noise_statistics.png`` and ``noise_statistics.csv`` (one row per step) and prints a
summary (median over steps of each statistic).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framework.backbone import load_backbone
from framework.errors import InputError
from framework.random import make_generator, randn
from framework.sampling import reverse_process
from plugins.inverters.cycle_diffusion import CycleDiffusion, CycleDiffusionOptions
from plugins.inverters.ddpm_edit_friendly import DDPMEditFriendly, DDPMEditFriendlyOptions

METHODS = ("native", "edit_friendly", "cycle_diffusion")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def latent_shape(backbone: Any) -> tuple[int, ...]:
    """(C, h, w) of the backbone's x0."""
    if hasattr(backbone, "dim"):
        return (backbone.dim, 1, 1)
    probe = torch.zeros(1, 3, backbone.resolution, backbone.resolution, device=backbone.device)
    return tuple(backbone.encode_image(probe).shape[1:])


def sample_native(
    backbone: Any, num: int, steps: int, eta: float, prompt: str, guidance: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Sample ``num`` x0 from the model: (x0 (num, C, h, w), zs (steps, num, C, h, w) the native maps)."""
    schedule = backbone.schedule(steps, eta)
    shape = (num, *latent_shape(backbone))
    zs = torch.zeros(steps, *shape)
    cond = backbone.encode_prompt([prompt] * num)
    uncond = backbone.null_condition() if guidance != 1 else None

    def record(i: int, x: Tensor, eps: Tensor, z: Tensor) -> Tensor:
        zs[i - 1] = z.float().cpu()
        return z

    x_top = randn(shape, generator, backbone.device)
    x0 = reverse_process(
        backbone, x_top, schedule, steps, cond, uncond, guidance, generator=generator, noise_fn=record, desc="sample"
    )
    return x0, zs


def load_folder(backbone: Any, folder: Path, num: int) -> Tensor:
    """Encode the first ``num`` images of ``folder`` (sorted) at the backbone's resolution."""
    from framework.images import load_image_tensor

    if not folder.is_dir():
        raise InputError(f"--images must be a folder of images, got {str(folder)!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:num]
    if not files:
        raise InputError(f"--images folder {str(folder)!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    x0s = [backbone.encode_image(load_image_tensor(p, backbone.resolution, backbone.size_multiple)) for p in files]
    shapes = {tuple(x.shape) for x in x0s}
    if len(shapes) > 1:
        raise InputError(f"the images of {str(folder)!r} give latents of different shapes {sorted(shapes)}")
    return torch.cat(x0s)


def step_statistics(zs: Tensor) -> tuple[Tensor, Tensor]:
    """zs (N, B, ...) -> (variance (N,), correlation (N,) of z_i with z_{i-1}; NaN for i = 1)."""
    flat = zs.reshape(zs.shape[0], -1).double()
    var = flat.var(dim=1, unbiased=False)
    corr = torch.full((zs.shape[0],), float("nan"), dtype=torch.float64)
    for i in range(2, zs.shape[0] + 1):
        a = flat[i - 1] - flat[i - 1].mean()
        b = flat[i - 2] - flat[i - 2].mean()
        denom = (a.norm() * b.norm()).item()
        if denom > 0:
            corr[i - 1] = (a @ b) / denom
    return var, corr


def summary(var: Tensor, corr: Tensor) -> dict[str, float]:
    c = corr[~torch.isnan(corr)]
    return {
        "median_variance": float(var.median()),
        "mean_variance": float(var.mean()),
        "median_correlation": float(c.median()) if c.numel() else float("nan"),
        "mean_correlation": float(c.mean()) if c.numel() else float("nan"),
    }


def write_outputs(
    out: Path, timesteps: Tensor, sigmas: Tensor, stats: dict[str, tuple[Tensor, Tensor]], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    n = timesteps.shape[0]
    with open(out / "noise_statistics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "timestep", "sigma"] + [f"var_{m}" for m in METHODS] + [f"corr_{m}" for m in METHODS])
        for i in range(n, 0, -1):
            row: list[Any] = [i, int(timesteps[i - 1]), float(sigmas[i - 1])]
            row += [float(stats[m][0][i - 1]) for m in METHODS]
            row += ["" if torch.isnan(stats[m][1][i - 1]) else float(stats[m][1][i - 1]) for m in METHODS]
            w.writerow(row)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    t = timesteps.numpy()
    labels = {
        "native": "native (sampling)",
        "edit_friendly": "edit-friendly (ours)",
        "cycle_diffusion": "CycleDiffusion",
    }
    for m in METHODS:
        var, corr = stats[m]
        ax1.plot(t, var.numpy(), label=labels[m])
        ax2.plot(t[1:], corr[1:].numpy(), label=labels[m])
    ax1.set_yscale("log")
    ax1.set_xlabel("timestep t")
    ax1.set_ylabel("variance of z_t")
    ax1.set_title("Per-pixel variance")
    ax2.axhline(0.0, color="black", lw=0.5)
    ax2.set_xlabel("timestep t")
    ax2.set_ylabel("corr(z_t, z_t-1)")
    ax2.set_title("Correlation between consecutive noise maps")
    for ax in (ax1, ax2):
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "noise_statistics.png", dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="outputs/noise_statistics", help="output folder (default: %(default)s)")
    p.add_argument(
        "--backbone", default="gaussian", help="backbone name, preset, hub id or folder (default: %(default)s)"
    )
    p.add_argument("--dim", type=int, default=None, help="gaussian only: D dimensions, mean 10, identity covariance")
    p.add_argument("--samples", type=int, default=10, help="number of x0 (default: %(default)s, as the paper)")
    p.add_argument("--steps", type=int, default=100, help="inference steps (default: %(default)s, as the paper)")
    p.add_argument("--eta", type=float, default=1.0, help="η of sampling and both inversions (default: %(default)s)")
    p.add_argument("--cycle-eta", type=float, default=None, help="η of CycleDiffusion (default: --eta)")
    p.add_argument("--prompt", default="", help="prompt for sampling and inverting (default: empty)")
    p.add_argument(
        "--guidance", type=float, default=1.0, help="guidance of sampling and inverting (default: %(default)s)"
    )
    p.add_argument("--images", default=None, help="a folder of images to invert instead of model samples")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="network dtype for SD backbones (float32 | float16 | bfloat16)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Compute, write and print the statistics; returns the summary per method."""
    args = parse_args(argv)
    if args.samples < 1 or args.steps < 2:
        raise InputError("--samples must be >= 1 and --steps >= 2")
    cycle_eta = args.eta if args.cycle_eta is None else args.cycle_eta
    for name, eta in (("--eta", args.eta), ("--cycle-eta", cycle_eta)):
        if not 0 < eta <= 1:
            raise InputError(f"{name} must be in (0, 1], got {eta}")
    extra: dict[str, Any] = {}
    if args.dim is not None:
        if args.backbone != "gaussian" or args.dim < 1:
            raise InputError("--dim >= 1 applies to --backbone gaussian only")
        extra = {"mean": [10.0] * args.dim, "cov": None}
    backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype, **extra)
    gen = make_generator(args.seed)
    x_sampled, native = sample_native(backbone, args.samples, args.steps, args.eta, args.prompt, args.guidance, gen)
    x0 = load_folder(backbone, Path(args.images), args.samples) if args.images else x_sampled
    friendly = DDPMEditFriendly(DDPMEditFriendlyOptions(eta=args.eta, guidance_scale=args.guidance))
    cycle = CycleDiffusion(CycleDiffusionOptions(eta=cycle_eta, guidance_scale=args.guidance))
    zs = {
        "native": native,
        "edit_friendly": friendly.invert(backbone, x0, args.prompt, num_steps=args.steps, generator=gen).zs.cpu(),
        "cycle_diffusion": cycle.invert(backbone, x0, args.prompt, num_steps=args.steps, generator=gen).zs.cpu(),
    }
    stats = {m: step_statistics(zs[m]) for m in METHODS}
    schedule = backbone.schedule(args.steps, args.eta)
    title = f"{args.backbone}: {x0.shape[0]} samples, {args.steps} steps, eta {args.eta} (CycleDiffusion {cycle_eta})"
    write_outputs(Path(args.out), schedule.timesteps, schedule.sigma, stats, title)
    result = {m: summary(*stats[m]) for m in METHODS}
    ratio = stats["edit_friendly"][0] / stats["native"][0]
    for m in METHODS:
        result[m]["median_variance_ratio_to_native"] = float((stats[m][0] / stats["native"][0]).median())
    print(title)
    print(f"{'method':<16} {'median var':>10} {'mean var':>10} {'median corr':>11} {'mean corr':>10}")
    for m in METHODS:
        s = result[m]
        print(
            f"{m:<16} {s['median_variance']:>10.3f} {s['mean_variance']:>10.3f} "
            f"{s['median_correlation']:>11.3f} {s['mean_correlation']:>10.3f}"
        )
    print(
        f"edit-friendly / native variance: median over steps {float(ratio.median()):.2f}, min {float(ratio.min()):.2f}"
    )
    print(f"wrote {Path(args.out) / 'noise_statistics.png'} and noise_statistics.csv")
    return result


if __name__ == "__main__":
    main()
