"""Shared fixtures: the tiny random Stable Diffusion (built offline), a real photo, helpers.

The tiny model is built once per test session into a temporary cache folder and loaded
through the same code path as real weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# One thread: tiny models gain little from more, and several threads per process thrash
# badly when tests run subprocesses (CLI, DDP) beside the main process on 2 cores.
torch.set_num_threads(int(os.environ.get("EDITFRIENDLY_TEST_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the tiny models of the test session in a private cache folder."""
    folder = tmp_path_factory.mktemp("editfriendly-cache")
    old = os.environ.get("EDITFRIENDLY_CACHE")
    os.environ["EDITFRIENDLY_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("EDITFRIENDLY_CACHE", None)
    else:
        os.environ["EDITFRIENDLY_CACHE"] = old


@pytest.fixture(scope="session")
def tiny(_tiny_cache: Path):
    """The tiny epsilon-prediction backbone on the CPU (shared: do not mutate it)."""
    from framework.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_v(_tiny_cache: Path):
    """The tiny v-prediction backbone on the CPU."""
    from framework.backbone import load_backbone

    return load_backbone("tiny_v", device="cpu")


def real_photo_array() -> np.ndarray:
    """A real photograph (scikit-learn's bundled flower.jpg, 427×640 RGB), else a synthetic scene."""
    try:
        from sklearn.datasets import load_sample_image

        return load_sample_image("flower.jpg")
    except Exception:  # pragma: no cover - scikit-learn is a dev dependency
        yy, xx = np.mgrid[0:96, 0:128]
        return np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo written as a JPEG file."""
    path = tmp_path_factory.mktemp("photos") / "flower.jpg"
    Image.fromarray(real_photo_array()).save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def photo_x0(tiny, photo_path: Path) -> torch.Tensor:
    """The tiny VAE latents (1, 4, 16, 16) of the real photo."""
    from framework.images import load_image_tensor

    image = load_image_tensor(photo_path, tiny.resolution, tiny.size_multiple)
    return tiny.encode_image(image)


@pytest.fixture(scope="session")
def tiny_pixel(_tiny_cache: Path):
    """The tiny random unconditional pixel DDPM (16x16 RGB) on the CPU (shared: do not mutate)."""
    from framework.backbone import load_backbone

    return load_backbone("tiny_pixel", device="cpu")
