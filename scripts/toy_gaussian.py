#!/usr/bin/env python
"""Figure 5 of the paper: the native and the edit-friendly noise spaces of a 2D Gaussian model.

A diffusion model for data ~ N((10, 10), I) (the analytic ``gaussian`` backbone: its noise
predictor is the exact optimum, no weights). Top: one regular DDPM sampling path (40 steps,
from x_T ~ N(0, I)) and one edit-friendly path (Algorithm 1 for an x0 ~ N(μ, Σ)), each step
drawn as the drift x_i -> μ̂_i(x_i) (blue) and the noise σ_i z_i (red). Bottom: histograms of
the angle between consecutive noise vectors z_i and z_{i-1} over many draws: uniform for the
regular process, peaked near 180° for the edit-friendly maps (negatively correlated).

    python scripts/toy_gaussian.py --out outputs/toy_gaussian            # 40 steps, 1000 draws
    python scripts/toy_gaussian.py --steps 20 --draws 100 --out /tmp/toy  # quick

Writes ``figure5.png``, ``paths.csv`` (both drawn paths, per step), ``angles.csv`` (every angle)
and ``angle_histogram.csv``, and prints the statistics. ``--backbone`` takes any Gaussian
backbone config (preset name, or e.g. a YAML preset with another mean/cov); d > 2 plots the
first two coordinates.
"""

from __future__ import annotations

import argparse
import csv
import math
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
from plugins.inverters.ddpm_edit_friendly import DDPMEditFriendly, DDPMEditFriendlyOptions

METHODS = ("regular", "edit_friendly")


def regular_sampling(
    backbone: Any, num: int, steps: int, eta: float, generator: torch.Generator | None
) -> dict[str, Tensor]:
    """Sample ``num`` paths of the native DDPM process from x_T ~ N(0, I).

    Returns xs (steps+1, num, d) with xs[i] = x_i, mus (steps, num, d) with mus[i-1] = μ̂_i(x_i),
    zs (steps, num, d) with zs[i-1] = z_i, and sigmas (steps,).
    """
    schedule = backbone.schedule(steps, eta)
    d = backbone.dim
    xs = torch.zeros(steps + 1, num, d)
    mus = torch.zeros(steps, num, d)
    zs = torch.zeros(steps, num, d)
    x_top = randn((num, d, 1, 1), generator, backbone.device)
    xs[steps] = x_top.reshape(num, d).cpu()

    def record(i: int, x: Tensor, eps: Tensor, z: Tensor) -> Tensor:
        mu = schedule.mu(x, eps, i)
        mus[i - 1] = mu.reshape(num, d).cpu()
        zs[i - 1] = z.reshape(num, d).cpu()
        xs[i - 1] = (mu + float(schedule.sigma[i - 1]) * z).reshape(num, d).cpu()
        return z

    reverse_process(
        backbone, x_top, schedule, steps, None, None, 1.0, generator=generator, noise_fn=record, desc="sample"
    )
    return {"xs": xs, "mus": mus, "zs": zs, "sigmas": schedule.sigma.clone()}


def edit_friendly_paths(
    backbone: Any, x0: Tensor, steps: int, eta: float, generator: torch.Generator | None
) -> dict[str, Tensor]:
    """Algorithm 1 for x0 (num, d, 1, 1): the same fields as :func:`regular_sampling`."""
    inverter = DDPMEditFriendly(DDPMEditFriendlyOptions(eta=eta, guidance_scale=1.0))
    inv = inverter.invert(backbone, x0, "", num_steps=steps, generator=generator)
    num, d = x0.shape[0], x0.shape[1]
    sigmas = backbone.schedule(steps, eta).sigma
    xs = inv.xts.reshape(steps + 1, num, d).cpu()
    zs = inv.zs.reshape(steps, num, d).cpu()
    mus = xs[:-1] - sigmas[:, None, None] * zs  # μ̂_i = x_{i-1} - σ_i z_i (exact by construction)
    return {"xs": xs, "mus": mus, "zs": zs, "sigmas": sigmas.clone()}


def consecutive_angles(zs: Tensor) -> Tensor:
    """Angles in degrees between z_i and z_{i-1}, (steps-1, num): row j is steps (j+2, j+1)."""
    a, b = zs[1:], zs[:-1]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def histogram(angles: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """(counts (bins,), edges (bins+1,)) over [0°, 180°]."""
    counts = torch.histc(angles.flatten().double(), bins=bins, min=0.0, max=180.0)
    return counts, torch.linspace(0.0, 180.0, bins + 1, dtype=torch.float64)


def angle_stats(angles: Tensor, bins: int) -> dict[str, float]:
    counts, edges = histogram(angles, bins)
    peak = int(torch.argmax(counts))
    flat = angles.flatten().double()
    return {
        "mean_angle": float(flat.mean()),
        "median_angle": float(flat.median()),
        "peak_bin_low": float(edges[peak]),
        "peak_bin_high": float(edges[peak + 1]),
        "fraction_above_150": float((flat >= 150).double().mean()),
        "fraction_below_30": float((flat <= 30).double().mean()),
    }


def draw_path(ax: Any, path: dict[str, Tensor], title: str) -> None:
    """One path (draw 0): green points x_t, blue drifts x_i -> μ̂_i, red noises μ̂_i -> x_{i-1}."""
    xs, mus = path["xs"][:, 0, :2].numpy(), path["mus"][:, 0, :2].numpy()
    steps = mus.shape[0]
    arrow = dict(angles="xy", scale_units="xy", scale=1, width=0.004)
    ax.quiver(
        xs[1:, 0],
        xs[1:, 1],
        mus[:, 0] - xs[1:, 0],
        mus[:, 1] - xs[1:, 1],
        color="tab:blue",
        label="drift μ̂_t(x_t) - x_t",
        **arrow,
    )
    ax.quiver(
        mus[:, 0],
        mus[:, 1],
        xs[:-1, 0] - mus[:, 0],
        xs[:-1, 1] - mus[:, 1],
        color="tab:red",
        label="noise σ_t z_t",
        **arrow,
    )
    ax.scatter(xs[1:steps, 0], xs[1:steps, 1], s=10, color="tab:green", zorder=3, label="x_t")
    ax.scatter(xs[[0, steps], 0], xs[[0, steps], 1], s=30, color="black", zorder=4, label="x_T, x_0")
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7, loc="lower right")


def write_outputs(out: Path, paths: dict[str, dict[str, Tensor]], angles: dict[str, Tensor], bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    draw_path(axes[0, 0], paths["regular"], "Regular DDPM sampling")
    draw_path(axes[0, 1], paths["edit_friendly"], "Edit-friendly inversion (ours)")
    for ax, method, title in (
        (axes[1, 0], "regular", "Regular: angle between z_t, z_t-1"),
        (axes[1, 1], "edit_friendly", "Edit-friendly: angle between z_t, z_t-1"),
    ):
        counts, edges = histogram(angles[method], bins)
        ax.bar(
            edges[:-1].numpy(), counts.numpy(), width=180.0 / bins, align="edge", color="tab:gray", edgecolor="black"
        )
        ax.set_xlim(0, 180)
        ax.set_xlabel("angle [deg]")
        ax.set_ylabel("count")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "figure5.png", dpi=120)
    plt.close(fig)

    d = paths["regular"]["xs"].shape[-1]
    with open(out / "paths.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "step", "sigma"]
            + [f"x_{k}" for k in range(d)]
            + [f"mu_{k}" for k in range(d)]
            + [f"z_{k}" for k in range(d)]
        )
        for method, p in paths.items():
            steps = p["mus"].shape[0]
            w.writerow([method, steps, ""] + p["xs"][steps, 0].tolist() + [""] * (2 * d))
            for i in range(steps, 0, -1):
                w.writerow(
                    [method, i - 1, float(p["sigmas"][i - 1])]
                    + p["xs"][i - 1, 0].tolist()
                    + p["mus"][i - 1, 0].tolist()
                    + p["zs"][i - 1, 0].tolist()
                )
    with open(out / "angles.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "draw", "step", "angle_deg"])  # angle between z_step and z_{step-1}
        for method, a in angles.items():
            for j in range(a.shape[0]):
                for b in range(a.shape[1]):
                    w.writerow([method, b, j + 2, f"{float(a[j, b]):.4f}"])
    with open(out / "angle_histogram.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bin_low_deg", "bin_high_deg", *METHODS])
        hist = {m: histogram(angles[m], bins)[0] for m in METHODS}
        edges = histogram(angles["regular"], bins)[1]
        for k in range(bins):
            w.writerow([float(edges[k]), float(edges[k + 1])] + [int(hist[m][k]) for m in METHODS])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="outputs/toy_gaussian", help="output folder (default: %(default)s)")
    p.add_argument("--backbone", default="gaussian", help="a gaussian backbone preset or name (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="inference steps (default: %(default)s, as the paper)")
    p.add_argument("--draws", type=int, default=1000, help="paths per method for the histograms (default: %(default)s)")
    p.add_argument("--eta", type=float, default=1.0, help="DDPM stochasticity in (0, 1] (default: %(default)s)")
    p.add_argument("--bins", type=int, default=18, help="histogram bins over 0..180 degrees (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the figure; returns the statistics per method (also printed)."""
    args = parse_args(argv)
    if args.steps < 3 or args.draws < 1 or args.bins < 1:
        raise InputError("--steps must be >= 3, --draws >= 1 and --bins >= 1")
    backbone = load_backbone(args.backbone, device="cpu")
    if not hasattr(backbone, "sample_data"):
        raise InputError(f"toy_gaussian needs the analytic gaussian backbone, got --backbone {args.backbone!r}")
    gen = make_generator(args.seed)
    regular = regular_sampling(backbone, args.draws, args.steps, args.eta, gen)
    x0 = backbone.sample_data(args.draws, gen)
    friendly = edit_friendly_paths(backbone, x0, args.steps, args.eta, gen)
    paths = {"regular": regular, "edit_friendly": friendly}
    angles = {m: consecutive_angles(p["zs"]) for m, p in paths.items()}
    stats: dict[str, Any] = {}
    for m in METHODS:
        stats[m] = angle_stats(angles[m], args.bins)
        stats[m]["z_variance"] = float(paths[m]["zs"].var())
        stats[m]["mean_noise_norm"] = float((paths[m]["sigmas"][:, None] * paths[m]["zs"].norm(dim=-1)).mean())
    write_outputs(Path(args.out), paths, angles, args.bins)
    print(
        f"toy Gaussian ({backbone.dim}D, mean {backbone.mean64.tolist()}): {args.steps} steps, "
        f"{args.draws} draws, eta {args.eta}"
    )
    print(
        f"{'method':<14} {'mean angle':>10} {'median':>8} {'peak bin':>12} {'>=150deg':>9} {'var z':>8} "
        f"{'|sigma z|':>9}"
    )
    for m in METHODS:
        s = stats[m]
        peak = f"[{s['peak_bin_low']:.0f},{s['peak_bin_high']:.0f})"
        print(
            f"{m:<14} {s['mean_angle']:>10.1f} {s['median_angle']:>8.1f} {peak:>12} "
            f"{s['fraction_above_150']:>9.3f} {s['z_variance']:>8.2f} {s['mean_noise_norm']:>9.3f}"
        )
    print(f"wrote {Path(args.out) / 'figure5.png'} and CSVs")
    if not math.isfinite(stats["edit_friendly"]["mean_angle"]):
        raise RuntimeError("non-finite angles")
    return stats


if __name__ == "__main__":
    main()
