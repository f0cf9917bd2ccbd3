"""Train a small unconditional pixel-space DDPM with Lightning and save it as a diffusers folder.

Data: a folder of images (any size and mode; square-cropped and resized), or, with no
download, scikit-learn's bundled digits (1797 8×8 images, upscaled bilinearly to 16×16 or
32×32), gray or with a random color per digit and background (``--color random``, the
default, so that color manipulations have something to act on). The model is a small
``UNet2DModel`` trained with the epsilon loss on the DDPM schedule of Ho et al. (1000 steps,
β linear 1e-4..0.02); the folder it writes (``unet/``, ``scheduler/``, ``model_index.json``)
loads with ``--backbone PATH`` or ``{"name": "pixel_ddpm", "model": PATH}``.

    python scripts/train_pixel_ddpm.py --out models/digits16            # digits, a few minutes on 2 cores
    python scripts/train_pixel_ddpm.py --data photos/ --resolution 32 --out models/mine
    python scripts/train_pixel_ddpm.py --out /tmp/m --max-steps 20       # smoke run
"""

from __future__ import annotations

import argparse
import colorsys
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework.errors import EditFriendlyError, InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def digits_dataset(resolution: int, color: str, seed: int) -> torch.Tensor:
    """scikit-learn's digits as (1797, 3, R, R) in [-1, 1]; ``color`` is ``gray`` or ``random``.

    ``random`` paints each digit with a saturated random hue on a dark background of another
    random hue (fixed by ``seed``).
    """
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]  # (n, 1, 8, 8)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(0, 1)
    if color == "gray":
        return (x * 2 - 1).expand(-1, 3, -1, -1).contiguous()
    if color != "random":
        raise InputError(f"--color must be gray or random, got {color!r}")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    fg = np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in rng.random(n)], dtype=np.float32)
    bg = np.array([colorsys.hsv_to_rgb(h, 0.6, 0.25) for h in rng.random(n)], dtype=np.float32)
    fg_t = torch.from_numpy(fg)[:, :, None, None]
    bg_t = torch.from_numpy(bg)[:, :, None, None]
    return (x * fg_t + (1 - x) * bg_t) * 2 - 1


def folder_dataset(folder: str | Path, resolution: int) -> torch.Tensor:
    """Every image under ``folder`` (recursively), square-cropped and resized: (n, 3, R, R)."""
    from framework.images import fit_image, load_image, pil_to_tensor

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--data must be a folder of images, got {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    return torch.cat([pil_to_tensor(fit_image(load_image(p), None, resolution, 1)) for p in files])


def build_module(resolution: int, width: int, lr: float, seed: int):
    """The LightningModule: a UNet2DModel trained with the DDPM epsilon loss."""
    import lightning as L

    from plugins.backbones.pixel_ddpm import build_pixel_unet, ddpm_scheduler

    class DDPMModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.unet = build_pixel_unet(resolution, 3, width)
            self.noise_scheduler = ddpm_scheduler("epsilon")
            self.register_buffer("abar", self.noise_scheduler.alphas_cumprod.float().clone(), persistent=False)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x0 = batch[0]
            if torch.rand(()) < 0.5:  # a random 1-pixel horizontal shift (flips would change digits)
                x0 = torch.roll(x0, shifts=int(torch.randint(-1, 2, ())), dims=-1)
            t = torch.randint(0, self.abar.shape[0], (x0.shape[0],), device=x0.device)
            eps = torch.randn_like(x0)
            a = self.abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            loss = F.mse_loss(self.unet(x_t, t).sample, eps)
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=0.0)
            total = max(1, self.trainer.max_steps)
            warm = min(100, total // 10 + 1)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / total)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return DDPMModule()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (a diffusers DDPMPipeline layout)")
    p.add_argument("--data", default="digits", help="'digits' (scikit-learn, offline) or a folder of images")
    p.add_argument("--resolution", type=int, default=16, help="image side in pixels (16 or 32 for digits)")
    p.add_argument("--color", default="random", choices=["random", "gray"], help="digits coloring")
    p.add_argument("--width", type=int, default=16, help="UNet channels at the first level (x2 at the second)")
    p.add_argument("--max-steps", type=int, default=500, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time (the model is saved)")
    p.add_argument("--save-every", type=int, default=100, help="also save the model every N steps (0: only at the end)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except EditFriendlyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from plugins.backbones.pixel_ddpm import save_pixel_model

    if args.resolution < 8 or args.resolution % 2:
        raise InputError(f"--resolution must be an even number >= 8, got {args.resolution}")
    if args.max_steps < 1:
        raise InputError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.data == "digits":
        data = digits_dataset(args.resolution, args.color, args.seed)
    else:
        data = folder_dataset(args.data, args.resolution)
    L.seed_everything(args.seed, verbose=False)
    loader = DataLoader(
        TensorDataset(data),
        batch_size=min(args.batch_size, len(data)),
        shuffle=True,
        drop_last=len(data) >= args.batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    module = build_module(args.resolution, args.width, args.lr, args.seed)
    out = Path(args.out)
    start = time.perf_counter()

    def save(step: int) -> dict:
        info = {
            "data": args.data,
            "resolution": args.resolution,
            "color": args.color if args.data == "digits" else None,
            "images": len(data),
            "steps": step,
            "batch_size": args.batch_size,
            "width": args.width,
            "seconds": round(time.perf_counter() - start, 1),
            "loss": float(trainer.callback_metrics.get("loss", float("nan"))),
        }
        unet = copy.deepcopy(module.unet).to("cpu")
        save_pixel_model(out, unet, module.noise_scheduler, _editfriendly_training=info)
        (out / "training.json").write_text(json.dumps(info, indent=1))
        return info

    class Progress(L.Callback):
        """One line every 50 steps (wall time, loss); a save every ``--save-every`` steps."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % 50 == 0:
                loss = float(trainer.callback_metrics.get("loss", float("nan")))
                print(f"step {step}/{args.max_steps} loss {loss:.4f} {time.perf_counter() - start:.0f}s", flush=True)
            if args.save_every and step % args.save_every == 0 and step < args.max_steps:
                save(step)

    max_time = None
    if args.max_minutes is not None:
        max_time = {"seconds": max(1, int(args.max_minutes * 60))}
    trainer = L.Trainer(
        max_steps=args.max_steps,
        max_time=max_time,
        callbacks=[Progress()],
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(module, loader)
    info = save(trainer.global_step)
    print(f"trained {info['steps']} steps in {info['seconds']:.0f}s (loss {info['loss']:.4f}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
