"""``sd14_random``: Stable Diffusion 1.4's architecture with random weights, built offline.

For timing and memory only: its edits and decodes are noise. The sizes are the published
configuration values of CompVis/stable-diffusion-v1-4 (``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json``), written
out below, so nothing is downloaded: a UNet of 859,520,964 parameters, a VAE of 83,653,863 and
a CLIP ViT-L/14 text encoder of 123,060,480 (its 49,408-token embedding included). The
tokenizer is the tiny model's small BPE vocabulary (a tokenizer has no weights and costs no
time; prompts are still padded to SD's 77 tokens). The scheduler is SD 1.4's, as a DDIM
scheduler with "leading" spacing like every Stable Diffusion backbone here.

Built directly in memory on the target device, with no save/load round trip and no disk cache:
a cached copy would be 4.3 GB of float32 on disk per seed, and reading it back is not faster
than initialising on a GPU (where the weights are created in place), while the loading code
path is already exercised by ``tiny``. Each part is created in float32 under a fixed seed on
``device`` and cast to its dtype straight away, so the float32 peak is one part (the UNet's
3.4 GB), not the whole model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from framework.backbone import Backbone, resolve_device, resolve_dtype
from framework.registry import BACKBONES
from plugins.backbones.stable_diffusion import StableDiffusionBackbone, StableDiffusionOptions
from plugins.backbones.tiny import build_tokenizer

#: CompVis/stable-diffusion-v1-4 unet/config.json (diffusers defaults omitted)
SD14_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
#: CompVis/stable-diffusion-v1-4 vae/config.json
SD14_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
#: CompVis/stable-diffusion-v1-4 text_encoder/config.json (CLIP ViT-L/14's text tower)
SD14_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}
#: CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json (a PNDM config there; the
#: values that define the schedule and the timesteps)
SD14_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
#: the published parameter counts, checked by the tests
SD14_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


@dataclass
class SD14RandomOptions:
    """Options of the ``sd14_random`` backbone."""

    seed: int = 0
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    vae_dtype: str | None = None  # None: as dtype
    device: str = "auto"
    truncate_prompts: bool = False


@contextmanager
def seeded_build(seed: int, device: torch.device) -> Iterator[None]:
    """Inside the block: new tensors are created on ``device`` from a random state seeded with
    ``seed`` (the CPU's, and the CUDA card's where ``device`` is one; forked, so the caller's
    random state is left as it was), and diffusers' warnings are off (``.to(dtype)`` on a fresh
    model warns about nothing)."""
    from diffusers.utils import logging as diffusers_logging

    devices = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=devices), torch.device(device):
            torch.manual_seed(seed)
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def random_description(backbone: Any, description: dict[str, Any]) -> dict[str, Any]:
    """``description`` (the loaded model's) with the class name, the seed and ``random_weights``."""
    description.update({"class": type(backbone).__name__, "seed": backbone.random_options.seed, "random_weights": True})
    return description


def build_sd14_parts(
    seed: int, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype
) -> tuple[Any, Any, Any, Any, Any]:
    """(tokenizer, text_encoder, unet, vae, scheduler) with SD 1.4's sizes and random weights
    drawn from ``seed`` on ``device`` (weights depend on the device's generator), each network
    created in float32 on ``device`` and cast at once (see the module doc)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    with seeded_build(seed, device):
        unet = UNet2DConditionModel(**SD14_UNET).to(dtype)
        vae = AutoencoderKL(**SD14_VAE).to(vae_dtype)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **SD14_TEXT,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        ).to(dtype)
    scheduler = DDIMScheduler(**SD14_SCHEDULER, timestep_spacing="leading")
    return tokenizer, text_encoder, unet, vae, scheduler


@BACKBONES.register("sd14_random")
class SD14RandomBackbone(StableDiffusionBackbone):
    """Stable Diffusion 1.4's networks with random weights (see the module docstring)."""

    Options = SD14RandomOptions  # type: ignore[assignment]

    def __init__(self, options: SD14RandomOptions | None = None) -> None:
        Backbone.__init__(self)
        self.random_options = opts = options or SD14RandomOptions()
        self.options = StableDiffusionOptions(
            model="sd14_random (random weights)",
            dtype=opts.dtype,
            vae_dtype=opts.vae_dtype,
            device=opts.device,
            local_files_only=True,
            truncate_prompts=opts.truncate_prompts,
        )
        self.device = resolve_device(opts.device)
        self.dtype = resolve_dtype(opts.dtype)
        self.vae_dtype = resolve_dtype(opts.vae_dtype or opts.dtype)
        start = time.perf_counter()
        parts = build_sd14_parts(int(opts.seed), self.device, self.dtype, self.vae_dtype)
        self.attach(*parts)
        self.build_seconds = time.perf_counter() - start

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network: {"unet": ..., "vae": ..., "text_encoder": ...}."""
        return {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("unet", "vae", "text_encoder")
        }

    def describe(self) -> dict[str, Any]:
        return random_description(self, super().describe())
