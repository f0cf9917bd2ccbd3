"""Runs of ``editfriendly run`` on the tiny backbone: a small dataset of real photo crops, the
results CSVs, and the command run in this process with one torch thread."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def photo_crops(n: int, size: int = 40) -> list[np.ndarray]:
    """``n`` crops (size, size, 3) uint8 of scikit-learn's two sample photos, alternating."""
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("flower.jpg"), load_sample_image("china.jpg")]
    crops = []
    for k in range(n):
        p = photos[k % 2]
        y, x = 37 * k % (p.shape[0] - 200), 61 * k % (p.shape[1] - 200)
        crop = Image.fromarray(p[y : y + 200, x : x + 200]).resize((size, size), Image.Resampling.LANCZOS)
        crops.append(np.asarray(crop))
    return crops


def make_yaml_dataset(folder: Path, n: int = 5) -> Path:
    """``n`` photo crops in ``folder`` and their ``yaml_list`` file (1 or 2 targets each); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, arr in enumerate(photo_crops(n)):
        Image.fromarray(arr).save(folder / f"img{k}.png")
        targets = ["a photo of a dog", "a painting of a cat"][: 1 + k % 2]
        lines.append(
            f"- init_img: img{k}.png\n  source_prompt: a photo of a cat {k}\n  target_prompts: {json.dumps(targets)}"
        )
    (folder / "list.yaml").write_text("\n".join(lines) + "\n")
    return folder / "list.yaml"


@contextmanager
def one_thread():
    """One torch thread inside the block (as the DDP processes use), the old count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_inprocess(config: Path, *overrides: str) -> int:
    """``editfriendly run CONFIG OVERRIDES...`` in this process, one thread; its exit status."""
    from framework.cli import main

    with one_thread():
        return main(["run", str(config), "--no-progress", *overrides])


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
