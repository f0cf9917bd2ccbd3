"""``editfriendly compare RUN_DIR [RUN_DIR ...]``: a report that compares methods across runs.

Input: run folders, each with a ``results.csv`` (one row per item × method setting × target
prompt × seed) whose columns are ``item_id, method, target_prompt, source_prompt, seed, status,
error, output_path, input_path``, one column per swept parameter and one per metric value. Extra
columns are tolerated. Image paths are relative to the run folder or absolute.

Output (``out``): ``report.md`` and ``report.html`` with

- a table of method settings × metrics: mean ± half-width of the 95% confidence interval
  (Student's t over the rows with status ok and a finite value; clipped to the range a metric
  declares in ``Metric.ranges`` and then shown as ``mean [low, high]``), rows and failed rows
  counted. Only columns that tell settings apart are shown: a column with the same value for
  every setting is stated once below the table, a parameter that only some methods have is
  shown beside the method (``ef_text (editor.guidance_scale=7.5)``); on the HTML page a table
  wider than a 1400 px window is split into parts that repeat the setting's columns;
- the cost of the inversions: runs written with the ``inversion_group`` column tell which
  settings were edited from one shared inversion; each inversion's ``inversion_*`` cost is
  counted once there (not once per setting, as results.csv repeats it), and settings whose
  method does not use its inversion (``inversion_needed`` false, e.g. sdedit) are named;
- ``scatter_clip_lpips.png``: CLIP score against LPIPS, one point per method and parameter
  setting, the settings of one method joined by a line and labelled, without overlap, with the
  parameters that tell them apart (the paper's Figure 10);
- ``grids/grid_<item>.png``: for chosen (``items``) or sampled (``sample``) items, one row per
  target prompt: the input, then each method setting's edit;
- ``summary.csv``: the table in machine-readable form.

With ``--wandb`` (or when a run's ``config.yaml`` configures ``logger: {name: wandb}``) the same
table and images are logged to a wandb run (offline by default: ``wandb sync`` uploads later).

The package: ``runs`` (run folders, column roles), ``stats`` (grouping and statistics, also an
experiment's ``summary.csv``), ``figures`` (matplotlib figures), ``render`` (the report model and
its Markdown, HTML and wandb renderers), ``build`` (the pipeline, and :func:`compare`). They import
only the standard library at load: pandas, scipy and matplotlib load when a report is computed.
"""

from __future__ import annotations

from framework.report.build import compare

__all__ = ["compare"]
