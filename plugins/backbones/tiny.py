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
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from framework.prompts import PromptRules
from framework.registry import BACKBONES
from plugins.backbones.stable_diffusion import StableDiffusionBackbone, StableDiffusionOptions, text_prompt_rules

log = logging.getLogger(__name__)

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


def build_tokenizer(words: tuple[str, ...] | list[str] = WORDS, pad_token: str = "<|endoftext|>"):
    """A CLIP BPE tokenizer over the 256 byte symbols plus merges that make ``words`` whole
    (padding with ``pad_token``: CLIP's end token, or ``"!"`` as SDXL's second tokenizer)."""
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
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=pad_token)


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
    save_text_encoder(text_encoder, folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "_editfriendly_tiny": True}, indent=1)
    )


def save_text_encoder(model, folder: Path) -> None:
    """What ``model.save_pretrained(folder)`` writes (``config.json``, ``model.safetensors``, the
    same bytes), on every process: in a torch.distributed group transformers' ``save_pretrained``
    writes nothing on ranks other than 0, and any DDP rank may be the one that builds a cache entry."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def cache_root(cache_dir: str | None = None) -> Path:
    """The model cache folder: ``cache_dir``, else $EDITFRIENDLY_CACHE, else ~/.cache/editfriendly."""
    return Path(cache_dir or os.environ.get("EDITFRIENDLY_CACHE") or Path.home() / ".cache" / "editfriendly")


#: the file that marks a cache entry as complete: every file of the entry with its size
MANIFEST = "editfriendly-entry.json"
#: how long a process waits for another one building the same entry before giving up
LOCK_TIMEOUT_SECONDS = 1800.0


def entry_is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished cache entry: its manifest lists files that all exist with
    the sizes they were written with (an entry cut short, emptied or truncated is not)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_manifest(folder: Path, key: list) -> None:
    """Record every file under ``folder`` with its size (written last, after the entry was checked)."""
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1, default=str))


@contextmanager
def cache_lock(folder: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold ``<folder>.lock`` (an OS file lock: the system releases it when its holder dies, so
    a killed builder leaves nothing to clean up by hand). Waits for another holder, saying so,
    at most ``timeout`` seconds (default :data:`LOCK_TIMEOUT_SECONDS`)."""
    from filelock import FileLock, Timeout

    timeout = LOCK_TIMEOUT_SECONDS if timeout is None else timeout
    lock = FileLock(str(folder.with_name(folder.name + ".lock")), timeout=timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish building %s", folder)
        try:
            lock.acquire()
        except Timeout:
            raise RuntimeError(
                f"gave up after {timeout:.0f} s waiting for another process to build {folder}; "
                f"if no editfriendly process is running, delete {folder}* and try again"
            ) from None
    try:
        yield
    finally:
        lock.release()


def cached_model_folder(
    prefix: str,
    key: list,
    build: Callable[[Path], None],
    cache_dir: str | None = None,
    check: Callable[[Path], object] | None = None,
) -> Path:
    """``<cache root>/<prefix>-<hash of key>``, made by ``build(tmp_folder)`` on first use.

    One process builds an entry, under a file lock, while the others (DDP ranks, parallel
    runs and test sessions) wait for it: ``build`` writes into a temporary sibling folder,
    ``check`` (when given) loads every component from it and raises if one is missing, a
    manifest of the files and their sizes is written, and only then the folder is renamed into
    place. An entry without a valid manifest (cut short, emptied by hand, or written by a
    version without manifests) is built again; so are the leftovers of a killed builder
    removed. ``build`` must write the whole model into the folder it is given.
    """
    import diffusers

    root = cache_root(cache_dir)
    digest = hashlib.sha1(json.dumps([*key, diffusers.__version__]).encode()).hexdigest()[:12]
    folder = root / f"{prefix}-{digest}"
    if entry_is_complete(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with cache_lock(folder):
        if entry_is_complete(folder):  # another process built it while this one waited
            return folder
        for leftover in root.glob(f"{folder.name}.build-*"):  # of a builder that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.build-", dir=root))
        try:
            build(tmp)
            if check is not None:
                try:
                    check(tmp)
                except Exception as exc:
                    raise RuntimeError(f"the {prefix} model just built is incomplete: {exc}") from exc
            write_manifest(tmp, [*key, diffusers.__version__])
            if folder.exists():  # an incomplete entry: set it aside, then remove it
                stale = tmp.with_name(tmp.name + "-old")
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_model_path(options: TinyOptions) -> Path:
    """The cached folder of the tiny model for ``options``, built and checked on first use."""
    if options.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"tiny prediction_type must be 'epsilon' or 'v_prediction', got {options.prediction_type!r}"
        )
    return cached_model_folder(
        "tiny",
        [TINY_VERSION, options.seed, options.prediction_type, options.resolution],
        lambda tmp: build_tiny_model(tmp, options.seed, options.prediction_type, options.resolution),
        options.cache_dir,
        check=check_tiny_model,
    )


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Loading a local model of a few hundred kB needs no progress bars: transformers' are off
    inside the block and back as they were after it."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def describe_tiny(backbone: Any, description: dict) -> dict:
    """``description`` (the loaded model's) with the tiny model's own options and class name."""
    description.update(asdict(backbone.tiny_options))
    description["class"] = type(backbone).__name__
    return description


def check_tiny_model(folder: Path) -> None:
    """Load every component of a tiny model folder (raises when one is missing or unreadable)."""
    with no_progress_bars():
        StableDiffusionBackbone(StableDiffusionOptions(model=str(folder), device="cpu", local_files_only=True))


@BACKBONES.register("tiny")
class TinyBackbone(StableDiffusionBackbone):
    """The tiny random Stable Diffusion (see the module docstring)."""

    Options = TinyOptions  # type: ignore[assignment]

    def __init__(self, options: TinyOptions | None = None) -> None:
        options = options or TinyOptions()
        self.tiny_options = options
        with no_progress_bars():
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

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """The tokenizer of the cached tiny model (built into the cache first if it is not there,
        as loading it would), so that a run checks its prompts when it is planned."""
        if not isinstance(options, TinyOptions):
            return None
        folder = tiny_model_path(options)
        return text_prompt_rules(str(folder), None, truncate=bool(options.truncate_prompts))

    def describe(self) -> dict:
        return describe_tiny(self, super().describe())
