"""Tiny random stand-ins for the metric networks, built offline (no download).

They are written to disk in the same formats as the real weights and loaded back through the
metrics' own loading code:

- LPIPS: a full LPIPS ``state_dict`` (random ImageNet-shaped trunk, the package's linear layers)
  -> ``{name: lpips, weights: PATH}`` (also for ``diversity``); or a torchvision-style trunk
  checkpoint (``features.*`` entries only) with :func:`build_lpips_trunk`.
- CLIP: a 2-layer ``CLIPModel`` (32×32 images) and its ``CLIPProcessor`` (the tiny backbone's
  BPE vocabulary) saved with ``save_pretrained`` -> ``{name: clip_score, model: FOLDER}``.
- DINO: a 2-layer ``ViTModel`` (32×32 images, 8×8 patches) -> ``{name: structure_distance,
  model: FOLDER, resolution: 32}``.

Usage in a runner test::

    from tests.helpers.metric_standins import standin_metric_configs
    cfg["metrics"] = standin_metric_configs(tmp_path / "standins") + ["time"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def build_lpips_weights(folder: Path, net: str = "alex", seed: int = 0) -> Path:
    """A full LPIPS state_dict with a random trunk -> ``folder/lpips_<net>_standin.pth``."""
    import warnings

    import lpips

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"lpips_{net}_standin.pth"
    if not path.exists():
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        torch.save(model.state_dict(), path)
    return path


def build_lpips_trunk(folder: Path, net: str = "alex", seed: int = 0) -> Path:
    """A torchvision-format trunk checkpoint (only ``features.*``, random) -> a .pth path."""
    import torchvision.models as tvm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{net}_trunk_standin.pth"
    if not path.exists():
        torch.manual_seed(seed)
        build = {"alex": tvm.alexnet, "vgg": tvm.vgg16, "squeeze": tvm.squeezenet1_1}[net]
        features = build(weights=None).features
        torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def build_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel + CLIPProcessor saved with save_pretrained -> the folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from plugins.backbones.tiny import build_tokenizer

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_dino(folder: Path, seed: int = 0) -> Path:
    """A tiny random ViTModel (DINO's layout, 8×8 patches) saved with save_pretrained -> the folder."""
    from transformers import ViTConfig, ViTModel

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def build_standins(folder: Path) -> dict[str, Path]:
    """Every stand-in under ``folder``: {"lpips": .pth, "clip": folder, "dino": folder}."""
    folder = Path(folder)
    return {
        "lpips": build_lpips_weights(folder),
        "clip": build_clip(folder / "clip"),
        "dino": build_dino(folder / "dino"),
    }


def standin_metric_configs(
    folder: Path, names: tuple[str, ...] = ("lpips", "clip_score")
) -> list[dict[str, Any]]:
    """Metric configs (entries of a run's ``metrics:`` list) using the stand-ins built into ``folder``.

    ``names`` picks among lpips, clip_score, structure_distance and diversity.
    """
    paths = build_standins(folder)
    known = {
        "lpips": {"name": "lpips", "weights": str(paths["lpips"])},
        "clip_score": {"name": "clip_score", "model": str(paths["clip"])},
        "structure_distance": {"name": "structure_distance", "model": str(paths["dino"]), "resolution": 32},
        "diversity": {"name": "diversity", "weights": str(paths["lpips"])},
    }
    return [known[n] for n in names]
