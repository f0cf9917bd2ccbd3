"""A tiny random Stable Diffusion, built offline and deterministically from a seed.

The model (a small UNet with cross-attention at two resolutions, a 2× VAE, a 2-layer CLIP text
encoder and a BPE tokenizer made from a small vocabulary) is saved with ``save_pretrained``
into a cache folder and loaded back through :class:`StableDiffusionBackbone`, the same code
that loads real weights. Its noise schedule is Stable Diffusion's. It serves the tests and a
no-download smoke run; its edits are noise, but every identity the methods rely on holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from framework.registry import BACKBONES
from plugins.backbones.stable_diffusion import StableDiffusionBackbone, StableDiffusionOptions

#: bump when the architecture below changes, so stale caches are not reused
TINY_VERSION = 1

#: words that become single tokens (everything else is spelled out byte by byte)
WORDS = (
    "a an the of in on with and photo picture painting drawing sketch image cat dog tiger lion "
    "horse zebra bird car bike tree flower flowers house sky red blue green yellow white black "
    "sitting standing running on grass field road water beach snow forest origami lego sculpture "
    "made wood stone glass"
).split()


@dataclass
class TinyOptions:
    """Options of the ``tiny`` backbone."""

    seed: int = 0
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    resolution: int = 32  # image side in pixels (latents are half of it)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (networks only)
    vae_dtype: str | None = None  # None: as dtype
    device: str = "auto"
    cache_dir: str | None = None  # default: $EDITFRIENDLY_CACHE or ~/.cache/editfriendly
    truncate_prompts: bool = False


def build_tokenizer(words: tuple[str, ...] | list[str] = WORDS):
    """A CLIP BPE tokenizer over the 256 byte symbols plus merges that make ``words`` whole."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        current = word[0]
        for j, ch in enumerate(word[1:]):
            nxt = ch + ("</w>" if j == len(word) - 2 else "")
            if (current, nxt) not in merges:
                merges.append((current, nxt))
            current += nxt
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_model(folder: Path, seed: int, prediction_type: str, resolution: int) -> None:
    """Write a random tiny Stable Diffusion in diffusers' folder layout to ``folder``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if resolution % 4:
        raise ValueError(f"tiny resolution must be a multiple of 4, got {resolution}")
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=resolution,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    # Stable Diffusion v1's schedule and timestep convention.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "_editfriendly_tiny": True}, indent=1)
    )


def cache_root(cache_dir: str | None = None) -> Path:
    """The model cache folder: ``cache_dir``, else $EDITFRIENDLY_CACHE, else ~/.cache/editfriendly."""
    return Path(cache_dir or os.environ.get("EDITFRIENDLY_CACHE") or Path.home() / ".cache" / "editfriendly")


def cached_model_folder(
    prefix: str, key: list, build: Callable[[Path], None], cache_dir: str | None = None
) -> Path:
    """``<cache root>/<prefix>-<hash of key>``, made by ``build(tmp_folder)`` on first use.

    The folder is built in a temporary sibling and renamed into place, so concurrent builders
    (DDP ranks, parallel test sessions) race safely. A folder counts as built once it holds
    ``model_index.json``, which ``build`` must write.
    """
    import diffusers

    root = cache_root(cache_dir)
    digest = hashlib.sha1(json.dumps([*key, diffusers.__version__]).encode()).hexdigest()[:12]
    folder = root / f"{prefix}-{digest}"
    if (folder / "model_index.json").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)  # atomic: concurrent builders race safely
        except OSError:
            if not (folder / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_model_path(options: TinyOptions) -> Path:
    """The cached folder of the tiny model for ``options``, built on first use (atomically)."""
    if options.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"tiny prediction_type must be 'epsilon' or 'v_prediction', got {options.prediction_type!r}"
        )
    return cached_model_folder(
        "tiny",
        [TINY_VERSION, options.seed, options.prediction_type, options.resolution],
        lambda tmp: build_tiny_model(tmp, options.seed, options.prediction_type, options.resolution),
        options.cache_dir,
    )


@BACKBONES.register("tiny")
class TinyBackbone(StableDiffusionBackbone):
    """The tiny random Stable Diffusion (see the module docstring)."""

    Options = TinyOptions  # type: ignore[assignment]

    def __init__(self, options: TinyOptions | None = None) -> None:
        from transformers.utils import logging as hf_logging

        options = options or TinyOptions()
        self.tiny_options = options
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # loading a 1 MB local model needs no progress bars
        try:
            folder = tiny_model_path(options)
            super().__init__(
                StableDiffusionOptions(
                    model=str(folder),
                    dtype=options.dtype,
                    vae_dtype=options.vae_dtype,
                    device=options.device,
                    local_files_only=True,
                    truncate_prompts=options.truncate_prompts,
                )
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    def describe(self) -> dict:
        d = super().describe()
        d.update(asdict(self.tiny_options))
        d["class"] = type(self).__name__
        return d
