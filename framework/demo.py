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
serving. Inversions are kept per browser session (keyed by the fitted image's pixels, the backbone,
the source prompt, the inverter config, steps, skip and seed), so a second edit of the same image
with the same inversion settings only runs the editor: invert once, edit many times.

Requests go through Gradio's queue one at a time (one model, one worker); each session has its own
cache. Everything the demo writes (outputs, Gradio's uploads and served files) goes under the
output folder. Gradio is imported only by :func:`cmd_demo`, never by ``editfriendly edit``/``list``,
and it is set up to fetch nothing from the network: analytics off, no server-side rendering, no
share link unless ``--share yes``, and the front end served from the installed wheel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import ConfigError, EditFriendlyError, InputError

log = logging.getLogger(__name__)

DEFAULT_OUT = "outputs/demo"
#: the backbone served when --backbone is not given; the first of these that loads
DEFAULT_BACKBONES = ("digits", "tiny")
MAX_OUTPUTS = 4  # diverse outputs (seeds) per request
MAX_TARGETS = 8
CACHE_ENTRIES = 8  # inversions kept per session
SESSION_TTL_S = 3600  # a session's inversions are freed this long after its last request
MAX_SESSIONS = 100  # sessions whose state the server keeps at once
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data"

#: (fraction done, description) -> None
ProgressFn = Callable[[float, str], None]


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
        return head + "\n\n" + "\n".join(lines) + f"\n\nOutputs: `{self.folder}`"


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


def parse_options(text: str | None, what: str) -> dict[str, Any]:
    """The options box (YAML ``key: value`` lines) -> a mapping; errors name the box."""
    import yaml

    if not text or not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not parse the {what} options as YAML: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"the {what} options must be 'key: value' lines, got {value!r}")
    return {str(k): v for k, v in value.items()}


def as_int(value: Any, what: str) -> int:
    """A whole number from a slider or number box (which send floats)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if f != int(f):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(f)


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

    def __init__(self, backbone: Any, backbone_cfg: Mapping[str, Any], backbone_name: str, out: Path) -> None:
        self.backbone = backbone
        self.backbone_cfg = dict(backbone_cfg)
        self.backbone_name = backbone_name
        self.out = Path(out)

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

    @staticmethod
    def preset_options(group: str, preset: str) -> tuple[str, float | None, str]:
        """(options YAML for the box, guidance for the slider or None, a one-line description).

        ``guidance_scale`` moves to the slider when the preset sets a number; the plugin name is
        shown in the description, not in the box."""
        import yaml

        from framework.config import full_options, group_node
        from framework.registry import EDITORS, INVERTERS

        registry = INVERTERS if group == "inverter" else EDITORS
        node = full_options(registry, group_node(group, preset))
        name = node.pop("name")
        guidance = node.get("guidance_scale")
        numeric = isinstance(guidance, (int, float)) and not isinstance(guidance, bool)
        slider = float(guidance) if numeric else None
        if slider is not None:
            node.pop("guidance_scale")
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
    def compose(self, req: EditRequest) -> Any:
        """The request as a resolved run config (defaults < presets < the page's values)."""
        from framework.config import compose

        groups = {}
        for group, preset, text, guidance in (
            ("inverter", req.inverter, req.inverter_options, req.inverter_guidance),
            ("editor", req.editor, req.editor_options, req.editor_guidance),
        ):
            if not preset:
                raise ConfigError(f"choose an {group} preset")
            options = parse_options(text, group)
            if guidance is not None and "guidance_scale" not in options:
                _, preset_guidance, _ = self.preset_options(group, preset)
                if preset_guidance is not None:  # the slider controls it for this preset
                    options["guidance_scale"] = float(guidance)
            groups[group] = {"preset": preset, **options} if "name" not in options else options
        layer = {
            "backbone": self.backbone_cfg,
            **groups,
            "num_steps": as_int(req.num_steps, "steps"),
            "skip": as_int(req.skip, "skip"),
            "seed": as_int(req.seed, "seed"),
        }
        return compose(extra_layers=[layer], kind="edit")

    def run(self, req: EditRequest, cache: InversionCache, progress: ProgressFn | None = None) -> DemoResult:
        """Invert (or reuse) and edit; write the outputs under a new folder of ``self.out``."""
        from omegaconf import OmegaConf

        from framework.backbone import resolve_device
        from framework.config import save_config
        from framework.edit import edit_inversion, invert_image
        from framework.images import fit_image, load_image, pil_to_tensor, tensor_to_pil
        from framework.naming import slug
        from framework.registry import EDITORS, INVERTERS
        from framework.sampling import check_conditional
        from framework.schedule import check_steps

        say = progress or (lambda fraction, desc: None)
        cfg = self.compose(req)
        num_steps, skip, seed = int(cfg.num_steps), int(cfg.skip), int(cfg.seed)
        check_steps(num_steps, skip)
        num_outputs = as_int(req.num_outputs, "number of outputs")
        if not 1 <= num_outputs <= MAX_OUTPUTS:
            raise InputError(f"the number of outputs must be in 1..{MAX_OUTPUTS}, got {num_outputs}")
        inverter = INVERTERS.build(cfg.inverter)
        editor = EDITORS.build(cfg.editor)
        check_conditional(editor, self.backbone)
        source = (req.source_prompt or "").strip()
        targets = [t.strip() for t in (req.target_prompts or "").splitlines() if t.strip()]
        if not targets:
            if getattr(editor, "needs_prompts", True):
                raise InputError("give at least one target prompt (one per line)")
            targets = [""]
        if len(targets) > MAX_TARGETS:
            raise InputError(f"give at most {MAX_TARGETS} target prompts, got {len(targets)}")
        if not req.image:
            raise InputError("upload an image (PNG, JPEG, WebP, ...) or click one of the examples")
        pil = fit_image(load_image(req.image), None, self.backbone.resolution, self.backbone.size_multiple)
        image = pil_to_tensor(pil)  # (1, 3, H, W)
        image_hash = hashlib.sha256(image.numpy().tobytes()).hexdigest()
        inverter_cfg = OmegaConf.to_container(cfg.inverter, resolve=True)

        folder = self.out / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, exist_ok=False)
        input_path = folder / "input.png"
        pil.save(input_path)
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

            rec_path = folder / f"{stem}_seed{seed_s}_reconstruction.png"
            tensor_to_pil(rec.images)[0].save(rec_path)
            gallery.append((str(input_path), f"input {pil.size[0]}x{pil.size[1]} (as the model sees it)"))
            gallery.append((str(rec_path), f"reconstruction ({rec_caption}), seed {seed_s}"))
            for k, (target, img) in enumerate(zip(targets, tensor_to_pil(edit.images))):
                path = folder / f"{stem}_seed{seed_s}_{k:02d}_{slug(target)}.png"
                img.save(path)
                gallery.append((str(path), f"{target or '(empty prompt)'}, seed {seed_s}"))
                records.append(
                    {"output": path.name, "target_prompt": target, "seed": seed_s, "target_index": k}
                )
        say(1.0, "writing the outputs")

        cfg.image = req.image_name or Path(req.image).name
        cfg.source_prompt = source
        cfg.target_prompts = targets
        cfg.num_outputs = num_outputs
        cfg.seeds = [seed + s for s in range(num_outputs)]
        cfg.size = f"{pil.size[0]}x{pil.size[1]}"
        cfg.device = str(resolve_device(cfg.backbone.get("device", "auto")))
        config_path = save_config(cfg, folder / "config.yaml")
        (folder / "results.json").write_text(
            json.dumps(
                {
                    "outputs": records,
                    "timings": [t.__dict__ for t in timings],
                    "inversions_reused": reused,
                },
                indent=2,
            )
        )
        zip_path = folder / "outputs.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.iterdir()):
                if path != zip_path:
                    zf.write(path, arcname=path.name)
        return DemoResult(
            folder, input_path, gallery, 2 + len(targets), timings, config_path, zip_path, pil.size, reused
        )


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
                steps = gr.Slider(2, 200, value=steps0, step=1, label="steps N", elem_id="ef-steps")
                skip = gr.Slider(
                    0,
                    199,
                    value=skip0,
                    step=1,
                    label="skip (T_skip: steps skipped at the noisy end)",
                    elem_id="ef-skip",
                )
                with gr.Row():
                    inverter_guidance = gr.Slider(
                        1, 20, value=inv_g if inv_g is not None else 1, step=0.5,
                        label="source guidance (inversion)",
                        interactive=inv_g is not None,
                        elem_id="ef-inv-guidance",
                    )
                    editor_guidance = gr.Slider(
                        1, 30, value=ed_g if ed_g is not None else 1, step=0.5,
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
            session_cache: InversionCache | None,
            progress: Any = gr.Progress(track_tqdm=True),
        ) -> tuple[Any, str, list[str], InversionCache]:
            session_cache = session_cache if isinstance(session_cache, InversionCache) else InversionCache()
            path, name = _upload_path(image_payload)
            req = EditRequest(
                image=path,
                image_name=name,
                source_prompt=source_text or "",
                target_prompts=targets_text or "",
                inverter=inv, inverter_options=inv_opts, inverter_guidance=inv_guid,
                editor=ed, editor_options=ed_opts, editor_guidance=ed_guid,
                num_steps=n_steps, skip=n_skip, seed=seed_value, num_outputs=n_outputs,
            )
            try:
                from framework.progress import progress_bars

                with progress_bars(True):
                    result = engine.run(req, session_cache, lambda f, d: progress(f, desc=d))
            except EditFriendlyError as exc:
                raise gr.Error(user_message(exc, path, name), title="error") from None
            except Exception as exc:  # a bug: log it, tell the user, keep serving
                log.exception("demo request failed")
                text = f"internal error ({type(exc).__name__}: {exc}); see the server log"
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
             editor_guidance, steps, skip, seed, num_outputs, cache],
            [gallery, timings, files, cache],
            api_name="edit",
            preprocess=False,  # the raw upload reaches engine.run, which gives the CLI's error texts
            concurrency_limit=1,
            concurrency_id="model",
        )
    return app


def user_message(exc: Exception, path: str | None, name: str) -> str:
    """The error's text (the CLI's), naming the upload by its file name, not the server's copy."""
    text = str(exc)
    return text.replace(path, name) if path else text


def _upload_path(payload: Any) -> tuple[str | None, str]:
    """(server path, original file name) of an image payload that was not preprocessed."""
    if payload is None:
        return None, "image"
    if isinstance(payload, (str, Path)):
        return str(payload), Path(payload).name
    if isinstance(payload, Mapping):
        path = payload.get("path")
        name = payload.get("orig_name") or (Path(path).name if path else "image")
        return (str(path) if path else None), str(name)
    path = getattr(payload, "path", None)
    return (str(path) if path else None), str(getattr(payload, "orig_name", None) or "image")


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
            state_session_capacity=MAX_SESSIONS,
            ssr_mode=False,
            mcp_server=False,
            show_error=True,
            quiet=False,
            css=CSS,
        )
    except OSError as exc:  # port taken, address not local, ...
        raise InputError(f"cannot serve on {host}:{port}: {exc}; choose another --port or --host") from None
