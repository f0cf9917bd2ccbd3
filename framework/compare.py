"""``editfriendly compare RUN_DIR [RUN_DIR ...]``: a report that compares methods across runs.

Input: run directories, each with a ``results.csv`` (one row per item × method setting ×
target prompt × seed) whose columns are ``item_id, method, target_prompt, source_prompt, seed,
status, error, output_path, input_path``, one column per swept parameter and one per metric
value. Extra columns are tolerated. Image paths are relative to the run directory or absolute.

Output (``--out``): ``report.md`` and ``report.html`` with

- a table of method settings × metrics: mean ± half-width of the 95% confidence interval
  (Student's t over the rows with status ok and a finite value), rows and failed rows counted;
- ``scatter_clip_lpips.png``: CLIP score against LPIPS, one point per method and parameter
  setting, the settings of one method joined by a line (the paper's Figure 10);
- ``grids/grid_<item>.png``: for chosen (``--items``) or sampled (``--sample N``) items, one row
  per target prompt: the input, then each method setting's edit;
- ``summary.csv``: the table in machine-readable form.

With ``--wandb`` (or when a run's ``config.yaml`` configures ``logger: {name: wandb}``) the same
table and images are logged to a wandb run (offline by default: ``wandb sync`` uploads later).

Which columns are metrics and which are parameters: ``--metrics`` and ``--params`` say so
explicitly. Otherwise a column is a *metric* when a registered metric declares it, when it
ends in ``_seconds`` or ``_nfe``, or when it is numeric and not a parameter; it is a
*parameter* when a run's ``config.yaml`` sweeps it, when its name has a dot
(``editor.guidance_scale``), or when it is a method setting such as ``skip`` or ``num_steps``.
"""

from __future__ import annotations

import argparse
import csv
import html
import logging
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import InputError

log = logging.getLogger(__name__)

#: the columns every results.csv has (not metrics, not parameters)
FIXED_COLUMNS = (
    "item_id",
    "method",
    "target_prompt",
    "source_prompt",
    "seed",
    "status",
    "error",
    "output_path",
    "input_path",
    "reconstruction_path",
    # the runner's bookkeeping columns
    "variant",
    "setting",
    "target_index",
    "seed_index",
)
#: columns the runner copies from dataset items (``data.editing_type_id``, ...): neither kind
DATA_PREFIX = "data."
#: method settings that are parameters even when no config says they are swept
METHOD_SETTINGS = ("num_steps", "skip", "seeds", "eta", "guidance_scale", "inverter", "editor")
#: direction of each known metric column in the table header (True: higher is better)
HIGHER_IS_BETTER = {
    "clip_score": True,
    "clip_score_edited": True,
    "psnr": True,
    "psnr_bg": True,
    "ssim": True,
    "ssim_bg": True,
    "diversity": True,
    "reconstruction_psnr": True,
    "lpips": False,
    "lpips_bg": False,
    "mse": False,
    "mse_bg": False,
    "structure_distance": False,
    "shape_iou": True,
    "color_reached": True,
    "attr_reached": True,
    "attr_kept": True,
    "attr_success": True,
}
#: axis labels of the scatter for known columns
AXIS_LABELS = {
    "lpips": "lpips (lower: structure preserved)",
    "clip_score": "clip_score (higher: prompt followed)",
    "shape_iou": "shape_iou (higher: structure preserved)",
    "color_reached": "color_reached (higher: prompt followed)",
    "attr_reached": "attr_reached (higher: prompt followed)",
}
MISSING = ("", "none", "null", "nan", "na", "n/a")


# ----------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    """One run directory: its rows (dicts of strings) and, if present, its config."""

    path: Path
    label: str
    header: list[str]
    rows: list[dict[str, str]]
    config: dict[str, Any] | None = None


def parse_float(text: Any) -> float | None:
    """A cell as a float; empty, None, NaN and unparsable cells give None (inf stays inf)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
        return None if math.isnan(value) else value
    s = str(text).strip()
    if s.lower() in MISSING:
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def is_ok(row: dict[str, str]) -> bool:
    """Whether a row succeeded (status ``ok``; a missing status counts as ok)."""
    status = (row.get("status") or "ok").strip().lower()
    return status in ("ok", "success", "done")


def read_run(path: str | Path) -> Run:
    """Read ``RUN_DIR/results.csv`` (and ``config.yaml`` when there); errors name the path."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".csv"):
        csv_path, path = path, path.parent
    else:
        csv_path = path / "results.csv"
    if not path.exists():
        raise InputError(f"run directory not found: {path}")
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = [dict(r) for r in reader]
    elif csv_path.name == "results.csv" and list((path / "parts").glob("rows-*.jsonl")):
        header, rows = read_part_files(path)
        log.warning("%s has no results.csv (an interrupted run): read the %d finished rows of its part files", path, len(rows))
    else:
        raise InputError(
            f"{path} is not a run directory: it has no results.csv and no parts/rows-*.jsonl (give "
            "directories written by `editfriendly run`, or a results.csv file)"
        )
    missing = [c for c in ("item_id", "method") if c not in header]
    if missing:
        raise InputError(
            f"{csv_path} lacks the column(s) {', '.join(missing)}; a results table needs at least "
            f"item_id and method, and normally has {', '.join(FIXED_COLUMNS)}"
        )
    for r in rows:  # short rows give None values
        for k in list(r):
            if r[k] is None:
                r[k] = ""
    config = None
    for name in ("config.yaml", "config.resolved.yaml"):
        if (path / name).is_file():
            try:
                from omegaconf import OmegaConf

                loaded = OmegaConf.to_container(OmegaConf.load(path / name), resolve=False)
                config = loaded if isinstance(loaded, dict) else None
            except Exception as exc:  # noqa: BLE001 - the config is optional context
                log.warning("could not read %s: %s", path / name, exc)
            break
    return Run(path=path, label=path.resolve().name or str(path), header=header, rows=rows, config=config)


def read_part_files(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The rows of an unfinished run, merged from its per-rank part files as the runner's
    final merge would (one row per key, the last ok one winning), as a header and string cells."""
    from framework.experiment.results import columns_for, merge_rows, read_rows

    rows = merge_rows(read_rows(path))
    header = columns_for(rows, [], [])
    text = [{c: _csv_cell(r.get(c)) for c in header} for r in rows]
    return header, text


def _csv_cell(value: Any) -> str:
    """A value as results.csv would hold it (the runner's CSV cell rule)."""
    from framework.experiment.results import _cell

    out = _cell(value)
    return "" if out is None else str(out)


def unique_labels(runs: list[Run]) -> None:
    """Make run labels distinct (parent/name, then a counter)."""
    seen: dict[str, int] = {}
    for run in runs:
        if sum(r.label == run.label for r in runs) > 1:
            run.label = f"{run.path.resolve().parent.name}/{run.path.resolve().name}"
    for run in runs:
        if run.label in seen:
            seen[run.label] += 1
            run.label = f"{run.label}#{seen[run.label]}"
        else:
            seen[run.label] = 1


def resolve_path(run: Run, value: str | None) -> Path | None:
    """An image path from the table: absolute as is, else relative to the run directory."""
    if not value or str(value).strip().lower() in MISSING:
        return None
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else run.path / p


# ------------------------------------------------------------------------- column roles
def registered_metric_columns() -> set[str]:
    """Every column that a registered metric fills with its default options."""
    from framework.registry import METRICS

    cols: set[str] = set()
    for name in METRICS.names():
        cls = METRICS.get(name)
        cols.update(getattr(cls, "columns", ()) or ())
        try:
            cols.update(METRICS.build(name).columns)
        except Exception:  # noqa: BLE001 - a metric that needs options just contributes its class columns
            pass
    return cols


def swept_parameters(runs: Iterable[Run]) -> set[str]:
    """Keys under ``methods[*].sweep`` in the runs' configs."""
    keys: set[str] = set()
    for run in runs:
        methods = (run.config or {}).get("methods") or []
        if isinstance(methods, dict):
            methods = list(methods.values())
        for method in methods:
            if isinstance(method, dict) and isinstance(method.get("sweep"), dict):
                keys.update(str(k) for k in method["sweep"])
    return keys


def classify_columns(
    runs: list[Run], metrics: Sequence[str] | None = None, params: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """(metric columns, parameter columns) in first-seen order (see the module docstring)."""
    header: list[str] = []
    for run in runs:
        header += [c for c in run.header if c not in header]
    if metrics:
        unknown = [m for m in metrics if m not in header]
        if unknown:
            raise InputError(f"--metrics: no column {', '.join(unknown)} in the results; columns: {', '.join(header)}")
    if params:
        unknown = [p for p in params if p not in header]
        if unknown:
            raise InputError(f"--params: no column {', '.join(unknown)} in the results; columns: {', '.join(header)}")
    rest = [c for c in header if c not in FIXED_COLUMNS and not c.startswith(DATA_PREFIX)]
    if params is not None:
        param_cols = list(params)
    else:
        swept = swept_parameters(runs)
        param_cols = [
            c for c in rest if c in swept or "." in c or c in METHOD_SETTINGS or c.split(".")[-1] in METHOD_SETTINGS
        ]
    if metrics is not None and len(metrics):
        return list(metrics), [c for c in param_cols if c not in metrics]
    known = registered_metric_columns()
    metric_cols = []
    for c in rest:
        if c in param_cols:
            continue
        if c in known or c.endswith(("_seconds", "_nfe")):
            metric_cols.append(c)
            continue
        values = [r.get(c, "") for run in runs for r in run.rows]
        present = [v for v in values if str(v).strip().lower() not in MISSING]
        if present and all(parse_float(v) is not None for v in present):
            metric_cols.append(c)
    return metric_cols, param_cols


# ----------------------------------------------------------------------------- statistics
def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, 95% CI half-width, n) of finite values; half-width None for n < 2."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return None, None, 0
    mean = sum(vals) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, t_quantile(n - 1) * math.sqrt(var / n), n


@dataclass
class Group:
    """The rows of one method setting: one run, one method, one combination of parameter values."""

    run: Run
    method: str
    params: tuple[tuple[str, str], ...]
    rows: list[dict[str, str]] = field(default_factory=list)
    label: str = ""
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return sum(not is_ok(r) for r in self.rows)

    @property
    def n_ok(self) -> int:
        return len(self.rows) - self.n_failed

    def param_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params if v != "")


def _sort_key(value: str) -> tuple[int, float, str]:
    f = parse_float(value)
    return (0, f, "") if f is not None else (1, 0.0, value)


def group_rows(runs: list[Run], param_cols: list[str], metric_cols: list[str]) -> list[Group]:
    """Groups in run order, then method order of first appearance, then sorted parameter values."""
    groups: dict[tuple, Group] = {}
    method_runs: dict[str, set[str]] = {}
    for run in runs:
        for row in run.rows:
            method = row.get("method", "") or "(none)"
            params = tuple((c, (row.get(c) or "").strip()) for c in param_cols)
            key = (run.label, method, params)
            if key not in groups:
                groups[key] = Group(run=run, method=method, params=params)
            groups[key].rows.append(row)
            method_runs.setdefault(method, set()).add(run.label)
    order_methods: dict[tuple[str, str], int] = {}
    for run_label, method, _ in groups:
        order_methods.setdefault((run_label, method), len(order_methods))
    run_index = {r.label: i for i, r in enumerate(runs)}
    ordered = sorted(
        groups.values(),
        key=lambda g: (
            run_index[g.run.label],
            order_methods[(g.run.label, g.method)],
            [_sort_key(v) for _, v in g.params],
        ),
    )
    for g in ordered:
        name = f"{g.run.label}/{g.method}" if len(method_runs[g.method]) > 1 else g.method
        g.label = f"{name} ({g.param_text()})" if g.param_text() else name
        for m in metric_cols:
            g.stats[m] = mean_ci([parse_float(r.get(m)) for r in g.rows if is_ok(r)])
    return ordered


# ------------------------------------------------------------------------------- formatting
def fmt(value: float | None) -> str:
    """4 significant digits (inf shown as inf)."""
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def cell(stat: tuple[float | None, float | None, int]) -> str:
    mean, half, n = stat
    if mean is None:
        return "—"
    return f"{fmt(mean)} ± {fmt(half)}" if half is not None else fmt(mean)


def metric_header(name: str) -> str:
    higher = HIGHER_IS_BETTER.get(name)
    if higher is None and name.endswith(("_seconds", "_nfe")):
        higher = False
    return name + ("" if higher is None else (" ↑" if higher else " ↓"))


def table(groups: list[Group], runs: list[Run], param_cols: list[str], metric_cols: list[str]) -> tuple[list[str], list[list[str]]]:
    """The report table: header and rows of strings."""
    multi = len(runs) > 1
    header = (["run"] if multi else []) + ["method"] + param_cols + ["rows", "failed"]
    header += [metric_header(m) for m in metric_cols]
    body = []
    for g in groups:
        row = ([g.run.label] if multi else []) + [g.method] + [v for _, v in g.params]
        row += [str(len(g.rows)), str(g.n_failed)] + [cell(g.stats[m]) for m in metric_cols]
        body.append(row)
    return header, body


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody>\n</table>"


def write_summary_csv(path: Path, groups: list[Group], param_cols: list[str], metric_cols: list[str]) -> None:
    """One line per method setting: counts, then mean / ci95 / n of each metric."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        head = ["run", "method", *param_cols, "label", "rows", "ok", "failed"]
        for m in metric_cols:
            head += [f"{m}_mean", f"{m}_ci95", f"{m}_n"]
        w.writerow(head)
        for g in groups:
            line: list[Any] = [g.run.label, g.method, *[v for _, v in g.params], g.label, len(g.rows), g.n_ok, g.n_failed]
            for m in metric_cols:
                mean, half, n = g.stats[m]
                line += ["" if mean is None else repr(mean), "" if half is None else repr(half), n]
            w.writerow(line)


# ---------------------------------------------------------------------------------- figures
def scatter_plot(groups: list[Group], x: str, y: str, path: Path) -> bool:
    """Figure 10: y against x, one point per method setting, settings of a method joined; False if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        mx, my = g.stats.get(x, (None,))[0], g.stats.get(y, (None,))[0]
        if mx is None or my is None or not (math.isfinite(mx) and math.isfinite(my)):
            continue
        by_method.setdefault((g.run.label, g.method), []).append(g)
    if not by_method:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, (_, members) in enumerate(by_method.items()):
        color = colors(i % 10)
        xs = [g.stats[x][0] for g in members]
        ys = [g.stats[y][0] for g in members]
        xe = [g.stats[x][1] or 0.0 for g in members]
        ye = [g.stats[y][1] or 0.0 for g in members]
        name = members[0].label.split(" (")[0]
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="-o", color=color, label=name, capsize=2, lw=1.2, ms=5)
        for g, gx, gy in zip(members, xs, ys):
            text = ", ".join(v for _, v in g.params if v != "")
            if text:
                ax.annotate(text, (gx, gy), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.set_title(f"{y} vs {x}: one point per method setting (mean ± 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def choose_items(runs: list[Run], items: Sequence[str] | None, sample: int, seed: int) -> list[str]:
    """The item ids for the grids: ``items`` (checked) or ``sample`` of them drawn with ``seed``."""
    known: list[str] = []
    for run in runs:
        for r in run.rows:
            if r.get("item_id", "") not in known:
                known.append(r.get("item_id", ""))
    if items:
        unknown = [i for i in items if i not in known]
        if unknown:
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise InputError(f"--items: no item {', '.join(unknown)} in the results; known items: {shown}")
        return list(items)
    if sample <= 0 or not known:
        return []
    if sample >= len(known):
        return known
    picked = set(random.Random(seed).sample(known, sample))
    return [i for i in known if i in picked]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "item"


def _load(path: Path | None) -> Any:
    if path is None or not path.is_file():
        return None
    try:
        from framework.images import load_image

        return load_image(path)
    except Exception:  # noqa: BLE001 - a broken image shows as a placeholder
        return None


def grid_image(runs: list[Run], groups: list[Group], item: str, path: Path) -> bool:
    """Rows: the item's target prompts; columns: input | each method setting. False if no rows."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets: list[str] = []
    input_path: Path | None = None
    for g in groups:
        for r in g.rows:
            if r.get("item_id") != item:
                continue
            if r.get("target_prompt", "") not in targets:
                targets.append(r.get("target_prompt", ""))
            if input_path is None or not input_path.is_file():
                input_path = resolve_path(g.run, r.get("input_path"))
    if not targets:
        return False
    cols = [g for g in groups if any(r.get("item_id") == item for r in g.rows)]
    source = _load(input_path)
    size = 1.9
    fig, axes = plt.subplots(
        len(targets), len(cols) + 1, figsize=(size * (len(cols) + 1), size * len(targets) + 0.5), dpi=100, squeeze=False
    )
    for i, target in enumerate(targets):
        cells: list[tuple[Any, str, str]] = [(source, "input" if i == 0 else "", "input missing")]
        for g in cols:
            rows = [r for r in g.rows if r.get("item_id") == item and r.get("target_prompt", "") == target]
            ok = sorted((r for r in rows if is_ok(r)), key=lambda r: _sort_key(r.get("seed", "")))
            img = _load(resolve_path(g.run, ok[0].get("output_path"))) if ok else None
            note = "failed" if rows and not ok else "missing"
            title = "\n".join(textwrap.wrap(g.label, 28, break_long_words=False)) if i == 0 else ""
            cells.append((img, title, note))
        for j, (img, title, note) in enumerate(cells):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img)
            else:
                ax.set_facecolor("#dddddd")
                ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=8, transform=ax.transAxes)
            if title:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(target, 22)), fontsize=7)
    fig.suptitle(f"item {item}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ wandb
def wandb_settings(runs: list[Run], args: argparse.Namespace) -> dict[str, Any] | None:
    """wandb project/mode when --wandb is given or a run's config has logger.name == wandb."""
    if getattr(args, "no_wandb", False):
        return None
    logger: dict[str, Any] = {}
    for run in runs:
        cfg_logger = (run.config or {}).get("logger")
        if isinstance(cfg_logger, dict) and cfg_logger.get("name") == "wandb":
            logger = cfg_logger
            break
    if not args.wandb and not logger:
        return None
    return {
        "project": args.wandb_project or logger.get("project") or "editfriendly",
        "mode": args.wandb_mode or logger.get("mode") or "offline",
        "entity": logger.get("entity"),
    }


def log_wandb(
    settings: dict[str, Any], out: Path, header: list[str], body: list[list[str]], images: dict[str, Path], runs: list[Run]
) -> str:
    """Log the table and images to one wandb run; returns the run's local directory."""
    import wandb

    run = wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        mode=settings["mode"],
        dir=str(out),
        name="compare-" + "+".join(r.label for r in runs)[:100],
        job_type="compare",
        config={"runs": [str(r.path) for r in runs]},
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    try:
        payload: dict[str, Any] = {"comparison": wandb.Table(columns=header, data=body)}
        for key, path in images.items():
            payload[key] = wandb.Image(str(path))
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


# ------------------------------------------------------------------------------------ report
def default_out(run_dirs: Sequence[str]) -> Path:
    first = Path(run_dirs[0])
    if first.is_file():
        first = first.parent
    if len(run_dirs) == 1:
        return first / "compare"
    names = "_vs_".join(_safe(Path(d).resolve().name) for d in run_dirs)
    return first.resolve().parent / f"compare_{names}"[:120]


def compare(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    items: Sequence[str] | None = None,
    sample: int = 4,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    x: str | None = None,
    y: str | None = None,
    wandb: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the report; returns {"out", "report_md", "report_html", "summary_csv", "scatter", "grids", "groups", ...}.

    The scatter's columns: ``x``/``y``, else the first run config's ``compare: {x: ..., y: ...}``
    (e.g. the digits benchmark's shape_iou and color_reached), else lpips and clip_score.
    """
    if not run_dirs:
        raise InputError("give at least one RUN_DIR")
    runs = [read_run(d) for d in run_dirs]
    unique_labels(runs)
    axes = next((r.config["compare"] for r in runs if isinstance((r.config or {}).get("compare"), dict)), {})
    x = x or str(axes.get("x") or "lpips")
    y = y or str(axes.get("y") or "clip_score")
    if not any(r.rows for r in runs):
        raise InputError(f"no rows in {', '.join(str(r.path / 'results.csv') for r in runs)}")
    out = Path(out) if out else default_out([str(d) for d in run_dirs])
    from framework.cli import check_output_dir, make_output_dir

    check_output_dir(out, "report folder")
    make_output_dir(out, "report folder")
    metric_cols, param_cols = classify_columns(runs, metrics, params)
    groups = group_rows(runs, param_cols, metric_cols)
    empty = [m for m in metric_cols if not any(g.stats[m][2] for g in groups)]
    metric_cols = [m for m in metric_cols if m not in empty]  # e.g. *_bg columns of a run without masks
    header, body = table(groups, runs, param_cols, metric_cols)

    summary_csv = out / "summary.csv"
    write_summary_csv(summary_csv, groups, param_cols, metric_cols)
    scatter = out / (
        "scatter_clip_lpips.png" if (x, y) == ("lpips", "clip_score") else f"scatter_{_safe(y)}_vs_{_safe(x)}.png"
    )
    has_scatter = x in metric_cols and y in metric_cols and scatter_plot(groups, x, y, scatter)
    if not has_scatter and scatter.exists():
        scatter.unlink()
    chosen = choose_items(runs, items, sample, seed)
    grids: dict[str, Path] = {}
    for item in chosen:
        path = out / "grids" / f"grid_{_safe(item)}.png"
        if grid_image(runs, groups, item, path):
            grids[item] = path

    failures = [(run, r) for run in runs for r in run.rows if not is_ok(r)]

    def setting(r: dict[str, str]) -> str:
        text = ", ".join(f"{c}={r.get(c)}" for c in param_cols if (r.get(c) or "").strip())
        return f" ({text})" if text else ""

    total = sum(len(r.rows) for r in runs)
    md: list[str] = ["# Comparison report", ""]
    md.append("Runs:")
    for run in runs:
        n_fail = sum(not is_ok(r) for r in run.rows)
        md.append(f"- `{run.label}` ({run.path}): {len(run.rows)} rows, {n_fail} failed")
    md += [
        "",
        "## Methods × metrics",
        "",
        f"Mean ± half-width of the 95% confidence interval (Student's t) over the rows with status ok; "
        f"{total} rows, {len(failures)} failed. ↑ higher is better, ↓ lower is better.",
        "",
        markdown_table(header, body),
        "",
        *([f"Columns without any value (left out): {', '.join(empty)}.", ""] if empty else []),
        f"## {y} vs {x}",
        "",
    ]
    if has_scatter:
        md.append(f"![{y} vs {x}]({scatter.name})")
    else:
        md.append(f"(no scatter: the results have no values in both {x} and {y})")
    md += ["", "## Image grids", ""]
    if grids:
        for item, path in grids.items():
            md += [f"### {item}", "", f"![{item}]({path.relative_to(out).as_posix()})", ""]
    else:
        md.append("(no items chosen)")
    if failures:
        md += ["", "## Failed rows", ""]
        for run, r in failures[:50]:
            md.append(
                f"- `{run.label}` item `{r.get('item_id', '')}` method `{r.get('method', '')}`{setting(r)} "
                f"target “{r.get('target_prompt', '')}”: {r.get('error', '') or '(no reason recorded)'}"
            )
        if len(failures) > 50:
            md.append(f"- … and {len(failures) - 50} more")
    report_md = out / "report.md"
    report_md.write_text("\n".join(md) + "\n", encoding="utf-8")

    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Comparison report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        "<h1>Comparison report</h1><ul>",
    ]
    for run in runs:
        n_fail = sum(not is_ok(r) for r in run.rows)
        parts.append(f"<li><code>{esc(run.label)}</code> ({esc(str(run.path))}): {len(run.rows)} rows, {n_fail} failed</li>")
    parts += [
        "</ul><h2>Methods × metrics</h2>",
        f"<p>Mean ± half-width of the 95% confidence interval (Student's t) over the rows with status ok; "
        f"{total} rows, {len(failures)} failed. ↑ higher is better, ↓ lower is better.</p>",
        html_table(header, body),
        f"<p>Columns without any value (left out): {esc(', '.join(empty))}.</p>" if empty else "",
        f"<h2>{esc(y)} vs {esc(x)}</h2>",
        f"<img src='{esc(scatter.name)}' alt='scatter'>" if has_scatter else f"<p>(no scatter: no values in both {esc(x)} and {esc(y)})</p>",
        "<h2>Image grids</h2>",
    ]
    for item, path in grids.items():
        parts.append(f"<h3>{esc(item)}</h3><img src='{esc(path.relative_to(out).as_posix())}' alt='{esc(item)}'>")
    if failures:
        parts.append("<h2>Failed rows</h2><ul>")
        for run, r in failures[:50]:
            parts.append(
                f"<li><code>{esc(run.label)}</code> item <code>{esc(r.get('item_id', ''))}</code> method "
                f"<code>{esc(r.get('method', ''))}</code>{esc(setting(r))} target “{esc(r.get('target_prompt', ''))}”: "
                f"{esc(r.get('error', '') or '(no reason recorded)')}</li>"
            )
        parts.append("</ul>")
    parts.append("</body></html>")
    report_html = out / "report.html"
    report_html.write_text("\n".join(parts), encoding="utf-8")

    result: dict[str, Any] = {
        "out": out,
        "report_md": report_md,
        "report_html": report_html,
        "summary_csv": summary_csv,
        "scatter": scatter if has_scatter else None,
        "grids": grids,
        "groups": groups,
        "metric_columns": metric_cols,
        "param_columns": param_cols,
        "wandb_dir": None,
    }
    if wandb:
        images = ({f"{y}_vs_{x}": scatter} if has_scatter else {}) | {f"grid/{k}": v for k, v in grids.items()}
        result["wandb_dir"] = log_wandb(wandb, out, header, body, images, runs)
    return result


# ------------------------------------------------------------------------------------- CLI
def add_parser(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """The ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="compare run directories: methods × metrics table, CLIP-vs-LPIPS scatter, image grids",
        description="Read RUN_DIR/results.csv of each run and write report.md, report.html, summary.csv, "
        "the CLIP-vs-LPIPS scatter (the paper's Figure 10) and image grids (input | each method) to --out.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or results.csv files)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/compare, or compare_<a>_vs_<b> beside the runs)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--items", nargs="+", metavar="ID", help="item ids to show in image grids")
    sel.add_argument("--sample", type=int, default=4, metavar="N", help="grids for N items drawn at random (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the item sample (default 0)")
    p.add_argument("--metrics", nargs="+", metavar="COL", help="metric columns (default: detected)")
    p.add_argument("--params", nargs="+", metavar="COL", help="parameter columns (default: detected)")
    p.add_argument("--x", help="scatter x column (default: the run config's compare.x, else lpips)")
    p.add_argument("--y", help="scatter y column (default: the run config's compare.y, else clip_score)")
    p.add_argument("--wandb", action="store_true", help="also log the report to wandb (offline unless --wandb-mode online)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to wandb even if a run's config has a wandb logger")
    p.add_argument("--wandb-project", help="wandb project (default: the run's logger.project or editfriendly)")
    p.add_argument("--wandb-mode", choices=["offline", "online", "disabled"], help="wandb mode (default offline)")


def cmd_compare(args: argparse.Namespace) -> int:
    """Handler of ``editfriendly compare``."""
    runs_for_logger = [read_run(d) for d in args.run_dirs]
    settings = wandb_settings(runs_for_logger, args)
    if args.sample is not None and args.sample < 0:
        raise InputError(f"--sample must be >= 0, got {args.sample}")
    result = compare(
        args.run_dirs,
        args.out,
        items=args.items,
        sample=args.sample if args.sample is not None else 4,
        seed=args.seed,
        metrics=args.metrics,
        params=args.params,
        x=args.x,
        y=args.y,
        wandb=settings,
    )
    print(result["report_md"])
    print(result["report_html"])
    if result["scatter"]:
        print(result["scatter"])
    for path in result["grids"].values():
        print(path)
    if result["wandb_dir"]:
        print(f"wandb: {result['wandb_dir']}")
    return 0
