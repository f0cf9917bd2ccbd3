"""The runner's LightningDataModule: the items of a dataset, sharded over ranks, one per batch.

The items come from a dataset plugin (:mod:`framework.dataset`); nothing is loaded here.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from framework.dataset import Item


class ItemList(Dataset):
    """A torch Dataset over items (cheap: nothing is loaded here)."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]


def _first(batch: list[Item]) -> Item:
    return batch[0]


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item | None]:
    """The items of one rank: every ``world_size``-th from ``rank`` (as DistributedSampler
    without shuffling or padding), or ``[None]`` for a rank with none.

    The placeholder keeps an idle rank in the predict loop, so it reaches the barriers of the
    other ranks (Lightning's ``UnrepeatedDistributedSampler`` asserts instead, and a rank with
    an empty loader would skip the hooks that hold the barrier); ``predict_step(None)`` does
    nothing and writes nothing.
    """
    mine: list[Item | None] = list(items[rank::world_size])
    return mine or [None]


class EditDataModule(pl.LightningDataModule):
    """One item per batch; the items are sharded over ranks here (the Trainer runs with
    ``use_distributed_sampler=False``), so any number of devices works, more than items too."""

    def __init__(self, items: Sequence[Item], num_workers: int = 0) -> None:
        super().__init__()
        self.items = list(items)
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(
            ItemList(shard(self.items, rank, world)),  # type: ignore[arg-type]
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_first,
        )
