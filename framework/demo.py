"""``editfriendly demo``: a web page (Gradio) to edit one photo interactively.

The page takes an image (an upload or one of the shipped examples in ``data/``), a source prompt,
one or more target prompts (one per line), an inverter and an editor chosen from the presets in
``configs/inverter`` and ``configs/editor`` (their options shown as editable YAML), the steps, skip
and guidance sliders, a seed and a number of diverse outputs (seeds ``seed .. seed+S-1``, each its
own inversion). It shows the input as the model sees it, the reconstruction and every edit side by
side, a progress bar during inversion and editing, the time and network evaluations of each phase,
and offers the resolved config and a zip of the outputs for download.

It runs the project's own pipeline (:func:`framework.edit.invert_image` and
:func:`framework.edit.edit_inversion`, configs composed by :func:`framework.config.compose`),
so a bad input shows the same ``InputError``/``ConfigError`` text as the CLI and the server keeps
serving.

What the page sends is checked on the server, not only by the widgets: preset names against the
preset lists, the options boxes against :data:`PAGE_OPTIONS` (options that name files on the server,
such as stroke images or sentence files, are not accepted from the page), steps, skip, guidance,
seed, the number of targets and outputs, prompt lengths and the image's size against the limits
below, and each request runs under a time limit (``--time-limit``). Prompts and options are
literal text: no ``${...}`` interpolation, so what runs, what the downloadable config records and
what the page shows are the same words. Error messages never carry server data (an unexpected
failure shows its type only; the details go to the server log). A request builds its outputs in a
hidden folder that is renamed into ``runs/`` only when complete; a failed request leaves nothing.

Inversions are kept per browser session (keyed by the fitted image's pixels, the backbone,
the source prompt, the inverter config, steps, skip and seed), so a second edit of the same image
with the same inversion settings only runs the editor: invert once, edit many times.

Requests go through Gradio's queue one at a time (one model, one worker); each session has its own
cache. Everything the demo writes (outputs, Gradio's uploads and served files) goes under the
output folder. Gradio is imported only by :func:`cmd_demo`, never by ``editfriendly edit``/``list``,
and it is set up to fetch nothing from the network: analytics off, no server-side rendering, no
share link unless ``--share yes``, and the front end served from the installed wheel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import ConfigError, EditFriendlyError, InputError
from framework.prompts import check_edit_prompts

log = logging.getLogger(__name__)

DEFAULT_OUT = "outputs/demo"
#: the backbone served when --backbone is not given; the first of these that loads
DEFAULT_BACKBONES = ("digits", "tiny")
MAX_OUTPUTS = 4  # diverse outputs (seeds) per request
MAX_TARGETS = 8
MAX_STEPS = 200  # the steps slider's end
INVERTER_GUIDANCE = (1.0, 20.0)  # the source guidance slider's range
EDITOR_GUIDANCE = (1.0, 30.0)  # the target guidance slider's range
MAX_PROMPT_CHARS = 1000  # per prompt (the text encoders read 77 tokens)
MAX_OPTIONS_CHARS = 4000  # per options box
MAX_OPTION_VALUES = 500  # numbers, strings, lists and mappings in one options box
MAX_IMAGE_PIXELS = 4096 * 4096  # of the uploaded image, checked before it is decoded
MAX_UPLOAD = "25mb"  # Gradio refuses larger uploads
DEFAULT_TIME_LIMIT_S = 300.0  # per request; --time-limit
PARTIAL_PREFIX = ".partial-"  # a request's folder while it is being written
CACHE_ENTRIES = 8  # inversions kept per session
SESSION_TTL_S = 3600  # a session's inversions are freed this long after its last request
MAX_SESSIONS = 100  # sessions whose state the server keeps at once
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data"

#: (fraction done, description) -> None
ProgressFn = Callable[[float, str], None]

#: A bound of a numeric option from the page: (lowest, highest) or None (the plugin's own checks).
Bound = tuple[float, float] | None
_STEPS_BOUND: Bound = (0, 50)  # inner optimisation steps and the like: each costs network calls
_OFFSET_BOUND: Bound = (0, 1)  # the scheduler's steps_offset (the models' 1, or 0 as some reference code)

#: The options each plugin takes from the page's options boxes, with bounds for numbers. Every
#: other option keeps its preset's value; :data:`SERVER_FILE_OPTIONS` lists those that name files.
PAGE_OPTIONS: dict[str, dict[str, Bound]] = {
    "cycle_diffusion": {"eta": None, "guidance_scale": INVERTER_GUIDANCE, "zero_last_noise": None,
                        "timestep_batch": None},
    "ddim": {"guidance_scale": INVERTER_GUIDANCE, "autocorrelation_weight": None, "kl_weight": None,
             "regularization_steps": _STEPS_BOUND, "autocorrelation_rolls": _STEPS_BOUND, "random_shift": None},
    "ddpm_edit_friendly": {"eta": None, "guidance_scale": INVERTER_GUIDANCE, "zero_last_noise": None,
                           "timestep_batch": None},
    "edict": {"guidance_scale": INVERTER_GUIDANCE, "mix_weight": None, "steps_offset": _OFFSET_BOUND},
    "negative_prompt": {"guidance_scale": INVERTER_GUIDANCE, "steps_offset": _OFFSET_BOUND},
    "none": {"guidance_scale": INVERTER_GUIDANCE},
    "null_text": {"guidance_scale": INVERTER_GUIDANCE, "num_inner_steps": _STEPS_BOUND,
                  "early_stop_epsilon": None, "learning_rate": None, "steps_offset": _OFFSET_BOUND},
    "color_strokes": {"strength": None, "start_step": None, "end_step": None, "guidance_scale": EDITOR_GUIDANCE,
                      "clip_prediction": None},
    "flowedit": {"n_max": None, "n_min": None, "n_avg": _STEPS_BOUND, "source_guidance_scale": EDITOR_GUIDANCE,
                 "guidance_scale": EDITOR_GUIDANCE},
    "plug_and_play": {"guidance_scale": EDITOR_GUIDANCE, "feature_injection": None, "attention_injection": None,
                      "feature_layers": None, "attention_layers": None, "negative_prompt": None,
                      "source_branch": None, "source_latents": None, "targets_per_batch": None},
    "prompt_to_prompt": {"guidance_scale": EDITOR_GUIDANCE, "mode": None, "cross_replace_steps": None,
                         "self_replace_steps": None, "max_self_resolution": None, "equalizer_words": None,
                         "equalizer_weights": None, "blend_words": None, "threshold": None,
                         "blend_resolution": None},
    "sdedit": {"strength": None, "start_step": None, "eta": None, "guidance_scale": EDITOR_GUIDANCE},
    "shift": {"dx": None, "dy": None, "border": None, "guidance_scale": EDITOR_GUIDANCE},
    "text": {"guidance_scale": EDITOR_GUIDANCE},
    "zero_shot": {"guidance_scale": EDITOR_GUIDANCE, "cross_attention_guidance": None, "source_latents": None,
                  "targets_per_batch": None, "negative_prompt": None, "attention_guidance": None},
}  # fmt: skip
#: Options that name files on the server: never taken from the page (the preset's value stays);
#: the editors of STROKES_EDITORS get their ``strokes`` from the page's strokes upload instead.
SERVER_FILE_OPTIONS: dict[str, tuple[str, ...]] = {
    "color_strokes": ("strokes", "mask", "colors"),
    "sdedit": ("strokes", "mask", "colors"),
    "zero_shot": ("source_sentences", "target_sentences"),
}
STROKES_EDITORS = ("color_strokes", "sdedit")


def configure_env(out: Path) -> None:
    """Environment for an offline Gradio, and caches that land under ``out`` (call before
    importing Gradio or torch)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str(out / "gradio")  # uploads and served files
    os.environ.setdefault("GRADIO_SSR_MODE", "False")  # no Node server
    os.environ.setdefault("MPLCONFIGDIR", str(out / "matplotlib"))  # its font cache, not ~/.cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out / "torchinductor"))  # not $TMPDIR


# ------------------------------------------------------------------------------ engine


@dataclass
class EditRequest:
    """What the page sends: one image, its prompts and the method settings."""

    image: str | None  # path of the uploaded file
    source_prompt: str
    target_prompts: str  # one per line
    inverter: str  # preset name
    inverter_options: str  # YAML mapping of options
    inverter_guidance: float | None
    editor: str
    editor_options: str
    editor_guidance: float | None
    num_steps: int
    skip: int
    seed: int
    num_outputs: int = 1
    image_name: str = "image"
    strokes: str | None = None  # path of an uploaded strokes image (RGBA), for STROKES_EDITORS
    strokes_name: str = "strokes"


@dataclass
class PhaseTiming:
    """One row of the timings table."""

    phase: str  # inversion, edit, reconstruction
    seed: int
    seconds: float  # spent by this request (0 for a reused inversion)
    nfe: int
    reused: bool = False
    note: str = ""


@dataclass
class DemoResult:
    """What a request produced; every path lies in ``folder``."""

    folder: Path
    input_path: Path
    gallery: list[tuple[str, str]]  # (image path, caption), S rows of 2 + K
    columns: int
    timings: list[PhaseTiming]
    config_path: Path
    zip_path: Path
    size: tuple[int, int]  # (W, H) of the model's input and outputs
    reused: int  # how many of the S inversions came from the cache

    def timings_markdown(self) -> str:
        """The timings as a Markdown table, with a note on reused inversions."""
        lines = [
            "| phase | seed | time (s) | network evaluations | |",
            "|---|---:|---:|---:|---|",
        ]
        for t in self.timings:
            lines.append(f"| {t.phase} | {t.seed} | {t.seconds:.3f} | {t.nfe} | {t.note} |")
        n = sum(1 for t in self.timings if t.phase == "inversion")
        if self.reused:
            head = (
                f"**Inversion reused** for {self.reused} of {n} seed(s): same image, backbone, "
                "source prompt, inverter, steps, skip and seed as an earlier edit in this session; "
                "only the editor ran (the reconstruction is kept with the inversion)."
            )
        else:
            head = f"Inverted {n} seed(s); a new edit with the same inversion settings will reuse them."
        # the folder under the demo's output folder: the page shows no server path
        return head + "\n\n" + "\n".join(lines) + f"\n\nOutputs: `runs/{self.folder.name}`"


@dataclass
class CachedInversion:
    """An inversion of one session's cache, with the reconstructions made from it so far."""

    run: Any  # framework.edit.InversionRun
    reconstructions: dict[str, Any] = field(default_factory=dict)  # editor config -> EditRun


def reused_row(phase: str, seed: int, seconds: float, nfe: int) -> PhaseTiming:
    """A timings row for work taken from the cache: it cost this request nothing."""
    note = f"reused from this session's cache (computed earlier: {seconds:.3f} s, {nfe} evaluations)"
    return PhaseTiming(phase, seed, 0.0, 0, reused=True, note=note)


class InversionCache:
    """A small per-session LRU of inversions, keyed by :func:`inversion_key`."""

    def __init__(self, capacity: int = CACHE_ENTRIES) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __deepcopy__(self, memo: dict) -> InversionCache:  # Gradio copies state values
        return self


def inversion_key(
    image_hash: str,
    backbone: Mapping[str, Any],
    source_prompt: str,
    inverter: Mapping[str, Any],
    num_steps: int,
    skip: int,
    seed: int,
) -> str:
    """What an inversion depends on, hashed: the same key means the same inversion."""
    blob = json.dumps(
        [image_hash, dict(backbone), source_prompt, dict(inverter), num_steps, skip, seed],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_options(text: str | None, what: str) -> dict[str, Any]:
    """The options box (YAML ``key: value`` lines) -> a mapping; errors name the box."""
    import yaml

    if not text or not str(text).strip():
        return {}
    if not isinstance(text, str):
        raise ConfigError(f"the {what} options must be text ('key: value' lines), got {_short(text)}")
    if len(text) > MAX_OPTIONS_CHARS:
        raise ConfigError(
            f"the {what} options are {len(text)} characters long; the demo accepts at most {MAX_OPTIONS_CHARS}"
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not parse the {what} options as YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"could not parse the {what} options as YAML: nested too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"the {what} options must be 'key: value' lines, got {_short(value)}")
    check_option_values(value, what)
    return {str(k): v for k, v in value.items()}


def check_option_values(value: Any, what: str) -> None:
    """At most :data:`MAX_OPTION_VALUES` values (YAML aliases count each time they are used),
    nested at most 8 deep; numbers finite and within 64 bits."""
    count = 0

    def walk(v: Any, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_OPTION_VALUES or depth > 8:
            raise ConfigError(
                f"the {what} options are too large: the demo accepts at most {MAX_OPTION_VALUES} values, "
                "nested at most 8 deep"
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"the {what} options must hold finite numbers, got {v}")
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
            raise ConfigError(f"the {what} options hold a number that does not fit in 64 bits: {_short(v)}")
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(k, depth + 1)
                walk(x, depth + 1)
        elif isinstance(v, (list, tuple, set)):
            for x in v:
                walk(x, depth + 1)

    walk(value, 0)


def check_page_options(group: str, plugin: str, options: Mapping[str, Any]) -> None:
    """Only the options :data:`PAGE_OPTIONS` lists for ``plugin``, numbers within their bounds.
    Whether a value names an existing file is never looked at: the answer is the same."""
    allowed = PAGE_OPTIONS.get(plugin, {})
    for key, value in options.items():
        if key in ("name", "preset"):
            raise ConfigError(
                f"the {group} options take the options of the chosen preset's plugin ({plugin}), not "
                f"{key!r}; choose the {group} in its menu"
            )
        if key in SERVER_FILE_OPTIONS.get(plugin, ()):
            raise ConfigError(
                f"the {group} option {key!r} names a file and is not accepted from the page (the demo "
                f"reads no server files); use `editfriendly edit` with {group}.{key}=FILE"
            )
        if key not in allowed:
            accepted = ", ".join(allowed) or "(none)"
            raise ConfigError(f"unknown option {key!r} for {group} {plugin!r}; accepted options: {accepted}")
        bound = allowed[key]
        if bound is not None and value is not None:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or not bound[0] <= value <= bound[1]:
                raise ConfigError(
                    f"the {group} option {key!r} must be a number in {bound[0]:g}..{bound[1]:g} in the demo, "
                    f"got {_short(value)}"
                )


def as_int(value: Any, what: str) -> int:
    """A whole number from a slider or number box (which send floats, or text through the API)."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be a whole number, got {_short(value)}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise InputError(f"{what} must be a whole number, got {_short(value)}")
    return int(f)


def as_float(value: Any, what: str, bound: tuple[float, float]) -> float:
    """A number from a slider, within its range."""
    try:
        f = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if not bound[0] <= f <= bound[1]:  # NaN fails too
        raise InputError(f"{what} must be a number in {bound[0]:g}..{bound[1]:g}, got {_short(value)}")
    return f


class LiteralText:
    """Page text kept literal while it passes through OmegaConf, which would read ``${...}`` as
    an interpolation (environment variables, other keys) and ``???`` as a missing value.

    :meth:`hide` swaps such strings for unique placeholders before the config is composed and
    the plugins validate their options; :meth:`show` swaps the words back in the result, and
    :meth:`message` in error messages."""

    def __init__(self) -> None:
        self._prefix = f"ef-literal-{uuid.uuid4().hex}-"
        self._texts: dict[str, str] = {}

    @staticmethod
    def special(text: str) -> bool:
        return "${" in text or "???" in text

    def hide(self, value: Any) -> Any:
        if isinstance(value, str):
            if not self.special(value):
                return value
            token = f"{self._prefix}{len(self._texts):06d}"
            self._texts[token] = value
            return token
        if isinstance(value, Mapping):
            return {self.hide(k): self.hide(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide(v) for v in value]
        return value

    def show(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._texts.get(value, self.message(value) if self._prefix in value else value)
        if isinstance(value, Mapping):
            return {self.show(k): self.show(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.show(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.show(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {}
            for f in dataclasses.fields(value):
                old = getattr(value, f.name)
                new = self.show(old)
                if new != old:
                    changes[f.name] = new
            return dataclasses.replace(value, **changes) if changes else value
        return value

    def message(self, text: str) -> str:
        for token, original in self._texts.items():
            text = text.replace(token, original)
        return text


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_examples(folder: Path = EXAMPLES_DIR) -> list[dict[str, Any]]:
    """The shipped examples: entries of ``data/*.yaml`` lists (``init_img``, ``source_prompt``,
    ``target_prompts``, paths relative to the file) whose image exists, then the images lying
    directly in ``data/`` that no list names (with empty prompts)."""
    import yaml

    examples: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            entries = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or "init_img" not in entry:
                continue
            image = (path.parent / str(entry["init_img"])).resolve()
            if image.is_file():
                targets = entry.get("target_prompts") or []
                examples.append(
                    {
                        "image": str(image),
                        "source": str(entry.get("source_prompt") or ""),
                        "targets": "\n".join(str(t) for t in targets),
                    }
                )
    listed = {e["image"] for e in examples}
    loose = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    for image in loose:
        if str(image.resolve()) not in listed:
            examples.append({"image": str(image.resolve()), "source": "", "targets": ""})
    return examples


class DemoEngine:
    """The model side of the demo: one backbone, the presets, and :meth:`run`. No Gradio here."""

    def __init__(
        self,
        backbone: Any,
        backbone_cfg: Mapping[str, Any],
        backbone_name: str,
        out: Path,
        time_limit: float | None = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        self.backbone = backbone
        self.backbone_cfg = dict(backbone_cfg)
        self.backbone_name = backbone_name
        self.out = Path(out)
        self.time_limit = time_limit  # seconds per request; None: no limit

    def remove_partial_outputs(self) -> list[Path]:
        """Remove what requests cut short by a stopped server left (hidden folders in ``runs/``
        older than the time limit, so a request still running in another server is spared)."""
        runs = self.out / "runs"
        age = self.time_limit if self.time_limit is not None else SESSION_TTL_S
        removed = []
        for folder in sorted(runs.glob(f"{PARTIAL_PREFIX}*")) if runs.is_dir() else []:
            try:
                if time.time() - folder.stat().st_mtime > age:
                    shutil.rmtree(folder)
                    removed.append(folder)
            except OSError as exc:
                log.warning("could not remove the unfinished output folder %s: %s", folder, exc)
        return removed

    @classmethod
    def load(cls, name: str | None, out: Path, device: str | None = None) -> DemoEngine:
        """Load ``name``, or the first default backbone that loads (``digits``, then ``tiny``)."""
        if name:
            return cls._load_one(name, out, device)
        from framework.config import preset_names
        from framework.registry import BACKBONES

        for candidate in DEFAULT_BACKBONES:
            if candidate not in preset_names("backbone") and candidate not in BACKBONES.names():
                continue
            try:
                return cls._load_one(candidate, out, device)
            except EditFriendlyError as exc:
                log.warning("backbone %s is not available (%s); trying the next default", candidate, exc)
        names = ", ".join(DEFAULT_BACKBONES)
        raise ConfigError(f"none of the default backbones ({names}) loads; give --backbone")

    @classmethod
    def _load_one(cls, name: str, out: Path, device: str | None) -> DemoEngine:
        from framework.config import backbone_config, full_options
        from framework.registry import BACKBONES

        cfg = dict(backbone_config(name))
        if device:
            cfg["device"] = device
        cfg = full_options(BACKBONES, cfg)  # validated, with defaults: the cache key and the record
        log.info("loading backbone %s", cfg)
        return cls(BACKBONES.build(cfg), cfg, name, out)

    # ---------------------------------------------------------------- presets
    @staticmethod
    def presets(group: str) -> list[str]:
        """The preset names of ``inverter`` or ``editor``."""
        from framework.config import preset_names

        return preset_names(group)

    @classmethod
    def check_preset(cls, group: str, preset: Any) -> str:
        """``preset`` if it is one of the group's preset names (the menu's choices)."""
        names = cls.presets(group)
        if not isinstance(preset, str) or preset not in names:
            raise ConfigError(f"unknown {group} preset {_short(preset)}; choose one of: {', '.join(names)}")
        return preset

    @classmethod
    def preset_options(cls, group: str, preset: str) -> tuple[str, float | None, str]:
        """(options YAML for the box, guidance for the slider or None, a one-line description).

        ``guidance_scale`` moves to the slider when the preset sets a number; the plugin name is
        shown in the description, not in the box, and so are the options the page does not take
        (:data:`PAGE_OPTIONS`)."""
        import yaml

        from framework.config import full_options, group_node
        from framework.registry import EDITORS, INVERTERS

        registry = INVERTERS if group == "inverter" else EDITORS
        node = full_options(registry, group_node(group, cls.check_preset(group, preset)))
        name = node.pop("name")
        guidance = node.get("guidance_scale")
        numeric = isinstance(guidance, (int, float)) and not isinstance(guidance, bool)
        slider = float(guidance) if numeric else None
        if slider is not None:
            node.pop("guidance_scale")
        allowed = PAGE_OPTIONS.get(name, {})
        node = {k: v for k, v in node.items() if k in allowed}
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        text = yaml.safe_dump(node, sort_keys=False, default_flow_style=False) if node else ""
        return text, slider, f"plugin `{name}`: {doc[0] if doc else ''}"

    def reconstruction_editor(self, editor: Any, inversion: Any) -> tuple[Any, str]:
        """What regenerates the image unchanged: on a text-conditional backbone, the ``text``
        editor under the source prompt at the inversion's own guidance (exact for inversions
        with noise maps, the paper's point); otherwise ``editor`` itself toward the source."""
        from framework.registry import EDITORS

        if getattr(self.backbone, "conditional", True):
            g = float(inversion.guidance_scale)
            return EDITORS.build({"name": "text", "guidance_scale": g}), f"source prompt, guidance {g:g}"
        return editor, f"{getattr(editor, 'registered_name', 'editor')} toward the source"

    # ---------------------------------------------------------------- request
    def compose(self, req: EditRequest, literal: LiteralText | None = None) -> dict[str, Any]:
        """The request as a resolved run config, plain data (defaults < presets < the page's
        values), after checking every value the page sent. Text stays literal (``literal``
        keeps the words that OmegaConf must not read)."""
        from omegaconf import OmegaConf

        from framework.config import compose, group_node
        from framework.random import check_seed
        from framework.schedule import check_steps

        literal = literal or LiteralText()
        groups = {}
        for group, preset, text, guidance, bound, label in (
            ("inverter", req.inverter, req.inverter_options, req.inverter_guidance, INVERTER_GUIDANCE,
             "the source guidance (inversion)"),
            ("editor", req.editor, req.editor_options, req.editor_guidance, EDITOR_GUIDANCE,
             "the target guidance (edit)"),
        ):  # fmt: skip
            if not preset:
                raise ConfigError(f"choose an {group} preset")
            self.check_preset(group, preset)
            plugin = str(group_node(group, preset)["name"])
            options = parse_options(text, group)
            check_page_options(group, plugin, options)
            if guidance is not None and "guidance_scale" not in options:
                _, preset_guidance, _ = self.preset_options(group, preset)
                if preset_guidance is not None:  # the slider controls it for this preset
                    options["guidance_scale"] = as_float(guidance, label, bound)
            if group == "editor" and req.strokes:
                if plugin not in STROKES_EDITORS:
                    raise InputError(
                        f"the strokes image is for the {' and '.join(STROKES_EDITORS)} editors, not {plugin}; "
                        "remove it or choose one of those"
                    )
                options["strokes"] = str(req.strokes)  # the upload's copy, never a path the page names
            elif plugin == "color_strokes" and not any(group_node(group, preset).get(k) for k in ("strokes", "mask")):
                raise InputError(
                    "the color_strokes editor needs a strokes image: upload a transparent PNG whose painted "
                    "pixels mark the region to recolour and its new colours"
                )
            groups[group] = {"preset": preset, **literal.hide(options)}
        num_steps, skip, seed = as_int(req.num_steps, "steps"), as_int(req.skip, "skip"), as_int(req.seed, "seed")
        check_steps(num_steps, skip)  # the CLI's checks and texts
        if num_steps > MAX_STEPS:
            raise InputError(f"num_steps (--steps) must be at most {MAX_STEPS} in the demo, got {num_steps}")
        check_seed(seed)
        layer = {"backbone": self.backbone_cfg, **groups, "num_steps": num_steps, "skip": skip, "seed": seed}
        try:
            cfg = compose(extra_layers=[layer], kind="edit")
            plain = OmegaConf.to_container(cfg, resolve=True)
        except EditFriendlyError as exc:
            raise type(exc)(literal.message(str(exc))) from None
        return literal.show(plain)

    @staticmethod
    def build_plugin(registry: Any, node: Mapping[str, Any], literal: LiteralText) -> Any:
        """``registry.build(node)`` with the node's text kept literal."""
        try:
            cls, options = registry.options(literal.hide(dict(node)))
            return cls(literal.show(options))
        except EditFriendlyError as exc:
            raise type(exc)(literal.message(str(exc))) from None

    def check_prompts(self, req: EditRequest, editor: Any) -> tuple[str, list[str]]:
        """(source, targets): at most :data:`MAX_TARGETS`, each at most :data:`MAX_PROMPT_CHARS`."""
        source_text, targets_text = req.source_prompt or "", req.target_prompts or ""
        if not isinstance(source_text, str) or not isinstance(targets_text, str):
            raise InputError("the prompts must be text")
        source = source_text.strip()
        targets = [t.strip() for t in targets_text.splitlines() if t.strip()]
        if not targets:
            if getattr(editor, "needs_prompts", True):
                raise InputError("give at least one target prompt (one per line)")
            targets = [""]
        if len(targets) > MAX_TARGETS:
            raise InputError(f"give at most {MAX_TARGETS} target prompts, got {len(targets)}")
        for what, prompt in (("the source prompt", source), *(("a target prompt", t) for t in targets)):
            if len(prompt) > MAX_PROMPT_CHARS:
                raise InputError(
                    f"{what} is {len(prompt)} characters long; the demo accepts at most {MAX_PROMPT_CHARS}"
                )
        return source, targets

    def run(self, req: EditRequest, cache: InversionCache, progress: ProgressFn | None = None) -> DemoResult:
        """Invert (or reuse) and edit under the time limit; the outputs go to a new folder of
        ``self.out / "runs"`` that appears only when the request succeeded."""
        from framework.progress import TimeLimitExceeded, time_limit

        try:
            with time_limit(self.time_limit):
                return self._run(req, cache, progress)
        except TimeLimitExceeded:
            raise InputError(
                f"the request was stopped after the demo's time limit of {self.time_limit:g} s per request; "
                "use fewer steps, target prompts or outputs"
            ) from None

    def _run(self, req: EditRequest, cache: InversionCache, progress: ProgressFn | None) -> DemoResult:
        import yaml

        from framework.backbone import resolve_device
        from framework.images import fit_image, load_image, pil_to_tensor
        from framework.progress import check_time
        from framework.registry import EDITORS, INVERTERS
        from framework.sampling import check_conditional

        def say(fraction: float, desc: str) -> None:
            check_time()
            if progress is not None:
                progress(fraction, desc)

        literal = LiteralText()
        cfg = self.compose(req, literal)
        num_steps, skip, seed = int(cfg["num_steps"]), int(cfg["skip"]), int(cfg["seed"])
        num_outputs = as_int(req.num_outputs, "number of outputs")
        if not 1 <= num_outputs <= MAX_OUTPUTS:
            raise InputError(f"the number of outputs must be in 1..{MAX_OUTPUTS}, got {num_outputs}")
        from framework.random import check_seed

        check_seed(seed + num_outputs - 1, "the last seed (seed + outputs - 1)")
        inverter = self.build_plugin(INVERTERS, cfg["inverter"], literal)
        editor = self.build_plugin(EDITORS, cfg["editor"], literal)
        check_conditional(editor, self.backbone)
        source, targets = self.check_prompts(req, editor)
        # what the text encoder cannot take is refused before the inversion, as by `edit`
        check_edit_prompts(self.backbone.prompt_rules(), source, targets, (inverter, editor), warn=False)
        if not req.image:
            raise InputError("upload an image (PNG, JPEG, WebP, ...) or click one of the examples")
        image_name = str(req.image_name or Path(req.image).name)
        check_image_size(req.image, image_name)
        if req.strokes:
            check_image_size(req.strokes, str(req.strokes_name))
        pil = fit_image(load_image(req.image), None, self.backbone.resolution, self.backbone.size_multiple)
        image = pil_to_tensor(pil)  # (1, 3, H, W)
        image_hash = hashlib.sha256(image.numpy().tobytes()).hexdigest()
        inverter_cfg = cfg["inverter"]

        runs = self.out / "runs"
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        partial = runs / f"{PARTIAL_PREFIX}{name}"  # renamed to runs/<name> once complete
        partial.mkdir(parents=True, exist_ok=False)
        try:
            files, gallery, timings, reused = self._write(
                partial, cache, req, inverter, editor, source, targets, pil, image, image_hash,
                inverter_cfg, num_steps, skip, seed, num_outputs, say,
            )  # fmt: skip
            record = {
                **cfg,
                "editor": {**cfg["editor"], **({"strokes": str(req.strokes_name)} if req.strokes else {})},
                "image": image_name,
                "source_prompt": source,
                "target_prompts": targets,
                "num_outputs": num_outputs,
                "seeds": [seed + s for s in range(num_outputs)],
                "size": f"{pil.size[0]}x{pil.size[1]}",
                "device": str(resolve_device(cfg["backbone"].get("device", "auto"))),
            }
            (partial / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
            (partial / "results.json").write_text(
                json.dumps(
                    {"outputs": files, "timings": [t.__dict__ for t in timings], "inversions_reused": reused},
                    indent=2,
                )
            )
            with zipfile.ZipFile(partial / "outputs.zip", "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(partial.iterdir()):
                    if path.name != "outputs.zip":
                        zf.write(path, arcname=path.name)
            check_time()
            folder = runs / name
            partial.rename(folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return DemoResult(
            folder,
            folder / "input.png",
            [(str(folder / file), caption) for file, caption in gallery],
            2 + len(targets),
            timings,
            folder / "config.yaml",
            folder / "outputs.zip",
            pil.size,
            reused,
        )

    def _write(
        self,
        folder: Path,
        cache: InversionCache,
        req: EditRequest,
        inverter: Any,
        editor: Any,
        source: str,
        targets: list[str],
        pil: Any,
        image: Any,
        image_hash: str,
        inverter_cfg: Mapping[str, Any],
        num_steps: int,
        skip: int,
        seed: int,
        num_outputs: int,
        say: ProgressFn,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[PhaseTiming], int]:
        """Invert (or reuse), edit and reconstruct each seed, saving the images in ``folder``:
        (output records, gallery (file name, caption), timings, inversions reused)."""
        from framework.edit import edit_inversion, invert_image
        from framework.images import tensor_to_pil
        from framework.naming import slug

        pil.save(folder / "input.png")
        stem = slug(Path(req.image_name or "image").stem, limit=30)
        gallery: list[tuple[str, str]] = []
        timings: list[PhaseTiming] = []
        records = []
        reused = 0
        phases = 3 * num_outputs
        for s in range(num_outputs):
            seed_s = seed + s
            key = inversion_key(image_hash, self.backbone_cfg, source, inverter_cfg, num_steps, skip, seed_s)
            entry = cache.get(key)
            if entry is None:
                say(3 * s / phases, f"inverting (seed {seed_s})")
                run = invert_image(
                    self.backbone, inverter, image, source, num_steps=num_steps, skip=skip, seed=seed_s
                )
                entry = CachedInversion(run)
                cache.put(key, entry)
                timings.append(PhaseTiming("inversion", seed_s, run.seconds, run.nfe))
            else:
                reused += 1
                timings.append(reused_row("inversion", seed_s, entry.run.seconds, entry.run.nfe))
            inversion = entry.run.inversion
            say((3 * s + 1) / phases, f"editing (seed {seed_s})")
            edit = edit_inversion(self.backbone, editor, inversion, source, targets, skip=skip, seed=seed_s)
            timings.append(PhaseTiming("edit", seed_s, edit.seconds, edit.nfe))
            say((3 * s + 2) / phases, f"reconstructing (seed {seed_s})")
            rec_editor, rec_caption = self.reconstruction_editor(editor, inversion)
            rec_key = json.dumps([rec_editor.registered_name, vars(rec_editor.options)], sort_keys=True, default=str)
            rec = entry.reconstructions.get(rec_key)
            if rec is None:
                rec = edit_inversion(self.backbone, rec_editor, inversion, source, [source], skip=skip, seed=seed_s)
                entry.reconstructions[rec_key] = rec
                timings.append(PhaseTiming("reconstruction", seed_s, rec.seconds, rec.nfe))
            else:
                timings.append(reused_row("reconstruction", seed_s, rec.seconds, rec.nfe))

            rec_file = f"{stem}_seed{seed_s}_reconstruction.png"
            tensor_to_pil(rec.images)[0].save(folder / rec_file)
            gallery.append(("input.png", f"input {pil.size[0]}x{pil.size[1]} (as the model sees it)"))
            gallery.append((rec_file, f"reconstruction ({rec_caption}), seed {seed_s}"))
            for k, (target, img) in enumerate(zip(targets, tensor_to_pil(edit.images))):
                file = f"{stem}_seed{seed_s}_{k:02d}_{slug(target)}.png"
                img.save(folder / file)
                gallery.append((file, f"{target or '(empty prompt)'}, seed {seed_s}"))
                records.append({"output": file, "target_prompt": target, "seed": seed_s, "target_index": k})
        say(1.0, "writing the outputs")
        return records, gallery, timings, reused


def check_image_size(path: str, name: str) -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS` pixels, reading only its header
    (an unreadable file is left to :func:`framework.images.load_image` and its message)."""
    from PIL import Image

    limit = f"the demo accepts at most {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (e.g. 4096x4096)"
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Image.DecompressionBombError:
        raise InputError(f"image {name} is too large: {limit}") from None
    except Exception:  # not an image: load_image says so, as the CLI does
        return
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"image {name} is {w}x{h} pixels; {limit}")


# ---------------------------------------------------------------------------------- UI

CSS = """
#ef-gallery img { image-rendering: pixelated; }
"""


def build_app(engine: DemoEngine) -> Any:
    """The Gradio page around ``engine`` (imports Gradio)."""
    import gradio as gr

    from framework.schema import EditConfig
    from framework.schema import defaults as schema_defaults

    defaults = schema_defaults(EditConfig)
    inverters, editors = engine.presets("inverter"), engine.presets("editor")
    inv0 = str(defaults.get("inverter")) if defaults.get("inverter") in inverters else inverters[0]
    ed0 = str(defaults.get("editor")) if defaults.get("editor") in editors else editors[0]
    inv_text, inv_g, inv_doc = engine.preset_options("inverter", inv0)
    ed_text, ed_g, ed_doc = engine.preset_options("editor", ed0)
    examples = load_examples()
    first = examples[0] if examples else {"source": "", "targets": ""}
    steps0, skip0 = int(defaults["num_steps"]), int(defaults["skip"])
    res = engine.backbone.resolution

    with gr.Blocks(title="editfriendly demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# Edit-friendly DDPM inversion\n"
            f"Backbone **{engine.backbone_name}** ({res}x{res} pixels). Invert an image once under its "
            "source prompt, then edit it toward each target prompt; a second edit with the same "
            "inversion settings reuses the inversion."
            + (
                "\n\n*The tiny model has random weights: its VAE and its edits give noise. It checks "
                "the machinery; `--backbone digits` or `--backbone sd14` gives meaningful edits.*"
                if engine.backbone_cfg.get("name") == "tiny"
                else ""
            )
        )
        # per-session inversions, freed an hour after their last use (or when the tab closes)
        cache = gr.State(None, time_to_live=SESSION_TTL_S)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="image", type="filepath", sources=["upload", "clipboard"], elem_id="ef-image"
                )
                source = gr.Textbox(
                    label="source prompt (describes the image)", value=first["source"], elem_id="ef-source"
                )
                targets = gr.Textbox(
                    label="target prompts (one per line)", value=first["targets"], lines=3, elem_id="ef-targets"
                )
                strokes = gr.Image(
                    label=f"strokes (optional, for {' and '.join(STROKES_EDITORS)}): a transparent PNG whose "
                    "painted pixels are the region and its new colours",
                    type="filepath", image_mode="RGBA", sources=["upload"], elem_id="ef-strokes",
                )  # fmt: skip
                if examples:
                    gr.Examples(
                        examples=[[e["image"], e["source"], e["targets"]] for e in examples],
                        inputs=[image, source, targets],
                        label="examples (click one)",
                    )
            with gr.Column(scale=1):
                with gr.Row():
                    inverter = gr.Dropdown(inverters, value=inv0, label="inverter", elem_id="ef-inverter")
                    editor = gr.Dropdown(editors, value=ed0, label="editor", elem_id="ef-editor")
                with gr.Row():
                    inverter_doc = gr.Markdown(inv_doc)
                    editor_doc = gr.Markdown(ed_doc)
                with gr.Row():
                    inverter_options = gr.Textbox(
                        label="inverter options (YAML)", value=inv_text, lines=4, elem_id="ef-inverter-options"
                    )
                    editor_options = gr.Textbox(
                        label="editor options (YAML)", value=ed_text, lines=4, elem_id="ef-editor-options"
                    )
                steps = gr.Slider(2, MAX_STEPS, value=steps0, step=1, label="steps N", elem_id="ef-steps")
                skip = gr.Slider(
                    0,
                    MAX_STEPS - 1,
                    value=skip0,
                    step=1,
                    label="skip (T_skip: steps skipped at the noisy end)",
                    elem_id="ef-skip",
                )
                with gr.Row():
                    inverter_guidance = gr.Slider(
                        *INVERTER_GUIDANCE, value=inv_g if inv_g is not None else 1, step=0.5,
                        label="source guidance (inversion)",
                        interactive=inv_g is not None,
                        elem_id="ef-inv-guidance",
                    )
                    editor_guidance = gr.Slider(
                        *EDITOR_GUIDANCE, value=ed_g if ed_g is not None else 1, step=0.5,
                        label="target guidance (edit)",
                        interactive=ed_g is not None,
                        elem_id="ef-edit-guidance",
                    )
                with gr.Row():
                    seed = gr.Number(
                        value=int(defaults.get("seed", 0)), precision=0, label="seed", elem_id="ef-seed"
                    )
                    num_outputs = gr.Slider(
                        1, MAX_OUTPUTS, value=1, step=1, label="diverse outputs (seeds)", elem_id="ef-outputs"
                    )
                run = gr.Button("Edit", variant="primary", elem_id="ef-run")
        gallery = gr.Gallery(
            label="input · reconstruction · edits", columns=2 + max(1, len(first["targets"].splitlines())),
            format="png", object_fit="contain", height="auto", elem_id="ef-gallery",
        )
        timings = gr.Markdown(elem_id="ef-timings")
        files = gr.File(
            label="downloads: resolved config and outputs", file_count="multiple", elem_id="ef-files"
        )

        def on_preset(group: str) -> Callable[[str], tuple[Any, Any, Any]]:
            def update(preset: str) -> tuple[Any, Any, Any]:
                try:
                    text, g, doc = engine.preset_options(group, preset)
                except EditFriendlyError as exc:
                    raise gr.Error(str(exc), title="error") from None
                if g is None:
                    slider = gr.update(interactive=False)
                else:
                    slider = gr.update(value=g, interactive=True)
                return text, slider, doc

            return update

        inverter.change(on_preset("inverter"), inverter, [inverter_options, inverter_guidance, inverter_doc],
                        queue=False, api_visibility="private")
        editor.change(on_preset("editor"), editor, [editor_options, editor_guidance, editor_doc],
                      queue=False, api_visibility="private")

        def edit(
            image_payload: Any, source_text: str, targets_text: str, inv: str, inv_opts: str, inv_guid: float,
            ed: str, ed_opts: str, ed_guid: float, n_steps: float, n_skip: float, seed_value: float,
            n_outputs: float,
            strokes_payload: Any = None,  # optional in the API: clients written before it keep working
            session_cache: InversionCache | None = None,
            progress: Any = gr.Progress(track_tqdm=True),
        ) -> tuple[Any, str, list[str], InversionCache]:
            session_cache = session_cache if isinstance(session_cache, InversionCache) else InversionCache()
            path, name = _upload_path(image_payload)
            strokes_path, strokes_name = _upload_path(strokes_payload, "strokes")
            req = EditRequest(
                image=path,
                image_name=name,
                source_prompt=source_text or "",
                target_prompts=targets_text or "",
                inverter=inv, inverter_options=inv_opts, inverter_guidance=inv_guid,
                editor=ed, editor_options=ed_opts, editor_guidance=ed_guid,
                num_steps=n_steps, skip=n_skip, seed=seed_value, num_outputs=n_outputs,
                strokes=strokes_path, strokes_name=strokes_name,
            )
            try:
                from framework.progress import progress_bars

                with progress_bars(True):
                    result = engine.run(req, session_cache, lambda f, d: progress(f, desc=d))
            except EditFriendlyError as exc:
                text = user_message(user_message(exc, path, name), strokes_path, strokes_name)
                raise gr.Error(text, title="error") from None
            except Exception as exc:  # a bug: log it, tell the user (its type, no server data), keep serving
                log.exception("demo request failed")
                text = f"internal error ({type(exc).__name__}); the server log has the details"
                raise gr.Error(text, title="error") from None
            return (
                gr.Gallery(value=result.gallery, columns=result.columns),
                result.timings_markdown(),
                [str(result.config_path), str(result.zip_path)],
                session_cache,
            )

        run.click(
            edit,
            [image, source, targets, inverter, inverter_options, inverter_guidance, editor, editor_options,
             editor_guidance, steps, skip, seed, num_outputs, strokes, cache],
            [gallery, timings, files, cache],
            api_name="edit",
            preprocess=False,  # the raw upload reaches engine.run, which gives the CLI's error texts
            concurrency_limit=1,
            concurrency_id="model",
        )
    return app


def user_message(exc: Exception | str, path: str | None, name: str) -> str:
    """The error's text (the CLI's), naming the upload by its file name, not the server's copy."""
    text = str(exc)
    return text.replace(path, name) if path else text


def _upload_path(payload: Any, default: str = "image") -> tuple[str | None, str]:
    """(server path, original file name) of an image payload that was not preprocessed."""
    if payload is None:
        return None, default
    if isinstance(payload, (str, Path)):
        return str(payload), Path(payload).name
    if isinstance(payload, Mapping):
        path = payload.get("path")
        name = payload.get("orig_name") or (Path(path).name if path else default)
        return (str(path) if path else None), str(name)
    path = getattr(payload, "path", None)
    return (str(path) if path else None), str(getattr(payload, "orig_name", None) or default)


def launch(app: Any, engine: DemoEngine, *, host: str, port: int, share: bool, block: bool = True) -> Any:
    """Queue (one request at a time on the model) and serve."""
    app.queue(default_concurrency_limit=1, max_size=32)
    try:
        return app.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=not block,
            allowed_paths=[str(engine.out)],
            max_file_size=MAX_UPLOAD,
            state_session_capacity=MAX_SESSIONS,
            ssr_mode=False,
            mcp_server=False,
            show_error=True,
            quiet=False,
            css=CSS,
        )
    except OSError as exc:  # port taken, address not local, ...
        raise InputError(f"cannot serve on {host}:{port}: {exc}; choose another --port or --host") from None
