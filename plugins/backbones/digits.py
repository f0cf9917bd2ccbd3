"""Text-conditional pixel-space DDPMs, and ``digits``: the trained model that ships with the project.

:class:`TextPixelBackbone` (``text_pixel_ddpm``) loads a diffusers folder made of the same
component types as Stable Diffusion minus the VAE: ``unet/`` (a ``UNet2DConditionModel`` with
cross-attention), ``text_encoder/`` (a ``CLIPTextModel``), ``tokenizer/`` (a ``CLIPTokenizer``)
and ``scheduler/``. x0 is the image itself, as for :mod:`plugins.backbones.pixel_ddpm`
(``encode_image``/``decode`` are the identity on [-1, 1] pixels, predicted x0 clamped where the
scheduler config says ``clip_sample``); prompts are encoded by the CLIP text model, so every
prompt-driven editor (text, Prompt-to-Prompt, Plug-and-Play, Zero-Shot, SDEdit) runs on it.

``digits`` is that backbone with the model trained by ``scripts/train_digits.py`` on coloured
scikit-learn digits (:mod:`framework.digits`), whose weights ship in
``plugins/backbones/digits_model/`` (a few MB). Prompts follow the grammar
``a {fg} {digit} on a {bg} background``. No download, ever: it is the model of the README's
first command, of the digits benchmark and of the tests that check edits do what they ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framework.backbone import (
    Backbone,
    PromptRules,
    check_model_folder,
    prompt_list,
    resolve_device,
    resolve_dtype,
    short_prompt,
)
from framework.conditioning import Conditioning
from framework.errors import InputError, WeightsNotFoundError
from framework.registry import BACKBONES
from plugins.backbones.pixel_ddpm import PixelDDPMBackbone

#: the shipped weights of the ``digits`` backbone
DIGITS_MODEL = Path(__file__).resolve().parent / "digits_model"
#: tokens per prompt (start and end included): the grammar's prompts have 8 words
DIGITS_MAX_TOKENS = 16
#: the sub-folders a text-conditional pixel model is loaded from
TEXT_PIXEL_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
#: the model_index.json key listing the words a model was trained on (a closed vocabulary)
WORDS_KEY = "_editfriendly_words"


def trained_words(model: str | Path) -> frozenset[str] | None:
    """The words the model in folder ``model`` was trained on, from its ``model_index.json``:
    its word list, or, for a folder written by ``scripts/train_digits.py`` before the list was
    recorded, the digits grammar's words; None when the folder does not say (an open vocabulary)."""
    import json

    from framework.digits import WORDS

    try:
        index = json.loads((Path(model) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    words = index.get(WORDS_KEY)
    if isinstance(words, list) and words and all(isinstance(w, str) for w in words):
        return frozenset(w.lower() for w in words)
    if "_editfriendly_training" in index:  # scripts/train_digits.py trains on the digits grammar only
        return frozenset(WORDS)
    return None


@dataclass
class TextPixelOptions:
    """Options of the ``text_pixel_ddpm`` backbone."""

    model: str = str(DIGITS_MODEL)  # a local diffusers folder (unet, text_encoder, tokenizer, scheduler)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    device: str = "auto"
    local_files_only: bool = True
    # Stable Diffusion's step convention (σ_1 > 0, so edit-friendly inversion is exact)
    steps_offset: int | None = 1
    set_alpha_to_one: bool = False
    clip_sample: bool | None = None  # None: the scheduler config's clip_sample


def load_text_pixel_parts(backbone: Backbone, options: Any, load_scheduler_config: Any, shipped: str) -> Any:
    """Load ``tokenizer``, ``text_encoder`` and ``unet`` of the folder ``options.model`` onto
    ``backbone`` (frozen, in eval mode, on its device and dtype) and return its scheduler config
    read by ``load_scheduler_config``; a folder that cannot be read is one error naming it
    (``shipped``: the option that gives the shipped model instead)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    kw: dict[str, Any] = {"local_files_only": options.local_files_only}
    check_model_folder(options.model, TEXT_PIXEL_COMPONENTS, "text-conditional pixel diffusion model")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a few-MB local model needs no progress bars
    try:
        backbone.tokenizer = CLIPTokenizer.from_pretrained(options.model, subfolder="tokenizer", **kw)
        backbone.text_encoder = CLIPTextModel.from_pretrained(
            options.model, subfolder="text_encoder", dtype=backbone.dtype, **kw
        )
        backbone.unet = UNet2DConditionModel.from_pretrained(
            options.model, subfolder="unet", torch_dtype=backbone.dtype, low_cpu_mem_usage=False, **kw
        )
        sched_cfg = load_scheduler_config(options.model, subfolder="scheduler", **kw)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"could not load a text-conditional pixel diffusion model (unet, text_encoder, tokenizer, "
            f"scheduler) from {options.model!r}: {str(exc).splitlines()[0]}\n"
            f"Give a folder written by scripts/train_digits.py (backbone.model=PATH), or use "
            f"{shipped} for the shipped model."
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for module in (backbone.text_encoder, backbone.unet):
        module.requires_grad_(False)
        module.eval()
        module.to(backbone.device)
    return sched_cfg


class TextPrompts:
    """Prompts of a text-conditional pixel model: its CLIP tokenizer and text encoder, loaded as
    ``tokenizer``/``text_encoder`` with ``max_tokens`` and ``known_words`` set."""

    tokenizer: Any
    text_encoder: Any
    max_tokens: int
    known_words: frozenset[str] | None
    device: torch.device
    _prompt_cache: dict[str, Tensor]

    def prompt_rules(self) -> PromptRules:
        """The tokenizer, the text encoder's token limit and the words the model was trained on."""
        return PromptRules(self.tokenizer, self.max_tokens, self.known_words)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """(K,) prompts -> their conditioning: ``embeds``, the CLIP text embeddings (K, L, D)
        float32, L = ``max_tokens``."""
        prompts = prompt_list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            full = self.tokenizer(missing, truncation=False, verbose=False).input_ids
            for prompt, ids in zip(missing, full):
                if len(ids) > self.max_tokens:
                    raise InputError(
                        f"prompt {short_prompt(prompt)!r} has {len(ids)} tokens but this model's text encoder takes "
                        f"{self.max_tokens} (start and end included); shorten it"
                    )
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            emb = self.text_encoder(ids)[0].float()
            for prompt, e in zip(missing, emb):
                self._prompt_cache[prompt] = e
        return Conditioning(torch.stack([self._prompt_cache[p] for p in prompts]))


@BACKBONES.register("text_pixel_ddpm")
class TextPixelBackbone(TextPrompts, PixelDDPMBackbone):
    """A text-conditional pixel-space diffusion model (UNet2DConditionModel + CLIP text encoder)."""

    Options = TextPixelOptions  # type: ignore[assignment]
    conditional = True
    pixel_space = True

    def __init__(self, options: TextPixelOptions | None = None) -> None:
        Backbone.__init__(self)
        from diffusers import DDIMScheduler

        self.options = options = options or TextPixelOptions()
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        sched_cfg = load_text_pixel_parts(self, options, DDIMScheduler.load_config, "--backbone digits")
        if str(sched_cfg.get("_class_name", "")).startswith("FlowMatch"):
            raise InputError(
                f"{options.model!r} is a flow-matching model (its scheduler is {sched_cfg['_class_name']}); "
                "load it with --backbone text_pixel_flow backbone.model=PATH"
            )
        self.configure_pixels(sched_cfg, options, "text_pixel_ddpm")
        self.max_tokens = int(self.text_encoder.config.max_position_embeddings)
        self.known_words = trained_words(options.model)
        self._prompt_cache: dict[str, Tensor] = {}

    # ----------------------------------------------------------------- prompts
    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The tokenizer and the text encoder's config only (no network, no weights)."""
        from plugins.backbones.stable_diffusion import text_prompt_rules

        if not isinstance(options, TextPixelOptions):
            return None
        check_model_folder(options.model, TEXT_PIXEL_COMPONENTS, "text-conditional pixel diffusion model")
        return text_prompt_rules(options.model, known_words=trained_words(options.model))

    # ----------------------------------------------------------------- network
    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Conditioning | None) -> Tensor:
        if cond is None:
            raise InputError("this text-conditional model needs a prompt conditioning")
        hidden = cond.embeds.to(self.dtype)
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=hidden, return_dict=False)[0]
        return out.float()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["class"] = type(self).__name__
        return d


@BACKBONES.register("digits")
class DigitsBackbone(TextPixelBackbone):
    """The shipped model trained on coloured scikit-learn digits (see the module docstring)."""

    def __init__(self, options: TextPixelOptions | None = None) -> None:
        options = options or TextPixelOptions()
        check_shipped(options)
        super().__init__(options)

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        if isinstance(options, TextPixelOptions):
            check_shipped(options)
        return super().load_prompt_rules(options)


def check_shipped(options: TextPixelOptions) -> None:
    """The shipped weights are where they belong (else say how to re-create them)."""
    if not (Path(options.model) / "unet").is_dir() and Path(options.model) == DIGITS_MODEL:
        raise WeightsNotFoundError(
            f"the digits model is missing from {DIGITS_MODEL}; it ships with the repository "
            "(re-create it with: python scripts/train_digits.py --out plugins/backbones/digits_model)"
        )


# --------------------------------------------------------------------- building the model
@dataclass
class DigitsArchitecture:
    """The architecture of a digits model (what ``scripts/train_digits.py`` builds)."""

    resolution: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    cross_attention_dim: int = 64
    text_layers: int = 2
    attention_head_dim: int = 8


def build_digits_tokenizer():
    """A CLIP BPE tokenizer whose merges make each word of the digits grammar one token."""
    from framework.digits import WORDS
    from plugins.backbones.tiny import build_tokenizer

    tok = build_tokenizer(WORDS)
    tok.model_max_length = DIGITS_MAX_TOKENS
    return tok


def build_digits_model(arch: DigitsArchitecture, seed: int) -> tuple[Any, Any, Any, Any]:
    """(unet, text_encoder, tokenizer, noise scheduler), freshly initialised from ``seed``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(arch.block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    tokenizer = build_digits_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=arch.resolution,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=tuple(arch.block_out_channels),
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=arch.cross_attention_dim,
            attention_head_dim=arch.attention_head_dim,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=arch.cross_attention_dim,
                intermediate_size=2 * arch.cross_attention_dim,
                num_hidden_layers=arch.text_layers,
                num_attention_heads=4,
                max_position_embeddings=DIGITS_MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        prediction_type="epsilon",
    )
    return unet, text_encoder, tokenizer, scheduler


def save_digits_model(folder: Path, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, **extra: Any) -> None:
    """Write the diffusers folder: unet/, text_encoder/, tokenizer/, scheduler/, model_index.json
    (which lists the words of the prompt grammar: the vocabulary the model is trained on)."""
    import json

    from framework.digits import WORDS as words

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "EditFriendlyTextPixelDDPM",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(scheduler).__name__],
        WORDS_KEY: list(words),
        **extra,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
