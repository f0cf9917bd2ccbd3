"""The Lightning callback that saves each row's images and appends the row to its rank's part file
(:mod:`framework.experiment.results` describes the crash-safe, resumable scheme)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from framework.experiment.results import PartWriter


def save_image(img: Image.Image, path: Path) -> None:
    """Write a PNG atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


class ResultsWriter(BasePredictionWriter):
    """Saves each row's images, then appends the row to this rank's part file."""

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.part: PartWriter | None = None
        self.items_written = 0  # batches (items) with rows written by this process

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.part = PartWriter(self.output_dir, trainer.global_rank)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.part is not None
        if not prediction:
            return
        for row in prediction:
            row = dict(row)
            inp = row.pop("_input", None)
            img = row.pop("_image", None)
            rec = row.pop("_reconstruction", None)
            if inp is not None and row.get("input_path"):
                save_image(inp, self.output_dir / row["input_path"])
            if rec is not None and row.get("reconstruction_path"):
                save_image(rec, self.output_dir / row["reconstruction_path"])
            if img is not None and row.get("output_path"):
                save_image(img, self.output_dir / row["output_path"])
            self.part.write(row)
        self.items_written += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.part is not None:
            self.part.close()
            self.part = None
        trainer.strategy.barrier("editfriendly-results")
