"""Test-side launcher: run an experiment config and kill the process after N written items.

``python tests/run_killed.py CONFIG N`` runs CONFIG as ``editfriendly run CONFIG --no-progress``
does, with one more Lightning callback: after the N-th item whose rows the ResultsWriter has
written, the process exits at once with status 17 (``os._exit``: no cleanup, no merge), as a
killed job would. tests/test_runner.py uses it to test resuming (run as a script, not imported).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import lightning.pytorch as pl

KILLED_STATUS = 17


class KillAfterItems(pl.Callback):
    """Exit the process abruptly after ``n`` items with rows (called after the ResultsWriter)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.items = 0

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if outputs:
            self.items += 1
        if self.items >= self.n:
            os._exit(KILLED_STATUS)


def main(config: str, n: int) -> int:
    from omegaconf import OmegaConf

    from framework.config import compose
    from framework.experiment.run import find_experiment, run_experiment

    experiment = find_experiment(config)
    cfg = compose(experiment=experiment, overrides=[])
    trainer = OmegaConf.to_container(cfg.trainer) if "trainer" in cfg else {}
    cfg.trainer = {**trainer, "enable_progress_bar": False}
    return run_experiment(cfg, experiment, progress=False, callbacks=[KillAfterItems(n)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
