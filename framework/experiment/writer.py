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
from framework.outputs import OutputWriteError, atomic_write_bytes, write_error


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
        self.error: OutputWriteError | None = None  # the first failed write of this process
        self.errors: list[str] = []  # after predict: the failed writes of every process

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
        if not prediction or self.error is not None:
            return
        try:
            self._write(prediction)
        except OutputWriteError as exc:
            # a full disk or an I/O error: this process writes nothing more and computes no more
            # items (EditModule asks :meth:`stopped`); every process still reaches the end, where
            # rank 0 reports the first failed write as one line (see on_predict_end)
            self.error = exc
            return
        self.items_written += 1

    def _write(self, prediction: Any) -> None:
        assert self.part is not None
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

    @staticmethod
    def stopped(trainer: pl.Trainer | None) -> bool:
        """Whether this process's ResultsWriter failed to write (its items are then skipped)."""
        callbacks = getattr(trainer, "callbacks", None) or []
        return any(isinstance(cb, ResultsWriter) and cb.error is not None for cb in callbacks)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.part is not None:
            try:
                self.part.close()
            except OSError as exc:
                self.error = self.error or write_error(self.part.path, exc)
            self.part = None
        trainer.strategy.barrier("editfriendly-results")
        self.errors = _gather_messages(trainer, str(self.error) if self.error is not None else None)


def _gather_messages(trainer: pl.Trainer, message: str | None) -> list[str]:
    """The failed-write messages of every process, in rank order (every process gets them all)."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, message)
        return [m for m in gathered if m]
    return [message] if message else []
