"""Text-conditional pixel-space flow-matching models, and ``digits_flow``: the trained one that ships.

:class:`TextPixelFlowBackbone` (``text_pixel_flow``) loads the same folder layout as
``text_pixel_ddpm`` (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) where the
network is a rectified flow: x_t = (1 − t)·x0 + t·ε with t in [0, 1] (t = 1 pure noise), the
UNet predicts the velocity v = ε − x0 from the timestep input 1000·t, and ``scheduler/`` is a
diffusers ``FlowMatchEulerDiscreteScheduler`` whose sigmas for N steps (then 0) are the step
times. Its process is :class:`framework.process.FlowMatchProcess` (through
:class:`framework.backbone.FlowMatchBackbone`), so every inverter and editor that works through
the process interface runs on it; x0 is the image itself and prompts are encoded by the CLIP
text model, as for ``digits``.

``digits_flow`` is that backbone with the model trained by ``scripts/train_digits.py
--objective flow`` on the same coloured scikit-learn digits, prompt grammar and architecture as
``digits``, shipped in ``plugins/backbones/digits_flow_model/`` (a few MB, no download).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framework.backbone import (
    Backbone,
    FlowMatchBackbone,
    PromptRules,
    check_model_folder,
    resolve_device,
    resolve_dtype,
)
from framework.conditioning import Conditioning
from framework.errors import InputError, WeightsNotFoundError
from framework.registry import BACKBONES
from plugins.backbones.digits import TEXT_PIXEL_COMPONENTS, TextPrompts, load_text_pixel_parts, trained_words

#: the shipped weights of the ``digits_flow`` backbone
DIGITS_FLOW_MODEL = Path(__file__).resolve().parent / "digits_flow_model"
#: the scheduler class a flow folder names in ``scheduler/scheduler_config.json``
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


@dataclass
class TextPixelFlowOptions:
    """Options of the ``text_pixel_flow`` backbone."""

    model: str = str(DIGITS_FLOW_MODEL)  # a local diffusers folder (unet, text_encoder, tokenizer, scheduler)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    device: str = "auto"
    local_files_only: bool = True


@BACKBONES.register("text_pixel_flow")
class TextPixelFlowBackbone(TextPrompts, FlowMatchBackbone):
    """A text-conditional pixel-space rectified flow (UNet2DConditionModel + CLIP text encoder)."""

    Options = TextPixelFlowOptions
    conditional = True
    pixel_space = True

    def __init__(self, options: TextPixelFlowOptions | None = None) -> None:
        Backbone.__init__(self)
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.options = options = options or TextPixelFlowOptions()
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        sched_cfg = load_text_pixel_parts(
            self, options, FlowMatchEulerDiscreteScheduler.load_config, "--backbone digits_flow"
        )
        if sched_cfg.get("_class_name") != FLOW_SCHEDULER:
            raise InputError(
                f"{options.model!r} is not a flow-matching model: its scheduler is "
                f"{sched_cfg.get('_class_name')!r}, text_pixel_flow takes a {FLOW_SCHEDULER}; load a "
                "DDPM folder with --backbone text_pixel_ddpm backbone.model=PATH"
            )
        self.set_scheduler(FlowMatchEulerDiscreteScheduler.from_config(sched_cfg))
        self.channels = int(self.unet.config.in_channels)
        if self.channels != 3:
            raise InputError(f"text_pixel_flow needs a 3-channel image model, got in_channels={self.channels}")
        size = self.unet.config.sample_size
        self.resolution = int(size if isinstance(size, int) else size[0])
        self.size_multiple = 2 ** (len(self.unet.config.down_block_types) - 1)
        self.max_tokens = int(self.text_encoder.config.max_position_embeddings)
        self.known_words = trained_words(options.model)
        self._prompt_cache: dict[str, Tensor] = {}

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The tokenizer and the text encoder's config only (no network, no weights)."""
        from plugins.backbones.stable_diffusion import text_prompt_rules

        if not isinstance(options, TextPixelFlowOptions):
            return None
        check_model_folder(options.model, TEXT_PIXEL_COMPONENTS, "text-conditional pixel flow model")
        return text_prompt_rules(options.model, known_words=trained_words(options.model))

    # ----------------------------------------------------------------- images (identity)
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> x0 = the pixels (B, 3, H, W) float32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(f"image size {w}x{h} is not a multiple of {self.size_multiple}, which this model needs")
        return images.to(self.device, torch.float32).clone()

    def decode(self, x0: Tensor) -> Tensor:
        """x0 (B, 3, H, W) -> images (B, 3, H, W) in [-1, 1] (clamped), float32."""
        return x0.float().clamp(-1, 1)

    # ----------------------------------------------------------------- network
    def model_output(self, x_t: Tensor, t: float | Tensor, cond: Conditioning | None) -> Tensor:
        """The velocity v = ε − x0 at timestep(s) 1000·t (a float, or (B,) float32), float32."""
        if cond is None:
            raise InputError("this text-conditional model needs a prompt conditioning")
        if isinstance(t, Tensor):
            t = t.to(self.device, torch.float32)
        hidden = cond.embeds.to(self.dtype)
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=hidden, return_dict=False)[0]
        return out.float()

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "model": self.options.model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "prediction_type": self.prediction_type,
            "shift": float(self.scheduler.config.get("shift", 1.0)),
            "resolution": self.resolution,
        }


@BACKBONES.register("digits_flow")
class DigitsFlowBackbone(TextPixelFlowBackbone):
    """The shipped flow model trained on coloured scikit-learn digits (see the module docstring)."""

    def __init__(self, options: TextPixelFlowOptions | None = None) -> None:
        options = options or TextPixelFlowOptions()
        check_shipped_flow(options)
        super().__init__(options)

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        if isinstance(options, TextPixelFlowOptions):
            check_shipped_flow(options)
        return super().load_prompt_rules(options)


def check_shipped_flow(options: TextPixelFlowOptions) -> None:
    """The shipped weights are where they belong (else say how to re-create them)."""
    if not (Path(options.model) / "unet").is_dir() and Path(options.model) == DIGITS_FLOW_MODEL:
        raise WeightsNotFoundError(
            f"the digits_flow model is missing from {DIGITS_FLOW_MODEL}; it ships with the repository "
            "(re-create it with: python scripts/train_digits.py --objective flow --steps 700 "
            "--out plugins/backbones/digits_flow_model)"
        )

