"""Train the ``digits`` text-to-image models: text-conditional pixel diffusion on coloured scikit-learn digits.

Data (:mod:`framework.digits`): the 1500 training digits (index < 1500), each batch element a
random digit in a random (fg, bg) pair of the six-colour palette, prompt
``a {fg} {digit} on a {bg} background``; 10 % of prompts are replaced by "" so that
classifier-free guidance works. The model (:func:`plugins.backbones.digits.build_digits_model`):
a ``UNet2DConditionModel`` with cross-attention on its two lower levels and a 2-layer
``CLIPTextModel`` over the grammar's words, trained jointly with the epsilon loss on a 1000-step
cosine DDPM schedule; AdamW with warm-up and cosine decay; an exponential moving average of the
weights is what is saved. Deterministic from ``--seed`` (one process, fixed thread count).

``--objective flow`` trains the same data, architecture, CFG dropout, EMA and optimizer with the
rectified-flow objective instead (the ``digits_flow`` model): x_t = (1 − t)·x0 + t·ε with
t ~ U[0, 1] (t = 1 is pure noise), the network predicts the velocity v = ε − x0 from the
timestep input 1000·t, and the saved ``scheduler/`` is a ``FlowMatchEulerDiscreteScheduler``
(shift 1.0). t is drawn uniformly rather than logit-normally (SD3): the model is used for
inversion and editing, which evaluate it on the scheduler's evenly spaced times over all of
[0, 1], ends included (the first steps of an inversion are at t near 0, SDEdit and skipped edits
start mid-way), so every time gets the same training weight. ``samples.png`` is then drawn with
the Euler sampler on the scheduler's sigmas.

Writes to ``--out`` a diffusers folder (``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, ``model_index.json``) that ``--backbone text_pixel_ddpm backbone.model=OUT`` loads,
plus ``training.json`` (settings, timings, the loss log and held-out losses), ``training.csv``,
``loss.png`` and ``samples.png`` (every digit × several colour pairs, DDIM 50 steps).

    python scripts/train_digits.py --out plugins/backbones/digits_model     # the shipped model
    python scripts/train_digits.py --out /tmp/d --steps 20 --no-samples      # smoke run
    python scripts/train_digits.py --objective flow --steps 700 --eval-every 100 \
        --out plugins/backbones/digits_flow_model                            # the shipped flow model
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework import digits as D
from framework.errors import EditFriendlyError, InputError

#: (fg, bg) pairs of the sample grid's columns
GRID_PAIRS = [("red", "black"), ("blue", "white"), ("green", "yellow"), ("yellow", "blue"),
              ("white", "red"), ("black", "green")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (diffusers layout)")
    p.add_argument("--objective", default="eps", choices=["eps", "flow"],
                   help="eps: DDPM epsilon loss (the digits model); flow: rectified-flow velocity loss (digits_flow)")
    p.add_argument("--resolution", type=int, default=16, choices=[16, 32])
    p.add_argument("--channels", default="32,64,64", help="UNet block_out_channels")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps (the shipped model: 6000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay down to lr x this")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights (0: no EMA)")
    p.add_argument("--uncond-prob", type=float, default=0.1, help="fraction of empty prompts (CFG dropout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None,
                   help="start from the weights of a folder this script wrote (a second training phase)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--eval-every", type=int, default=500, help="held-out loss every N steps")
    p.add_argument("--no-samples", action="store_true", help="skip the sample grid")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


class Prompts:
    """Token ids of every grammar prompt (and of ""), computed once."""

    def __init__(self, tokenizer, max_tokens: int) -> None:
        texts = [""] + [D.prompt(d, f, b) for d in range(10) for f in D.COLORS for b in D.COLORS]
        ids = tokenizer(texts, padding="max_length", max_length=max_tokens, truncation=True,
                        return_tensors="pt").input_ids
        self.ids = ids
        self.index = {t: i for i, t in enumerate(texts)}

    def batch(self, digits: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        rows = [0 if dr else self.index[D.prompt(int(d), D.COLORS[int(f)], D.COLORS[int(b)])]
                for d, f, b, dr in zip(digits, fg, bg, drop)]
        return self.ids[rows]


def heldout_set(res: int, seed: int, objective: str = "eps") -> tuple[torch.Tensor, ...]:
    """Fixed held-out evaluation: (x0, digits, fg, bg, t, eps) for the 297 held-out images
    (t: integer DDPM timesteps for ``eps``, times in [0, 1) for ``flow``)."""
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.tensor(D.split_indices("heldout"))
    fg, bg = D.random_colourings(len(idx), g)
    pal = D.palette_tensor()
    x0 = D.render(D.intensities(idx, res), pal[fg], pal[bg])
    if objective == "flow":
        t = torch.rand((len(idx),), generator=g)
    else:
        t = torch.randint(0, 1000, (len(idx),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return x0, D.labels(idx), fg, bg, t, eps


def diffusion_loss(unet, text_encoder, ids, x0, t, eps, abar) -> torch.Tensor:
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    cond = text_encoder(ids)[0]
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, eps)


def flow_loss(unet, text_encoder, ids, x0, t, eps, abar=None) -> torch.Tensor:
    """Rectified-flow velocity loss: x_t = (1 − t)·x0 + t·ε, target v = ε − x0, network time 1000·t."""
    s = t.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    cond = text_encoder(ids)[0]
    return F.mse_loss(unet(x_t, t * 1000, encoder_hidden_states=cond).sample, eps - x0)


def flow_scheduler():
    """The sampling scheduler saved with a flow model: Euler on evenly spaced sigmas (shift 1.0)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except EditFriendlyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from plugins.backbones.digits import DigitsArchitecture, build_digits_model, save_digits_model

    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    res = args.resolution
    arch = DigitsArchitecture(resolution=res, block_out_channels=tuple(int(c) for c in args.channels.split(",")))
    unet, text_encoder, tokenizer, scheduler = build_digits_model(arch, args.seed)
    flow = args.objective == "flow"
    loss_fn = flow_loss if flow else diffusion_loss
    if flow:
        scheduler = flow_scheduler()
    phases: list = []
    if args.init:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        init = Path(args.init)
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(init / "unet", low_cpu_mem_usage=False).state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(init / "text_encoder").state_dict())
        previous = json.loads((init / "training.json").read_text())
        phases = [*previous.get("phases", []), {k: previous[k] for k in
                  ("steps", "lr", "seed", "seconds", "final_heldout_loss", "heldout") if k in previous}]
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    n_params = sum(p.numel() for p in params)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # step counts from 0
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    abar = None if flow else scheduler.alphas_cumprod.float().clone()
    max_tokens = text_encoder.config.max_position_embeddings
    prompts = Prompts(tokenizer, max_tokens)
    train_idx = torch.tensor(D.split_indices("train"))
    a_train = D.intensities(train_idx, res)  # (1500, 1, R, R)
    y_train = D.labels(train_idx)
    pal = D.palette_tensor()
    ho = heldout_set(res, args.seed) if not flow else heldout_set(res, args.seed, "flow")
    ho_ids = prompts.ids[[prompts.index[D.prompt(int(d), D.COLORS[int(f)], D.COLORS[int(b)])]
                          for d, f, b in zip(ho[1], ho[2], ho[3])]]
    g = torch.Generator().manual_seed(args.seed)

    @torch.no_grad()
    def heldout_loss(u, te) -> float:
        was = u.training, te.training
        u.eval(), te.eval()
        x0, _, _, _, t, eps = ho
        losses = [loss_fn(u, te, ho_ids[s:s + 100], x0[s:s + 100], t[s:s + 100], eps[s:s + 100], abar)
                  * len(x0[s:s + 100]) for s in range(0, len(x0), 100)]
        u.train(was[0]), te.train(was[1])
        return float(sum(losses) / len(x0))

    log: list[dict] = []
    evals: list[dict] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train digits_flow" if flow else "train digits", disable=args.no_progress,
               mininterval=2.0)
    smooth = None
    for step in bar:
        pick = torch.randint(len(train_idx), (args.batch_size,), generator=g)
        fg, bg = D.random_colourings(args.batch_size, g)
        x0 = D.render(a_train[pick], pal[fg], pal[bg])
        drop = torch.rand(args.batch_size, generator=g) < args.uncond_prob
        ids = prompts.batch(y_train[pick], fg, bg, drop)
        if flow:
            t = torch.rand((args.batch_size,), generator=g)
        else:
            t = torch.randint(0, len(abar), (args.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = loss_fn(unet, text_encoder, ids, x0, t, eps, abar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if args.ema > 0:
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
        lv = float(loss.detach())
        smooth = lv if smooth is None else 0.98 * smooth + 0.02 * lv
        log.append({"step": step + 1, "loss": round(lv, 6), "lr": round(sched.get_last_lr()[0], 8),
                    "seconds": round(time.perf_counter() - start, 2)})
        bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            u, te = (ema_unet, ema_text) if args.ema > 0 else (unet, text_encoder)
            evals.append({"step": step + 1, "heldout_loss": round(heldout_loss(u, te), 6),
                          "train_loss_smoothed": round(smooth, 6)})
            tqdm.write(f"step {step + 1}: held-out loss {evals[-1]['heldout_loss']:.4f} "
                       f"(train, smoothed {smooth:.4f}) {time.perf_counter() - start:.0f}s")
    seconds = time.perf_counter() - start
    final_u, final_te = (ema_unet, ema_text) if args.ema > 0 else (unet, text_encoder)
    final_heldout = evals[-1]["heldout_loss"] if evals else heldout_loss(final_u, final_te)
    info = {
        "data": "scikit-learn digits, train split (index < 1500), six-colour palette",
        **({"objective": "flow", "t_sampling": "uniform", "prediction": "velocity (noise - x0)",
            "timestep_input": "1000 * t"} if flow else {}),
        "resolution": res,
        "architecture": {"block_out_channels": list(arch.block_out_channels),
                         "cross_attention_dim": arch.cross_attention_dim, "text_layers": arch.text_layers},
        "parameters": n_params,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr, "warmup": args.warmup, "min_lr_ratio": args.min_lr_ratio,
        "ema": args.ema, "uncond_prob": args.uncond_prob, "seed": args.seed, "threads": args.threads,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 4),
        "final_train_loss_smoothed": round(smooth, 6),
        "final_heldout_loss": final_heldout,
        "heldout": evals,
        "torch": torch.__version__,
        "init": str(args.init) if args.init else None,
        "phases": phases,  # earlier training phases (--init), oldest first
        "total_steps": args.steps + sum(ph.get("steps", 0) for ph in phases),
    }
    save_digits_model(out, final_u, final_te, tokenizer, scheduler,
                      _editfriendly_training={k: v for k, v in info.items() if k != "heldout"})
    (out / "training.json").write_text(json.dumps({**info, "log_every_step": "training.csv"}, indent=1))
    with open(out / "training.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "seconds"])
        w.writeheader()
        w.writerows(log)
    plot_loss(log, evals, out / "loss.png", flow=flow)
    print(f"trained {args.steps} steps in {seconds:.0f}s ({seconds / args.steps:.3f} s/step); "
          f"loss {smooth:.4f}, held-out {final_heldout:.4f}; wrote {out}")
    if not args.no_samples and flow:
        flow_sample_grid(final_u, final_te, tokenizer, out / "samples.png", seed=args.seed)
    elif not args.no_samples:
        from plugins.backbones.digits import TextPixelBackbone, TextPixelOptions

        backbone = TextPixelBackbone(TextPixelOptions(model=str(out), device="cpu"))
        sample_grid(backbone, out / "samples.png", seed=args.seed)
    return 0


def plot_loss(log: list[dict], evals: list[dict], path: Path, flow: bool = False) -> None:
    """Training loss (raw and smoothed) and held-out loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    k = min(50, len(loss))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, color="0.8", lw=0.5, label="train (per step)")
    ax.plot(steps[k - 1:], smooth, color="C0", label=f"train ({k}-step mean)")
    if evals:
        ax.plot([e["step"] for e in evals], [e["heldout_loss"] for e in evals], "o-", color="C3",
                label="held-out (EMA weights)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE" if flow else "ε MSE")
    ax.set_title("digits_flow model training" if flow else "digits model training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_grid(backbone, path: Path, seed: int = 0, guidance: float = 3.0, steps: int = 50) -> None:
    """Rows: digits 0..9; columns: :data:`GRID_PAIRS`; one DDIM sample each, upscaled 4x."""
    from framework.digits_eval import generate

    prompts = [D.prompt(d, f, b) for d in range(10) for f, b in GRID_PAIRS]
    save_grid(generate(backbone, prompts, seed=seed, guidance_scale=guidance, num_steps=steps), path)


@torch.no_grad()
def flow_sample(unet, text_encoder, tokenizer, prompts: Sequence[str], seed: int = 0, guidance: float = 3.0,
                steps: int = 50) -> torch.Tensor:
    """Euler samples of a flow model on the scheduler's sigmas (1 … 1/1000, then 0), with
    classifier-free guidance on the velocity: (K, 3, R, R) in [-1, 1]; x_1 per prompt from ``seed``."""
    sched = flow_scheduler()
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.float()
    g = torch.Generator().manual_seed(seed)
    r = unet.config.sample_size
    x = torch.randn((len(prompts), 3, r, r), generator=g)
    max_tokens = text_encoder.config.max_position_embeddings
    ids = tokenizer(["", *prompts], padding="max_length", max_length=max_tokens, truncation=True,
                    return_tensors="pt").input_ids
    emb = text_encoder(ids)[0]
    cond = torch.cat([emb[:1].expand(len(prompts), -1, -1), emb[1:]])
    for i in range(steps):
        v_u, v_c = unet(torch.cat([x, x]), sigmas[i] * 1000, encoder_hidden_states=cond).sample.chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (v_u + guidance * (v_c - v_u))
    return x.clamp(-1, 1)


def flow_sample_grid(unet, text_encoder, tokenizer, path: Path, seed: int = 0, guidance: float = 3.0,
                     steps: int = 50) -> None:
    """Rows: digits 0..9; columns: :data:`GRID_PAIRS`; one Euler sample each, upscaled 4x."""
    prompts = [D.prompt(d, f, b) for d in range(10) for f, b in GRID_PAIRS]
    save_grid(flow_sample(unet, text_encoder, tokenizer, prompts, seed, guidance, steps), path)


def save_grid(imgs: torch.Tensor, path: Path) -> None:
    """Images (10·len(GRID_PAIRS), 3, R, R) in [-1, 1], row-major, as one grid upscaled 4x."""
    from framework.images import tensor_to_pil

    n_col = len(GRID_PAIRS)
    r = imgs.shape[-1]
    grid = torch.ones(3, 10 * (r + 1) + 1, n_col * (r + 1) + 1)
    for k, img in enumerate(imgs):
        i, j = divmod(k, n_col)
        grid[:, 1 + i * (r + 1): 1 + i * (r + 1) + r, 1 + j * (r + 1): 1 + j * (r + 1) + r] = img
    pil = tensor_to_pil(grid[None])[0]
    pil.resize((pil.width * 4, pil.height * 4), 0).save(path)


if __name__ == "__main__":
    sys.exit(main())
