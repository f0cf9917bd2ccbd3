"""The experiment runner (``editfriendly run``): the only part of the framework that imports Lightning.

- :mod:`~framework.experiment.plan`: methods expanded over their sweeps (variants), shared inversions, metric configs
- :mod:`~framework.experiment.data`: the LightningDataModule (items sharded over ranks)
- :mod:`~framework.experiment.module`: the LightningModule (one item -> its rows)
- :mod:`~framework.experiment.writer`: the callback that saves images and appends rows
- :mod:`~framework.experiment.results`: part files, results.csv and summary.csv
- :mod:`~framework.experiment.resume`: what a row was computed from; which rows a run reuses, and why
- :mod:`~framework.experiment.lock`: one run at a time per output folder
- :mod:`~framework.experiment.loggers`: loggers from the presets in configs/logger/, and what is logged
- :mod:`~framework.experiment.run`: ``run_experiment`` (and the ``run`` command's glue)

The dataset plugin interface, free of Lightning, is :mod:`framework.dataset`.
"""
