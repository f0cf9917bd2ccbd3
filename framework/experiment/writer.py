"""The Lightning callback that saves each row's images and appends the row, with the sha256 of
each image file, to its rank's part file (:mod:`framework.experiment.results` describes the
crash-safe, resumable scheme; :mod:`framework.experiment.resume` what a resumed run checks)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from framework.experiment.results import FILE_COLUMNS, PartWriter
from framework.experiment.resume import file_sha256
from framework.outputs import atomic_write_bytes


def save_image(img: Image.Image, path: Path) -> str:
    """Write a PNG atomically (a uniquely named temporary file, then a rename) -> its sha256.

    A failed write raises :class:`~framework.outputs.OutputWriteError` naming the file."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


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
        written: dict[str, str] = {}  # relative path -> sha256 of the file written for this item

        def save(img: Any, rel: str) -> str:
            if rel not in written:
                written[rel] = save_image(img, self.output_dir / rel)
            return written[rel]

        for row in prediction:
            row = dict(row)
            images = {
                "input_path": row.pop("_input", None),
                "reconstruction_path": row.pop("_reconstruction", None),
                "output_path": row.pop("_image", None),
            }
            for path_col, sha_col in FILE_COLUMNS.items():
                rel = row.get(path_col)
                if not rel:
                    continue
                if images.get(path_col) is not None:
                    row[sha_col] = save(images[path_col], rel)
                elif rel in written:  # the item's input, saved with its first row
                    row[sha_col] = written[rel]
                elif (self.output_dir / rel).is_file():  # written for this item by an earlier run
                    row[sha_col] = file_sha256(self.output_dir / rel)
            self.part.write(row)
        self.items_written += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.part is not None:
            self.part.close()
            self.part = None
        trainer.strategy.barrier("editfriendly-results")
